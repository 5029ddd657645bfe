//! The `--metrics-addr` endpoint of the `rpc-server` binary under hostile and careless
//! clients, on the test broker; the clients only open TCP connections to the server's own
//! endpoint.
//!
//! - Slowloris: 64 connections each sending a request head one byte a second (and
//!   reconnecting when closed) while `/healthz` is probed as Kubernetes does (1 s timeout):
//!   every probe is answered 200, calls are answered, and the endpoint never runs more than
//!   [`MAX_CONNECTIONS`] connection threads.
//! - `HEAD` answers the `Content-Length` that `GET` sends, without the body.

use crate::common::http::{free_port, get, header, request};
use crate::common::log_dir;
use crate::common::server::ServerProc;
use rpc_client::testing::{self, QueueGuard};
use rpc_client::{ClientOptions, FibonacciRpcClient};
use rpc_server::http::MAX_CONNECTIONS;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to stop.
const EXIT_WITHIN: Duration = Duration::from_secs(30);
/// A Kubernetes probe's default timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Slow connections at once.
const SLOWLORIS: usize = 64;
/// Probes made during the attack.
const PROBES: usize = 30;

fn logs() -> PathBuf {
    log_dir("endpoint")
}

/// A server with `--metrics-addr` on a free port, once `/readyz` says it consumes `queue`.
fn start(name: &str, queue: &str) -> (ServerProc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("an address");
    let metrics_addr = addr.to_string();
    let mut server = ServerProc::on_broker(
        &logs(),
        name,
        queue,
        &testing::broker(),
        &["--metrics-addr", &metrics_addr],
    );
    let ready = testing::wait_until("/readyz 200", Duration::from_secs(20), || {
        Ok(get(addr, "/readyz", PROBE_TIMEOUT).map(|(status, _)| status) == Ok(200))
    });
    if let Err(err) = ready {
        server.sigterm();
        panic!("{err}\n{}", server.finish(EXIT_WITHIN).1);
    }
    (server, addr)
}

/// The server's threads named `name` (from /proc).
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|task| {
                    std::fs::read_to_string(task.path().join("comm"))
                        .is_ok_and(|comm| comm.trim_end() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

/// One slowloris connection after another until `stop`: each sends a request head one byte a
/// second and never finishes it; `connected` counts the connections made.
fn slowloris(addr: SocketAddr, stop: &AtomicBool, connected: &AtomicUsize) {
    let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            thread::sleep(Duration::from_millis(100));
            continue;
        };
        connected.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            if stop.load(Ordering::Relaxed) || stream.write_all(&[*byte]).is_err() {
                break;
            }
            // The attack's pace: one byte a second.
            thread::sleep(Duration::from_secs(1));
        }
    }
}

#[test]
fn probes_are_answered_under_a_slowloris_attack() {
    let queue = QueueGuard::new("endpoint-slowloris");
    let (mut server, addr) = start("slowloris", queue.name());
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..SLOWLORIS)
        .map(|_| {
            let (stop, connected) = (Arc::clone(&stop), Arc::clone(&connected));
            thread::spawn(move || slowloris(addr, &stop, &connected))
        })
        .collect();
    let attacking = testing::wait_until("every slow connection made", EXIT_WITHIN, || {
        Ok(connected.load(Ordering::Relaxed) >= SLOWLORIS)
    });
    let mut failed = Vec::new();
    let mut most_threads = 0;
    let mut slowest = Duration::ZERO;
    for _ in 0..PROBES {
        let started = Instant::now();
        match get(addr, "/healthz", PROBE_TIMEOUT) {
            Ok((200, _)) => slowest = slowest.max(started.elapsed()),
            other => failed.push(format!("{other:?} after {:?}", started.elapsed())),
        }
        most_threads = most_threads.max(threads_named(server.pid(), "metrics-conn"));
        // Probes come at intervals; the attack goes on between them.
        thread::sleep(Duration::from_millis(100));
    }
    let mut client = FibonacciRpcClient::connect(&ClientOptions {
        brokers: vec![testing::broker()],
        queue: queue.name().to_string(),
        timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    })
    .expect("client");
    let reply = client.call(30);
    stop.store(true, Ordering::Relaxed);
    for attacker in attackers {
        let _ = attacker.join();
    }
    let made = connected.load(Ordering::Relaxed);
    server.sigterm();
    let (status, shown) = server.finish(EXIT_WITHIN);
    attacking.unwrap_or_else(|e| panic!("{e}\n{shown}"));
    assert!(
        failed.is_empty(),
        "{} of {PROBES} probes failed under {SLOWLORIS} slow connections ({made} made): \
         {failed:?}\n{shown}",
        failed.len()
    );
    println!(
        "slowloris: {PROBES} probes answered 200, the slowest in {slowest:?}, under \
         {SLOWLORIS} slow connections ({made} made); at most {most_threads} connection threads"
    );
    assert!(
        most_threads <= MAX_CONNECTIONS,
        "{most_threads} threads\n{shown}"
    );
    assert_eq!(reply.as_deref().ok(), Some("832040"), "{reply:?}\n{shown}");
    assert!(status.success(), "{shown}");
}

#[test]
fn head_gives_the_length_that_get_sends() {
    let queue = QueueGuard::new("endpoint-head");
    let (mut server, addr) = start("head", queue.name());
    let timeout = Duration::from_secs(5);
    let mut checked = Vec::new();
    for path in ["/metrics", "/healthz", "/readyz", "/nowhere"] {
        // The server is idle: an exposition keeps its length from one scrape to the next.
        let got = request(addr, "GET", path, timeout);
        let head = request(addr, "HEAD", path, timeout);
        let again = request(addr, "GET", path, timeout);
        checked.push((path, got, head, again));
    }
    server.sigterm();
    let (status, shown) = server.finish(EXIT_WITHIN);
    for (path, got, head, again) in checked {
        let (got, head, again) = match (got, head, again) {
            (Ok(got), Ok(head), Ok(again)) => (got, head, again),
            other => panic!("{path}: {other:?}\n{shown}"),
        };
        assert_eq!(
            got.2.len(),
            again.2.len(),
            "{path}: the body changed length"
        );
        assert_eq!(
            header(&got.1, "content-length"),
            Some(&*got.2.len().to_string())
        );
        assert_eq!(head.0, got.0, "{path}: HEAD's status");
        assert_eq!(
            header(&head.1, "content-length"),
            Some(&*got.2.len().to_string()),
            "{path}: HEAD's Content-Length ({})",
            head.1
        );
        assert!(head.2.is_empty(), "{path}: HEAD sent a body: {:?}", head.2);
    }
    assert!(status.success(), "{shown}");
}
