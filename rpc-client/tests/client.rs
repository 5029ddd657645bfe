//! The client library and the `rpc-client` binary against a real broker.
//!
//! The peer here is a small responder written directly on amiquip (a real consumer on a real
//! queue) whose misbehaviour we control: stray replies, malformed replies, error replies and
//! silence. The rpc-server crate's tests cover the two together.

use amiquip::{AmqpProperties, AmqpValue, ConsumerMessage, ConsumerOptions, Delivery};
use crossbeam_channel::{select, Sender};
use rpc_client::exit_code;
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::wire::{self, ErrorCode};
use rpc_client::{ClientOptions, Error, FibonacciRpcClient, RpcClient, RpcRequest};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Output, Stdio};
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
        Responder::spawn(queue, move |admin, delivery| {
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
        })
    }

    /// A stand-in for any server of raw bodies: replies with the body's ASCII letters
    /// uppercased (other bytes as they are), the request's content type and headers, plus
    /// `x-rpc-server: raw-responder` and `x-length` (the body's length, an integer header).
    /// A body starting with `ERR ` gets an error reply `bad-request` "refused: <the rest>";
    /// the body `SILENT` gets no reply.
    fn start_raw(queue: &str) -> Responder {
        Responder::spawn(queue, |admin, delivery| {
            let reply_to = delivery.properties.reply_to().clone().expect("reply_to");
            let id = delivery.properties.correlation_id().as_deref();
            if delivery.body == b"SILENT" {
                return;
            }
            if let Some(rest) = delivery.body.strip_prefix(b"ERR ") {
                let props =
                    wire::reply_properties(id, "raw-responder", Some(ErrorCode::BadRequest));
                let body = [&b"refused: "[..], rest].concat();
                admin.publish(&reply_to, &body, props).expect("reply");
                return;
            }
            let mut headers = delivery.properties.headers().clone().unwrap_or_default();
            headers.insert(
                wire::SERVER_HEADER.to_string(),
                AmqpValue::LongString("raw-responder".into()),
            );
            let length = i64::try_from(delivery.body.len()).expect("length");
            headers.insert("x-length".into(), AmqpValue::LongLongInt(length));
            let mut props = AmqpProperties::default()
                .with_correlation_id(id.expect("correlation id").to_string())
                .with_headers(headers);
            if let Some(content_type) = delivery.properties.content_type() {
                props = props.with_content_type(content_type.clone());
            }
            admin
                .publish(&reply_to, &delivery.body.to_ascii_uppercase(), props)
                .expect("reply");
        })
    }

    /// Consumes `queue` (declaring it) on a thread of its own, passing each request to
    /// `answer` and then acking it; returns once the consumer is in place.
    fn spawn(queue: &str, answer: impl Fn(&Admin, &Delivery) + Send + 'static) -> Responder {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let queue_name = queue.to_string();
        let handle = std::thread::spawn(move || {
            let mut admin = Admin::connect().expect("responder connects");
            // A queue the test declared with arguments of its own is used as it is.
            if admin
                .queue_state(&queue_name)
                .expect("queue state")
                .is_none()
            {
                admin.declare(&queue_name, false).expect("declare");
            }
            let requests =
                rpc_client::amqp::consume(admin.channel(), &queue_name, ConsumerOptions::default())
                    .expect("consume");
            loop {
                let delivery = select! {
                    recv(requests) -> m => match m {
                        Ok(ConsumerMessage::Delivery(d)) => d,
                        other => panic!("responder consumer ended: {other:?}"),
                    },
                    recv(stopped) -> _ => return,
                };
                answer(&admin, &delivery);
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

/// Runs the rpc-client binary against the test broker, with an empty stdin.
fn rpc_client(args: &[&str]) -> (Output, String) {
    rpc_client_with_stdin(args, b"")
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
    // The Fibonacci client's message is the same as ever.
    match client.call(2) {
        Err(err @ Error::Timeout { .. }) => {
            assert!(
                err.to_string().starts_with("no reply for fib(2) within 0."),
                "{err}"
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
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
fn a_request_the_broker_refuses_is_sent_again() {
    // A full queue that rejects new messages: the broker nacks every request published to it
    // (publisher confirms), and an unconfirmed request would be lost.
    let queue = QueueGuard::new("nack");
    let q = queue.name();
    let mut arguments = amiquip::FieldTable::new();
    arguments.insert("x-max-length".into(), AmqpValue::LongInt(1));
    arguments.insert(
        "x-overflow".into(),
        AmqpValue::LongString("reject-publish".into()),
    );
    let admin = Admin::connect().expect("admin");
    admin
        .channel()
        .queue_declare(
            q,
            amiquip::QueueDeclareOptions {
                // Durable: RabbitMQ 4.3 denies transient non-exclusive queues.
                durable: true,
                arguments,
                ..amiquip::QueueDeclareOptions::default()
            },
        )
        .expect("declare");
    // The message that fills it: a request whose reply goes nowhere.
    let filler = AmqpProperties::default()
        .with_reply_to("nowhere".into())
        .with_correlation_id("filler".into());
    admin.publish(q, b"1", filler).expect("fill");
    let mut client = FibonacciRpcClient::connect(&options(q, Duration::from_secs(10))).expect("c");
    let started = Instant::now();
    let call = std::thread::spawn(move || (client.call(10), started.elapsed()));
    // Refused for a while (several nacks, 0.1 s doubling), then the queue drains.
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !call.is_finished(),
        "the call ended while the queue was full"
    );
    let responder = Responder::start(q, false);
    let (result, took) = call.join().expect("caller");
    assert_eq!(result.expect("answered once the queue had room"), "55");
    assert!(took < Duration::from_secs(5), "{took:?}");
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

#[test]
fn queue_names_are_printed_printable_and_checked_up_front() {
    // No such queue (exit 6), then one without a consumer (exit 4): both messages name it.
    let mut queue = QueueGuard::new("esc\t[ERROR] forged\u{1b}[2J");
    let q = queue.name().to_string();
    let (out, shown) = rpc_client(&["--queue", &q, "--timeout", "0.5", "30"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::NO_ROUTE)),
        "{shown}"
    );
    let admin = Admin::connect().expect("admin");
    admin.declare(&q, false).expect("declare");
    let (out2, shown2) = rpc_client(&["--queue", &q, "--timeout", "0.5", "30"]);
    assert_eq!(
        out2.status.code(),
        Some(i32::from(exit_code::TIMEOUT)),
        "{shown2}"
    );
    for stderr in [&out.stderr, &out2.stderr] {
        let stderr = String::from_utf8_lossy(stderr);
        assert!(stderr.contains("'esc?[ERROR] forged?[2J-"), "{stderr:?}");
        assert!(!stderr.contains(['\u{1b}', '\t']), "{stderr:?}");
    }
    queue.delete().expect("delete");
    // 80 '☃' (240 bytes): RabbitMQ would cut its messages quoting the name inside a character.
    let (out, shown) = rpc_client(&["--queue", &"☃".repeat(80), "30"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::USAGE)),
        "{shown}"
    );
    assert!(shown.contains("beyond ASCII"), "{shown}");
    let (out, shown) = rpc_client(&["--queue", "a\nb", "30"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::USAGE)),
        "{shown}"
    );
    assert!(shown.contains("line break"), "{shown}");
    // A refused name is quoted in the error: escape sequences and a CR never reach the
    // terminal (an OSC sequence would set its title).
    let (out, _) = rpc_client(&["--queue", "a\x1b]0;owned\x07\rb\x1b[31m\nc", "30"]);
    assert_eq!(out.status.code(), Some(i32::from(exit_code::USAGE)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line break"), "{stderr:?}");
    assert!(!stderr.contains(['\u{1b}', '\r', '\u{7}']), "{stderr:?}");
}

#[test]
fn raw_calls_round_trip_bytes_content_type_and_headers() {
    let queue = QueueGuard::new("raw");
    let responder = Responder::start_raw(queue.name());
    let mut client =
        RpcClient::connect(&options(queue.name(), Duration::from_secs(20))).expect("c");

    let reply = client.call(&RpcRequest::new("hello")).expect("call");
    assert_eq!(reply.body, b"HELLO");
    assert_eq!(reply.server.as_deref(), Some("raw-responder"));
    assert_eq!(reply.content_type(), None);
    assert!(reply.elapsed > Duration::ZERO);

    // Any bytes: not UTF-8, a NUL, and nothing at all.
    let reply = client
        .call(&RpcRequest::new(b"\xff\x00abc\xc3".to_vec()))
        .expect("call");
    assert_eq!(reply.body, b"\xff\x00ABC\xc3");
    assert_eq!(
        client
            .call(&RpcRequest::new(Vec::new()))
            .expect("call")
            .body,
        b""
    );

    // Content type and headers reach the server (which sends them back).
    let request = RpcRequest::new("h\u{e9}")
        .with_content_type("text/plain; charset=utf-8")
        .with_header("lang", "fr")
        .with_header("note", "a=b\n");
    let reply = client.call(&request).expect("call");
    assert_eq!(reply.body, "H\u{e9}".as_bytes());
    assert_eq!(reply.content_type(), Some("text/plain; charset=utf-8"));
    assert_eq!(reply.header("lang"), Some("fr"));
    assert_eq!(reply.header("note"), Some("a=b\n"));
    assert_eq!(
        reply.headers().get("x-length"),
        Some(&AmqpValue::LongLongInt(3))
    );

    match client.call(&RpcRequest::new("ERR no thanks")) {
        Err(err @ Error::Server { .. }) => {
            assert_eq!(err.exit_code(), exit_code::SERVER_ERROR);
            let Error::Server { code, message } = &err else {
                unreachable!()
            };
            assert_eq!(
                (code.as_str(), message.as_str()),
                ("bad-request", "refused: no thanks")
            );
        }
        other => panic!("expected a server error, got {other:?}"),
    }

    // An empty header name never leaves the client.
    let bad = RpcRequest::new("x").with_header("", "v");
    assert!(matches!(client.call(&bad), Err(Error::Config(_))));

    // A batch: each outcome by its index, error replies as errors.
    let requests: Vec<RpcRequest> = ["a", "ERR b", "c"].map(RpcRequest::new).into();
    let mut outcomes = vec![None; requests.len()];
    client
        .call_many(&requests, 8, |index, result| {
            outcomes[index] = Some(result.map(|r| r.body).map_err(|e| e.to_string()));
            std::ops::ControlFlow::Continue(())
        })
        .expect("batch");
    assert_eq!(outcomes[0], Some(Ok(b"A".to_vec())));
    assert_eq!(
        outcomes[1],
        Some(Err("server error (bad-request): refused: b".to_string()))
    );
    assert_eq!(outcomes[2], Some(Ok(b"C".to_vec())));

    // call_many_raw passes the error reply on, with its server.
    let mut raw = Vec::new();
    client
        .call_many_raw(&requests[1..2], 1, |_, result| {
            raw.push(result.expect("a reply"));
            std::ops::ControlFlow::Continue(())
        })
        .expect("batch");
    assert_eq!(raw.len(), 1);
    assert!(matches!(raw[0].error(), Some(Error::Server { .. })));
    assert_eq!(raw[0].server.as_deref(), Some("raw-responder"));

    client.set_timeout(Duration::from_millis(400));
    match client.call(&RpcRequest::new("SILENT")) {
        Err(err @ Error::Timeout { .. }) => {
            let text = err.to_string();
            assert!(
                text.starts_with("no reply for request (6 bytes) within"),
                "{text}"
            );
            assert!(text.contains("1 consumer(s)"), "{text}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    client.close().expect("close");
    responder.stop();
}

/// Runs the rpc-client binary against the test broker with `stdin` as its standard input.
fn rpc_client_with_stdin(args: &[&str], stdin: &[u8]) -> (Output, String) {
    let broker = testing::broker();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rpc-client"))
        .args(["--host", &broker.host, "--port", &broker.port.to_string()])
        .args(args)
        .env_remove("AMQP_URI")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rpc-client");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // A client that refuses stdin closes it early: a failed write is its answer, not ours.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait for rpc-client");
    writer.join().expect("stdin writer");
    let shown = format!(
        "rpc-client {args:?}: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, shown)
}

#[test]
fn binary_call_prints_reply_bodies() {
    let queue = QueueGuard::new("bin-call");
    let responder = Responder::start_raw(queue.name());
    let q = queue.name();

    let (out, shown) = rpc_client(&["call", "--queue", q, "hello"]);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(out.stdout, b"HELLO\n", "{shown}");
    assert!(out.stderr.is_empty(), "{shown}");
    let (out, shown) = rpc_client(&["call", "--queue", q, "--idempotent", "again"]);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(out.stdout, b"AGAIN\n", "{shown}");

    // In argument order; a body ending with a newline gets no second one; '-' is stdin.
    let (out, shown) = rpc_client_with_stdin(
        &[
            "call",
            "--queue",
            q,
            "--in-flight",
            "2",
            "one",
            "-",
            "two\n",
            "",
        ],
        b"from stdin\n",
    );
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(out.stdout, b"ONE\nFROM STDIN\nTWO\n\n", "{shown}");

    // An error reply: its message, exit 5, the replies before it printed, none after.
    let (out, shown) = rpc_client(&["call", "--queue", q, "a", "ERR \x1b[2Jbad", "b"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::SERVER_ERROR)),
        "{shown}"
    );
    assert_eq!(out.stdout, b"A\n", "{shown}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr, "rpc-client: server error (bad-request): refused: ?[2Jbad\n",
        "{shown}"
    );

    // Usage errors: exit 2, one clear line first, before any call.
    let usage: [(&[&str], &str); 4] = [
        (
            &["call", "--queue", q, "--header", "novalue", "x"],
            "--header",
        ),
        (
            &["call", "--queue", q, "--header", "=v", "x"],
            "header name",
        ),
        (&["call", "--queue", q], "<BODY>"),
        (
            &["call", "--queue", q, "-", "-"],
            "only one BODY may be '-'",
        ),
    ];
    for (args, says) in usage {
        let (out, shown) = rpc_client(args);
        assert_eq!(
            out.status.code(),
            Some(i32::from(exit_code::USAGE)),
            "{shown}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.contains(says) || stderr.contains(says),
            "{says:?} not said: {shown}"
        );
        assert!(out.stdout.is_empty(), "{shown}");
    }
    let (out, shown) = rpc_client_with_stdin(
        &["call", "--queue", q, "-"],
        &vec![b'x'; rpc_client::cli::MAX_STDIN_BODY + 1],
    );
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::USAGE)),
        "{shown}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("16 MiB"),
        "{shown}"
    );

    // A queue nobody declared: exit 6.
    let missing = testing::unique_name("never-declared");
    let (out, shown) = rpc_client(&["call", "--queue", &missing, "x"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::NO_ROUTE)),
        "{shown}"
    );
    responder.stop();
}

#[test]
fn binary_call_json_describes_each_reply() {
    let queue = QueueGuard::new("bin-call-json");
    let responder = Responder::start_raw(queue.name());
    let q = queue.name();
    let args = [
        "call",
        "--queue",
        q,
        "--json",
        "--header",
        "lang=fr=ca",
        "--header",
        "quote=\"\\",
        "--content-type",
        "text/plain",
        "h\u{e9}llo",
        "-",
        "ERR nope",
        "last",
    ];
    let (out, shown) = rpc_client_with_stdin(&args, b"\xff\xfeab");
    // The error reply is an object like the others; the calls go on; exit 5 at the end.
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::SERVER_ERROR)),
        "{shown}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused: nope"),
        "{shown}"
    );
    let stdout = String::from_utf8(out.stdout.clone()).expect("JSON output is UTF-8");
    let lines: Vec<Json> = stdout
        .lines()
        .map(|line| Json::parse(line, &shown))
        .collect();
    assert_eq!(lines.len(), 4, "{shown}");

    let first = &lines[0];
    assert_eq!(
        first.get("body"),
        &Json::Str("H\u{e9}LLO".into()),
        "{shown}"
    );
    assert_eq!(first.get("encoding"), &Json::Str("utf-8".into()), "{shown}");
    assert_eq!(first.get("content_type"), &Json::Str("text/plain".into()));
    assert_eq!(first.get("server"), &Json::Str("raw-responder".into()));
    let headers = first.get("headers");
    assert_eq!(headers.get("lang"), &Json::Str("fr=ca".into()), "{shown}");
    assert_eq!(headers.get("quote"), &Json::Str("\"\\".into()), "{shown}");
    assert_eq!(headers.get("x-length"), &Json::Str("6".into()), "{shown}");
    assert_eq!(
        headers.get("x-rpc-server"),
        &Json::Str("raw-responder".into())
    );
    assert!(
        matches!(first.get("elapsed_ms"), Json::Num(ms) if *ms > 0.0),
        "{shown}"
    );

    // Not UTF-8: base64 of b"\xff\xfeAB".
    assert_eq!(
        lines[1].get("body"),
        &Json::Str("//5BQg==".into()),
        "{shown}"
    );
    assert_eq!(
        lines[1].get("encoding"),
        &Json::Str("base64".into()),
        "{shown}"
    );

    let error = lines[2].get("error");
    assert_eq!(
        error.get("code"),
        &Json::Str("bad-request".into()),
        "{shown}"
    );
    assert_eq!(
        error.get("message"),
        &Json::Str("refused: nope".into()),
        "{shown}"
    );
    assert_eq!(lines[2].get("server"), &Json::Str("raw-responder".into()));
    assert!(
        matches!(lines[2].get("elapsed_ms"), Json::Num(_)),
        "{shown}"
    );
    assert!(
        matches!(lines[2].get("trace_id"), Json::Str(id) if id.len() == 32),
        "{shown}"
    );
    assert!(
        matches!(lines[2], Json::Obj(ref fields) if fields.len() == 4),
        "{shown}"
    );

    assert_eq!(lines[3].get("body"), &Json::Str("LAST".into()), "{shown}");
    responder.stop();
}

/// Just enough of a JSON reader to check `rpc-client call --json` independently of the
/// writer: objects, strings (with escapes), numbers, null, booleans.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    /// Parses one whole line; panics with `shown` if it is not JSON.
    fn parse(line: &str, shown: &str) -> Json {
        let mut chars = line.chars().peekable();
        let value = Json::value(&mut chars).unwrap_or_else(|e| panic!("{e} in {line:?}\n{shown}"));
        assert!(chars.next().is_none(), "trailing text in {line:?}\n{shown}");
        value
    }

    /// The field `name` of an object (panics if there is none).
    fn get(&self, name: &str) -> &Json {
        match self {
            Json::Obj(fields) => fields
                .get(name)
                .unwrap_or_else(|| panic!("no field {name:?} in {self:?}")),
            other => panic!("{other:?} is not an object"),
        }
    }

    fn value(chars: &mut std::iter::Peekable<std::str::Chars>) -> Result<Json, String> {
        let skip = |chars: &mut std::iter::Peekable<std::str::Chars>| {
            while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        };
        skip(chars);
        let value = match chars.peek().copied() {
            Some('{') => {
                chars.next();
                let mut fields = BTreeMap::new();
                skip(chars);
                if chars.next_if_eq(&'}').is_none() {
                    loop {
                        let Json::Str(name) = Json::value(chars)? else {
                            return Err("an object key is not a string".into());
                        };
                        skip(chars);
                        chars.next_if_eq(&':').ok_or("no ':'")?;
                        let value = Json::value(chars)?;
                        if fields.insert(name.clone(), value).is_some() {
                            return Err(format!("duplicate key {name:?}"));
                        }
                        skip(chars);
                        match chars.next() {
                            Some(',') => continue,
                            Some('}') => break,
                            other => return Err(format!("{other:?} in an object")),
                        }
                    }
                }
                Json::Obj(fields)
            }
            Some('"') => {
                chars.next();
                let mut text = String::new();
                loop {
                    match chars.next().ok_or("unterminated string")? {
                        '"' => break,
                        '\\' => match chars.next().ok_or("unterminated escape")? {
                            'n' => text.push('\n'),
                            'r' => text.push('\r'),
                            't' => text.push('\t'),
                            'b' => text.push('\u{8}'),
                            'f' => text.push('\u{c}'),
                            'u' => {
                                let hex: String = chars.by_ref().take(4).collect();
                                let code =
                                    u32::from_str_radix(&hex, 16).map_err(|e| e.to_string())?;
                                text.push(char::from_u32(code).ok_or("not a character")?);
                            }
                            c @ ('"' | '\\' | '/') => text.push(c),
                            c => return Err(format!("bad escape \\{c}")),
                        },
                        c if u32::from(c) < 0x20 => return Err("raw control character".into()),
                        c => text.push(c),
                    }
                }
                Json::Str(text)
            }
            Some('n' | 't' | 'f') => {
                let word: String =
                    std::iter::from_fn(|| chars.next_if(char::is_ascii_alphabetic)).collect();
                match word.as_str() {
                    "null" => Json::Null,
                    "true" => Json::Bool(true),
                    "false" => Json::Bool(false),
                    other => return Err(format!("unknown word {other:?}")),
                }
            }
            Some(_) => {
                let number: String = std::iter::from_fn(|| {
                    chars
                        .next_if(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'))
                })
                .collect();
                Json::Num(
                    number
                        .parse()
                        .map_err(|_| format!("bad number {number:?}"))?,
                )
            }
            None => return Err("no value".into()),
        };
        Ok(value)
    }
}
