//! The HTTP endpoint of `--metrics-addr` ([`Endpoint`]): `GET /metrics` (Prometheus' text
//! format), `GET /healthz` (liveness) and `GET /readyz` (readiness), from [`Metrics`].
//!
//! It runs on threads of its own and can never stall serving: an accept thread hands each
//! connection to a thread of its own, at most [`MAX_CONNECTIONS`] at once (one more is
//! answered 503 and closed); each connection has [`IO_TIMEOUT`] per read and write and
//! [`REQUEST_DEADLINE`] for its whole request head (at most [`MAX_HEAD`] bytes), answers one
//! request and is closed. A scrape reads atomics and the histogram's short lock (see
//! [`crate::metrics`]). Requests are parsed by `httparse`; see the README on why not a
//! server crate.

use crate::error::Error;
use crate::metrics::Metrics;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections served at once; more are answered 503 and closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// The longest one read or write on a connection may wait.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a client may take to send its request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3);
/// The largest request head read; a longer one is answered 431.
pub const MAX_HEAD: usize = 8 * 1024;

/// A listening endpoint; it serves until the process exits.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
}

impl Endpoint {
    /// Listens on `addr` (`HOST:PORT`) and serves `metrics` from threads of its own. An
    /// address that cannot be resolved or bound is a configuration error (exit 2).
    pub fn start(addr: &str, metrics: Arc<Metrics>) -> Result<Endpoint, Error> {
        let resolved: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|err| {
                Error::Config(format!(
                    "--metrics-addr {addr}: not a HOST:PORT address: {err}"
                ))
            })?
            .collect();
        let listener = TcpListener::bind(&resolved[..]).map_err(|err| {
            Error::Config(format!("cannot listen on --metrics-addr {addr}: {err}"))
        })?;
        let local = listener
            .local_addr()
            .map_err(|err| Error::Config(format!("--metrics-addr {addr}: {err}")))?;
        std::thread::Builder::new()
            .name("metrics-accept".into())
            .spawn(move || accept(listener, metrics))
            .map_err(|err| Error::Config(format!("cannot start the metrics thread: {err}")))?;
        Ok(Endpoint { addr: local })
    }

    /// The address it listens on (with the port the system chose for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Accepts connections for ever, each served on a thread of its own within the limits.
fn accept(listener: TcpListener, metrics: Arc<Metrics>) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, a connection reset before accept: try again soon,
                // without spinning.
                log::debug!("metrics endpoint: accept failed: {err}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let _ = respond(&stream, 503, "text/plain", b"too many connections\n");
            continue;
        }
        let metrics = Arc::clone(&metrics);
        let guard = Open(Arc::clone(&open));
        let spawned = std::thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                let _guard = guard;
                serve(stream, &metrics);
            });
        if let Err(err) = spawned {
            log::debug!("metrics endpoint: cannot start a thread: {err}");
        }
    }
}

/// Counts a connection being served until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads one request head (within the limits) and answers it.
fn serve(stream: TcpStream, metrics: &Metrics) {
    if stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return;
    }
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let path = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or("");
                let path = request.path.unwrap_or("").to_string();
                if method != "GET" && method != "HEAD" {
                    let _ = respond(&stream, 405, "text/plain", b"only GET\n");
                    return;
                }
                // Prometheus asks for OpenMetrics; curl and promtool get the older format.
                let openmetrics = request.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("accept")
                        && String::from_utf8_lossy(h.value).contains("application/openmetrics-text")
                });
                break (path, method == "HEAD", openmetrics);
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => {
                let _ = respond(&stream, 400, "text/plain", b"bad request\n");
                return;
            }
        }
        if head.len() >= MAX_HEAD {
            let _ = respond(&stream, 431, "text/plain", b"request head too large\n");
            return;
        }
        if Instant::now() >= deadline {
            return;
        }
        match (&stream).read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n.min(MAX_HEAD - head.len())]),
        }
    };
    let (path, head_only, openmetrics) = path;
    // The query string (e.g. a probe's cache buster) does not matter.
    let route = path.split('?').next().unwrap_or("");
    let (status, content_type, body): (u16, &str, Vec<u8>) = match route {
        "/metrics" if openmetrics => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(true).into_bytes(),
        ),
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(false).into_bytes(),
        ),
        "/healthz" if metrics.alive() => (200, "text/plain", b"ok\n".to_vec()),
        "/healthz" => (503, "text/plain", b"stopped\n".to_vec()),
        "/readyz" if metrics.ready() => (200, "text/plain", b"ready\n".to_vec()),
        "/readyz" => (
            503,
            "text/plain",
            format!("not ready: {:?}\n", metrics.phase())
                .to_lowercase()
                .into_bytes(),
        ),
        _ => (
            404,
            "text/plain",
            b"not found: try /metrics, /healthz, /readyz\n".to_vec(),
        ),
    };
    let body = if head_only { &[][..] } else { &body[..] };
    let _ = respond(&stream, status, content_type, body);
}

/// Writes a whole response and closes the connection.
fn respond(
    mut stream: &TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}
