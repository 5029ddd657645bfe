//! The `rpc-server` binary: starts, serves, logs each request, stops cleanly on SIGTERM.
//!
//! Servers are started by the tests' common [`ServerProc`], on the test broker
//! (`testing::broker()`); their output is in `target/tmp/binary/` and shown on failure.

use crate::common::log_dir;
use crate::common::raw::{nested_headers, request_properties, RawPublisher};
use crate::common::server::ServerProc;
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::{ClientOptions, FibonacciRpcClient};
use std::path::PathBuf;
use std::time::Duration;

/// How long a server may take to exit by itself.
const EXIT_WITHIN: Duration = Duration::from_secs(30);

fn logs() -> PathBuf {
    log_dir("binary")
}

#[test]
fn serves_and_stops_cleanly_on_sigterm() {
    let broker = testing::broker();
    let queue = QueueGuard::new("bin-server");
    let mut server = ServerProc::on_broker(&logs(), "bin-1", queue.name(), &broker, &[]);
    let mut admin = Admin::connect().expect("admin");
    if let Err(err) = admin.wait_for_consumers(queue.name(), 1) {
        server.sigterm();
        panic!("{err}\n{}", server.finish(EXIT_WITHIN).1);
    }
    let mut client = FibonacciRpcClient::connect(&ClientOptions {
        brokers: vec![broker.clone()],
        queue: queue.name().to_string(),
        timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    })
    .expect("client");
    let reply = client.call_reply(30);
    server.sigterm();
    let (status, shown) = server.finish(EXIT_WITHIN);
    let reply = reply.unwrap_or_else(|e| panic!("call failed: {e}\n{shown}"));
    assert_eq!(reply.value, "832040", "{shown}");
    assert_eq!(reply.server.as_deref(), Some("bin-1"), "{shown}");
    assert!(status.success(), "{shown}");
    assert!(
        server.stdout_text().is_empty(),
        "logs belong on stderr\n{shown}"
    );
    let stderr = server.log_text();
    assert!(stderr.contains(" [.] fib(30)"), "{shown}");
    let password = format!(":{}@", broker.password);
    assert!(!stderr.contains(&password), "password printed\n{shown}");
    admin
        .wait_for_consumers(queue.name(), 0)
        .expect("consumer gone");
}

