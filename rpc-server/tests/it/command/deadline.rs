//! The caller's deadline ends the work (issue 30): a command whose caller gave up is killed at
//! the caller's deadline and its one-worker server is free at once; the command sees its time
//! left; requests without a deadline (a tutorial caller's) and skewed clocks are never cut
//! short.

use super::{logs, text, Served};
use crate::common::http::{free_port, get, sample};
use crate::common::marker;
use amiquip::ConsumerMessage;
use rpc_client::testing::{self, Admin};
use rpc_client::{wire, Error, RpcRequest};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A server whose command runs the request body as a shell script.
const SCRIPT: [&str; 4] = ["--", "sh", "-c", "eval \"$(cat)\""];

/// The `sleep` processes of this host with `mark` in their arguments.
fn sleeping(mark: &str) -> Vec<String> {
    crate::common::marked(mark, |_, args| {
        args.first()
            .is_some_and(|program| program.ends_with("sleep"))
    })
}

#[test]
fn a_command_abandoned_by_its_caller_is_ended_at_its_deadline_and_the_worker_freed() {
    let mark = marker();
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let addr: SocketAddr = metrics_addr.parse().expect("an address");
    let args = [
        &["--exec-timeout", "60", "--metrics-addr", &metrics_addr][..],
        &SCRIPT,
    ]
    .concat();
    let served = Served::start(&logs(), "cmd-abandoned", &args);
    let shown = || served.server.shown();
    // The issue's case: a command of an hour, its caller gives up at 3 s.
    let sent = Instant::now();
    let result = served
        .client(Duration::from_secs(3))
        .call(&RpcRequest::new(format!("sleep 3600.{mark}")));
    assert!(
        matches!(result, Err(Error::Timeout { .. })),
        "{result:?}\n{}",
        shown()
    );
    // Gone within 1 s of the deadline (3 s after it was sent).
    testing::poll_until(
        "the abandoned command to be ended",
        Duration::from_secs(4).saturating_sub(sent.elapsed()),
        Duration::from_millis(10),
        || Ok(sleeping(&mark).is_empty()),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", sleeping(&mark), shown()));
    // The one worker answers the next call at once.
    let started = Instant::now();
    let reply = served
        .call(RpcRequest::new("echo next"))
        .unwrap_or_else(|e| panic!("{e}\n{}", shown()));
    assert_eq!(text(&reply), "next\n");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let (status, metrics) = get(addr, "/metrics", Duration::from_secs(5)).expect("metrics");
    assert_eq!(status, 200);
    let abandoned = r#"rpc_server_requests_total{outcome="abandoned",code=""}"#;
    assert_eq!(sample(&metrics, abandoned), Some(1.0), "{metrics}");
    let shown = served.stop();
    assert!(shown.contains("abandoned a request after 3."), "{shown}");
    assert!(
        shown.contains("1 answered, 0 refused, 0 unanswered, 0 dropped, 1 abandoned"),
        "{shown}"
    );
}

#[test]
fn the_command_sees_its_time_left_within_the_callers_timeout() {
    let served = Served::start(
        &logs(),
        "cmd-timeout-ms",
        &[
            "--exec-timeout",
            "60",
            "--",
            "sh",
            "-c",
            "echo \"$RPC_TIMEOUT_MS\"",
        ],
    );
    let millis = |timeout: Duration| -> u64 {
        let reply = served
            .client(timeout)
            .call(&RpcRequest::new(""))
            .unwrap_or_else(|e| panic!("{e}\n{}", served.server.shown()));
        text(&reply)
            .trim()
            .parse()
            .expect("RPC_TIMEOUT_MS is a number")
    };
    // The caller's 5 s: at most that, and not much less.
    let left = millis(Duration::from_secs(5));
    assert!((3_000..=5_000).contains(&left), "{left}");
    // A caller that waits longer than --exec-timeout: the exec timeout.
    let left = millis(Duration::from_secs(120));
    assert!((58_000..=60_000).contains(&left), "{left}");
    served.stop();
}

/// Publishes `script` to the server's queue with `properties` (a raw caller, as pika's or a
/// skewed one), and waits up to `within` for the reply's body.
fn raw_call(
    served: &Served,
    script: &str,
    properties: impl FnOnce(&str) -> amiquip::AmqpProperties,
    within: Duration,
) -> Result<Vec<u8>, String> {
    let admin = Admin::connect().expect("admin");
    let (reply_queue, consumer) =
        rpc_client::amqp::callback_queue(admin.channel()).expect("reply queue");
    admin
        .publish(
            served.queue.name(),
            script.as_bytes(),
            properties(&reply_queue),
        )
        .expect("publish");
    match consumer.recv_timeout(within) {
        Ok(ConsumerMessage::Delivery(delivery)) => Ok(delivery.body),
        other => Err(format!("no reply: {other:?}")),
    }
}

#[test]
fn a_request_without_expiration_still_gets_a_slow_answer() {
    // A tutorial (pika) caller sends no expiration: no deadline, --exec-timeout alone bounds it.
    let served = Served::start(
        &logs(),
        "cmd-no-expiration",
        &[&["--exec-timeout", "20"][..], &SCRIPT].concat(),
    );
    let body = raw_call(
        &served,
        "sleep 4; echo slow",
        |reply_to| wire::request_properties(reply_to, "pika-1").into_amqp(),
        Duration::from_secs(15),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", served.server.shown()));
    assert_eq!(body, b"slow\n");
    served.stop();
}

#[test]
fn a_server_clock_ahead_does_not_cut_a_call_short() {
    // The caller's clock 5 s behind the server's (its timestamp 5 s in the server's past), a
    // 10 s call whose command takes 6.5 s: more than the 5-6 s a timestamp rule taken alone
    // would leave it.
    let served = Served::start(
        &logs(),
        "cmd-skew-5s",
        &[&["--exec-timeout", "20"][..], &SCRIPT].concat(),
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let body = raw_call(
        &served,
        "sleep 6.5; echo in time",
        |reply_to| {
            wire::request_properties(reply_to, "skewed")
                .with_timestamp(now - 5)
                .with_expiration("10000")
                .into_amqp()
        },
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", served.server.shown()));
    assert_eq!(body, b"in time\n");
    let shown = served.stop();
    assert!(!shown.contains("abandoned a request"), "{shown}");
}
