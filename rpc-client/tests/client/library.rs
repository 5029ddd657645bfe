//! The calling API ([`FibonacciRpcClient`], [`RpcClient`]) against the stand-in server.

use crate::util::*;
use amiquip::{AmqpProperties, AmqpValue};
use rpc_client::exit_code;
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::{ClientOptions, Error, FibonacciRpcClient};
use std::time::{Duration, Instant};

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
fn wait_for_server_tells_a_consumer_from_an_idle_or_missing_queue() {
    let mut queue = QueueGuard::new("wait-lib");
    let mut client =
        FibonacciRpcClient::connect(&options(queue.name(), Duration::from_secs(5))).expect("c");
    let within = Duration::from_millis(400);
    let started = Instant::now();
    assert_eq!(client.wait_for_server(within).expect("wait"), None);
    assert!(started.elapsed() >= within, "{:?}", started.elapsed());
    // The failed passive declares left the client's connection usable, and the call still
    // fails at once: the wait does not hide a missing queue.
    assert!(matches!(client.call(30), Err(Error::NoRoute { .. })));
    Admin::connect()
        .expect("admin")
        .declare(queue.name(), false)
        .expect("declare");
    assert_eq!(client.wait_for_server(within).expect("wait"), Some(0));
    let responder = Responder::start(queue.name(), false);
    let started = Instant::now();
    let long = Duration::from_secs(20);
    assert_eq!(client.wait_for_server(long).expect("wait"), Some(1));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.call(30).expect("call"), "832040");
    responder.stop();
    queue.delete().expect("delete");
}
