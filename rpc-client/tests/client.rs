//! The client library and the `rpc-client` binary against a real broker.
//!
//! The peer here is a small responder written directly on amiquip (a real consumer on a real
//! queue) whose misbehaviour we control: stray replies, malformed replies, error replies and
//! silence. The rpc-server crate's tests cover the two together.

use amiquip::{AmqpProperties, ConsumerMessage, ConsumerOptions};
use crossbeam_channel::{select, Sender};
use rpc_client::error::exit_code;
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::wire::{self, ErrorCode};
use rpc_client::{ClientOptions, Error, FibonacciRpcClient};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MALFORMED: u64 = 666;
const SILENT: u64 = 777;
const REFUSED: u64 = 999;
/// Answered (wrongly, with 999) only after 1.2 s: late for a short timeout.
const SLOW: u64 = 555;
/// Answered with an error reply whose header values and body would attack a terminal.
const HOSTILE: u64 = 888;

/// A stand-in server: answers fib(n) for small n, and misbehaves on cue.
struct Responder {
    stop: Sender<()>,
    handle: JoinHandle<()>,
}

impl Responder {
    /// With `stray`, every real reply is preceded by one with an unknown correlation id.
    fn start(queue: &str, stray: bool) -> Responder {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let queue_name = queue.to_string();
        let handle = std::thread::spawn(move || {
            let admin = Admin::connect().expect("responder connects");
            admin.declare(&queue_name, false).expect("declare");
            let requests = rpc_client::consume::consume(
                admin.channel(),
                &queue_name,
                ConsumerOptions::default(),
            )
            .expect("consume");
            loop {
                let delivery = select! {
                    recv(requests) -> m => match m {
                        Ok(ConsumerMessage::Delivery(d)) => d,
                        other => panic!("responder consumer ended: {other:?}"),
                    },
                    recv(stopped) -> _ => return,
                };
                let n: u64 = std::str::from_utf8(&delivery.body)
                    .expect("utf8")
                    .parse()
                    .expect("number");
                let reply_to = delivery.properties.reply_to().clone().expect("reply_to");
                let id = delivery.properties.correlation_id().as_deref();
                let (body, error) = match n {
                    MALFORMED => (b"abc".to_vec(), None),
                    REFUSED => (b"refused on purpose".to_vec(), Some(ErrorCode::BadRequest)),
                    SILENT => (Vec::new(), None),
                    SLOW => (b"999".to_vec(), None),
                    HOSTILE => (Vec::new(), None), // see hostile_reply

                    n => (small_fib(n).to_string().into_bytes(), None),
                };
                if n == SLOW {
                    std::thread::sleep(Duration::from_millis(1200)); // a slow server, on purpose
                }
                if stray {
                    let props = wire::reply_properties(Some("not-a-call-of-yours"), "r", None);
                    admin.publish(&reply_to, b"999999", props).expect("stray");
                }
                if n == HOSTILE {
                    let (props, body) = hostile_reply(id);
                    admin.publish(&reply_to, &body, props).expect("reply");
                } else if n != SILENT {
                    let props = wire::reply_properties(id, "responder", error);
                    admin.publish(&reply_to, &body, props).expect("reply");
                }
                delivery.ack(admin.channel()).expect("ack");
            }
        });
        let mut admin = Admin::connect().expect("admin");
        admin
            .wait_for_consumers(queue, 1)
            .expect("responder consumes");
        Responder { stop, handle }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        self.handle.join().expect("responder thread");
    }
}