#[test]
fn bad_arguments_fail_with_one_line_and_exit_2() {
    let long_queue = "q".repeat(256);
    // 240 bytes: RabbitMQ would cut its "no queue" message inside a '☃' (see
    // wire::MAX_NON_ASCII_QUEUE_NAME); refused up front instead of reconnecting for ever.
    let snowmen = "☃".repeat(80);
    // RabbitMQ would declare "ab" and then find no "a\nb" to consume.
    let line_break = "a\nb";
    for (i, args) in [
        &["--prefetch", "0"][..],
        &["--max-n", "-5"],
        &["--uri", "amqp://u:secret@h:notaport"],
        &["--queue-type", "stream"],
        &["--queue", &long_queue],
        &["--queue", &snowmen],
        &["--queue", line_break],
    ]
    .into_iter()
    .enumerate()
    {
        let mut server = ServerProc::spawn_args(&logs(), &format!("bad-args-{i}"), args, &[]);
        let (status, shown) = server.finish(EXIT_WITHIN);
        assert_eq!(status.code(), Some(2), "{args:?}\n{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}

#[test]
fn unreachable_broker_fails_fast_with_a_masked_uri() {
    let args = [
        "--uri",
        "amqp://guest:hunter2@127.0.0.1:1/",
        "--connect-timeout",
        "2",
        "--max-retries",
        "0",
    ];
    let mut server = ServerProc::spawn_args(&logs(), "unreachable", &args, &[]);
    let (status, shown) = server.finish(EXIT_WITHIN);
    assert_eq!(status.code(), Some(1), "{shown}");
    let stderr = server.log_text();
    assert!(
        stderr.starts_with("rpc-server: cannot connect to amqp://guest:****@127.0.0.1:1/"),
        "{shown}"
    );
    assert_eq!(stderr.lines().count(), 1, "{shown}");
    assert!(!stderr.contains("hunter2"), "{shown}");
}

#[test]
fn a_metrics_addr_that_cannot_be_listened_on_exits_2_with_one_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let taken = taken.local_addr().expect("its address").to_string();
    for (name, addr, says) in [
        (
            "metrics-taken",
            taken.as_str(),
            "cannot listen on --metrics-addr",
        ),
        ("metrics-bad", "no-port-here", "not a HOST:PORT address"),
    ] {
        let args = ["--metrics-addr", addr];
        let mut server = ServerProc::spawn_args(&logs(), name, &args, &[("AMQP_PORT", "1")]);
        let (status, shown) = server.finish(EXIT_WITHIN);
        assert_eq!(status.code(), Some(2), "{shown}");
        let stderr = server.log_text();
        assert_eq!(stderr.lines().count(), 1, "{shown}");
        assert!(stderr.starts_with("rpc-server: "), "{shown}");
        assert!(stderr.contains(says), "{shown}");
    }
}

#[test]
fn bad_arguments_exit_2_before_connecting() {
    for (name, args) in [
        ("empty-queue", &["--queue", ""][..]),
        ("long-queue", &["--queue", &"q".repeat(256)][..]),
        (
            "quorum-transient",
            &["--queue-type", "quorum", "--transient", "--queue", "q"][..],
        ),
    ] {
        let mut server = ServerProc::spawn_args(&logs(), name, args, &[("AMQP_PORT", "1")]);
        let (status, shown) = server.finish(EXIT_WITHIN);
        assert_eq!(status.code(), Some(2), "{shown}");
        let first = server
            .log_text()
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            first.starts_with("error: ") || first.starts_with("rpc-server: "),
            "{shown}"
        );
        assert!(!shown.contains("panicked"), "{shown}");
    }
}

#[test]
fn a_queue_name_with_control_characters_is_logged_printable() {
    // ESC [2J would clear the terminal, a tab or a backspace garble the line. (A name with a
    // line break is refused: see bad_arguments_fail_with_one_line_and_exit_2.)
    let queue = QueueGuard::new("bin-esc\t[ERROR] forged\u{1b}[2J\u{8}");
    let mut server =
        ServerProc::on_broker(&logs(), "bin-esc", queue.name(), &testing::broker(), &[]);
    let mut admin = Admin::connect().expect("admin");
    if let Err(err) = admin.wait_for_consumers(queue.name(), 1) {
        server.sigterm();
        panic!("{err}\n{}", server.finish(EXIT_WITHIN).1);
    }
    server.sigterm();
    let (status, shown) = server.finish(EXIT_WITHIN);
    assert!(status.success(), "{shown}");
    let stderr = server.log_text();
    assert!(
        stderr.contains("queue 'bin-esc?[ERROR] forged?[2J?-"),
        "the name is shown printable\n{shown}"
    );
    for control in ['\u{1b}', '\t', '\u{8}'] {
        assert!(
            !stderr.contains(control),
            "{control:?} reached the log\n{shown}"
        );
    }
}

#[test]
fn a_request_with_a_binary_correlation_id_is_dropped_with_a_line_that_names_the_erlang_client() {
    let broker = testing::broker();
    let queue = QueueGuard::new("bin-erlang");
    let mut server = ServerProc::on_broker(&logs(), "bin-erlang", queue.name(), &broker, &[]);
    let mut admin = Admin::connect().expect("admin");
    if let Err(err) = admin.wait_for_consumers(queue.name(), 1) {
        panic!("{err}\n{}", server.shown());
    }
    // What the Erlang tutorial client sends: term_to_binary of a reference, not UTF-8.
    let id = b"\x83r\x00\x03d\x00\rnonode@nohost\x00\x00\x00\x00\xbe\x01\x00\x00";
    let (flags, properties) = request_properties(&nested_headers(b'A', 1), id, "amq.gen-x");
    let mut raw = RawPublisher::connect(&broker).expect("raw publisher");
    raw.publish(queue.name(), flags, &properties, b"10")
        .expect("the broker takes it");
    let logged = testing::wait_until("the drop's log line", EXIT_WITHIN, || {
        Ok(server.log_count("dropping a request without reply_to") > 0)
    });
    server.sigterm();
    let (status, shown) = server.finish(EXIT_WITHIN);
    logged.unwrap_or_else(|e| panic!("{e}\n{shown}"));
    assert!(status.success(), "{shown}");
    let line = server
        .log_lines("dropping a request without reply_to")
        .join("\n");
    assert!(line.contains("Erlang tutorial client"), "{line}");
}