/// An error reply meant to clear the screen, set the window title, forge log lines, and flood
/// stderr with 5 MB on one line.
fn hostile_reply(id: Option<&str>) -> (AmqpProperties, Vec<u8>) {
    let mut headers = amiquip::FieldTable::new();
    headers.insert(
        wire::ERROR_HEADER.to_string(),
        amiquip::AmqpValue::LongString("\x1b]0;owned\x07".into()),
    );
    headers.insert(
        wire::SERVER_HEADER.to_string(),
        amiquip::AmqpValue::LongString("evil\x1b[2J\r\n[INFO] forged".into()),
    );
    let mut props = AmqpProperties::default().with_headers(headers);
    if let Some(id) = id {
        props = props.with_correlation_id(id.to_string());
    }
    let mut body = b"bad\r\n[ERROR] forged line\x1b[31m".to_vec();
    body.resize(5_000_000, b'x');
    (props, body)
}

fn small_fib(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    a
}

fn options(queue: &str, timeout: Duration) -> ClientOptions {
    ClientOptions {
        brokers: vec![testing::broker()],
        queue: queue.to_string(),
        timeout,
        ..ClientOptions::default()
    }
}

#[test]
fn stray_replies_are_discarded() {
    let queue = QueueGuard::new("stray");
    let responder = Responder::start(queue.name(), true);
    let mut client =
        FibonacciRpcClient::connect(&options(queue.name(), Duration::from_secs(20))).expect("c");
    // A reply with an unknown id already waits in the callback queue before the first call.
    let admin = Admin::connect().expect("admin");
    admin
        .publish(
            client.reply_queue(),
            b"123",
            AmqpProperties::default().with_correlation_id("early".into()),
        )
        .expect("publish stray");
    for n in [7, 30, 90] {
        assert_eq!(client.call(n).expect("call"), small_fib(n).to_string());
    }
    responder.stop();
}

#[test]
fn error_replies_malformed_replies_and_silence_are_errors() {
    let queue = QueueGuard::new("errors");
    let responder = Responder::start(queue.name(), false);
    let mut client =
        FibonacciRpcClient::connect(&options(queue.name(), Duration::from_millis(800))).expect("c");
    match client.call(REFUSED) {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, "bad-request");
            assert_eq!(message, "refused on purpose");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    assert!(matches!(client.call(MALFORMED), Err(Error::BadReply(_))));
    let started = Instant::now();
    match client.call(SILENT) {
        Err(err @ Error::Timeout { .. }) => assert_eq!(err.exit_code(), exit_code::TIMEOUT),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // The client is still usable after each failure.
    assert_eq!(client.call(10).expect("call"), "55");
    responder.stop();
}

#[test]
fn connect_failures_are_connection_errors() {
    let mut refused = testing::broker();
    refused.port = 1;
    let mut wrong_password = testing::broker();
    wrong_password.password = "definitely-wrong".into();
    for broker in [refused, wrong_password] {
        let options = ClientOptions {
            brokers: vec![broker],
            ..ClientOptions::default()
        };
        match FibonacciRpcClient::connect(&options) {
            Err(err @ Error::Connect { .. }) => {
                assert_eq!(err.exit_code(), exit_code::CONNECTION);
                assert!(!err.to_string().contains("definitely-wrong"), "{err}");
            }
            Err(other) => panic!("expected a connect error, got {other}"),
            Ok(_) => panic!("connected to {}", options.brokers[0]),
        }
    }
}

/// Runs the rpc-client binary against the test broker.
fn rpc_client(args: &[&str]) -> (Output, String) {
    let broker = testing::broker();
    let output = Command::new(env!("CARGO_BIN_EXE_rpc-client"))
        .args(["--host", &broker.host, "--port", &broker.port.to_string()])
        .args(args)
        .env_remove("AMQP_URI")
        .env_remove("RUST_LOG")
        .output()
        .expect("run rpc-client");
    let shown = format!(
        "rpc-client {args:?}: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, shown)
}

#[test]
fn binary_prints_results_and_exit_codes() {
    let queue = QueueGuard::new("bin-client");
    let responder = Responder::start(queue.name(), true);
    let q = queue.name();

    let (out, shown) = rpc_client(&["--queue", q, "30"]);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(out.stdout, b"832040\n", "{shown}");
    assert!(out.stderr.is_empty(), "{shown}");

    let (out, shown) = rpc_client(&["--queue", q, "10", "20", "30"]);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(out.stdout, b"55\n6765\n832040\n", "{shown}");

    let cases: [(&[&str], u8); 6] = [
        (&["--queue", q, "999"], exit_code::SERVER_ERROR),
        (&["--queue", q, "666"], exit_code::OTHER),
        (
            &["--queue", q, "--timeout", "0.5", "777"],
            exit_code::TIMEOUT,
        ),
        (&["--queue", q, "-1"], exit_code::USAGE),
        (&["--queue", q, "thirty"], exit_code::USAGE),
        (&["--queue", q, "--timeout", "0", "1"], exit_code::USAGE),
    ];
    for (args, code) in cases {
        let (out, shown) = rpc_client(args);
        assert_eq!(out.status.code(), Some(i32::from(code)), "{shown}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("rpc-client: ") || stderr.starts_with("error: "),
            "{shown}"
        );
    }
    // Results before a failure are printed; the failure stops the rest.
    let (out, shown) = rpc_client(&["--queue", q, "5", "999", "6"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::SERVER_ERROR)),
        "{shown}"
    );
    assert_eq!(out.stdout, b"5\n", "{shown}");
    responder.stop();
}

#[test]
fn binary_connection_failures_exit_3_without_the_password() {
    let broker = testing::broker();
    let refused = format!("amqp://guest:sesame@{}:1/", broker.host);
    let wrong_password = format!("amqp://guest:sesame@{}:{}/", broker.host, broker.port);
    for (uri, reason) in [(refused, "refused"), (wrong_password, "login refused")] {
        let output = Command::new(env!("CARGO_BIN_EXE_rpc-client"))
            .args(["--uri", &uri, "--connect-timeout", "2", "30"])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(i32::from(exit_code::CONNECTION)),
            "{stderr}"
        );
        assert!(
            stderr.contains(reason) && !stderr.contains("sesame"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn missing_request_queue_fails_at_once() {
    let queue = testing::unique_name("never-declared");
    let mut client =
        FibonacciRpcClient::connect(&options(&queue, Duration::from_secs(20))).expect("c");
    let started = Instant::now();
    match client.call(30) {
        Err(err @ Error::NoRoute { .. }) => {
            assert_eq!(err.exit_code(), exit_code::NO_ROUTE);
            let text = err.to_string();
            assert!(text.contains(&format!("no queue '{queue}'")), "{text}");
            assert!(text.contains("no server has declared it"), "{text}");
        }
        other => panic!("expected NoRoute, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn timeout_says_whether_the_queue_has_consumers() {
    let queue = QueueGuard::new("no-consumer");
    Admin::connect()
        .expect("admin")
        .declare(queue.name(), false)
        .expect("declare");
    let mut client =
        FibonacciRpcClient::connect(&options(queue.name(), Duration::from_millis(300))).expect("c");
    match client.call(1) {
        Err(
            err @ Error::Timeout {
                consumers: Some(0), ..
            },
        ) => {
            assert!(err.to_string().contains("has no consumer"), "{err}");
        }
        other => panic!("expected a timeout with no consumer, got {other:?}"),
    }
    let responder = Responder::start(queue.name(), false);
    match client.call(SILENT) {
        Err(
            err @ Error::Timeout {
                consumers: Some(1), ..
            },
        ) => {
            assert!(err.to_string().contains("1 consumer(s)"), "{err}");
        }
        other => panic!("expected a timeout with one consumer, got {other:?}"),
    }
    responder.stop();
}

#[test]
fn requests_carry_expiration_and_deadline() {
    let queue = QueueGuard::new("expiration");
    let admin = Admin::connect().expect("admin");
    admin.declare(queue.name(), false).expect("declare");
    let mut client =
        FibonacciRpcClient::connect(&options(queue.name(), Duration::from_millis(1500)))
            .expect("c");
    assert!(matches!(client.call(3), Err(Error::Timeout { .. })));
    // The broker expired the request in the queue after 1.5 s: nothing is left for a server.
    match admin.channel().basic_get(queue.name(), true).expect("get") {
        None => {}
        Some(get) => panic!(
            "request still queued after its expiration: {:?}",
            get.delivery.properties
        ),
    }
}

#[test]
fn late_reply_to_a_timed_out_call_does_not_disturb_the_next() {
    let queue = QueueGuard::new("late");
    let responder = Responder::start(queue.name(), false);
    let mut client =
        FibonacciRpcClient::connect(&options(queue.name(), Duration::from_millis(500))).expect("c");
    assert!(matches!(client.call(SLOW), Err(Error::Timeout { .. })));
    // The late "999" for SLOW arrives while this call waits; it must be discarded.
    client.set_timeout(Duration::from_secs(10));
    assert_eq!(client.call(10).expect("own answer"), "55");
    assert_eq!(client.call(11).expect("own answer"), "89");
    responder.stop();
}

#[test]
fn a_batch_reports_each_call_on_its_own() {
    let queue = QueueGuard::new("batch");
    let responder = Responder::start(queue.name(), true);
    let mut client =
        FibonacciRpcClient::connect(&options(queue.name(), Duration::from_secs(2))).expect("c");
    let numbers = [5, SILENT, 6, REFUSED, 7, MALFORMED, 8];
    let mut outcomes: Vec<Option<Result<String, String>>> = vec![None; numbers.len()];
    let started = Instant::now();
    client
        .call_many(numbers, 8, |index, _, result| {
            outcomes[index] = Some(result.map(|r| r.value).map_err(|e| format!("{e:?}")));
            std::ops::ControlFlow::Continue(())
        })
        .expect("batch");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let outcomes: Vec<_> = outcomes.into_iter().map(|o| o.expect("reported")).collect();
    assert_eq!(outcomes[0], Ok("5".to_string()));
    assert!(
        matches!(&outcomes[1], Err(e) if e.starts_with("Timeout")),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(outcomes[2], Ok("8".to_string()));
    assert!(
        matches!(&outcomes[3], Err(e) if e.starts_with("Server")),
        "{:?}",
        outcomes[3]
    );
    assert_eq!(outcomes[4], Ok("13".to_string()));
    assert!(
        matches!(&outcomes[5], Err(e) if e.starts_with("BadReply")),
        "{:?}",
        outcomes[5]
    );
    assert_eq!(outcomes[6], Ok("21".to_string()));
    responder.stop();
}

#[test]
fn hostile_replies_reach_the_terminal_printable_and_bounded() {
    let queue = QueueGuard::new("hostile");
    let responder = Responder::start(queue.name(), false);
    let (output, _) = rpc_client(&["-v", "--queue", queue.name(), "--timeout", "10", "888"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(i32::from(exit_code::SERVER_ERROR)),
        "{stderr}"
    );
    assert!(
        !output.stderr.contains(&0x1b),
        "an escape reached stderr: {stderr:?}"
    );
    assert!(
        !output.stderr.contains(&b'\r'),
        "a CR reached stderr: {stderr:?}"
    );
    assert!(
        !stderr.contains("\n[ERROR] forged"),
        "a forged line: {stderr:?}"
    );
    assert!(stderr.len() < 4_000, "{} bytes of stderr", stderr.len());
    responder.stop();
}

#[test]
fn an_empty_queue_name_is_a_usage_error() {
    let (out, shown) = rpc_client(&["--queue", "", "30"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::USAGE)),
        "{shown}"
    );
    let options = ClientOptions {
        queue: String::new(),
        ..options("unused", Duration::from_secs(1))
    };
    match FibonacciRpcClient::connect(&options) {
        Err(err @ Error::Config(_)) => assert_eq!(err.exit_code(), exit_code::USAGE),
        other => panic!("expected a configuration error, got {:?}", other.err()),
    }
}
