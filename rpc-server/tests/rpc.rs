//! Behaviour of rpc-server against the real broker, called through the rpc-client library and
//! raw AMQP. Every test uses its own uuid-named queue and deletes it.

mod common;

use amiquip::{
    AmqpProperties, AmqpValue, ConsumerMessage, ConsumerOptions, FieldTable, QueueDeclareOptions,
};
use common::broker::Ctl;
use crossbeam_channel::Sender;
use num_bigint::BigUint;
use rpc_client::testing::{self, Admin, QueueGuard};

use rpc_client::wire::{self, ERROR_HEADER, SERVER_HEADER, TRACEPARENT_HEADER, TRACESTATE_HEADER};
use rpc_client::TraceContext;
use rpc_client::{ClientOptions, Error, FibonacciRpcClient, ReplyQueue, RpcClient, RpcRequest};
use rpc_server::{Handler, QueueType, Reply, Request, ServerOptions, Stats};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A server running `rpc_server::run` on a thread, stopped through its shutdown channel.
struct TestServer {
    stop: Sender<()>,
    handle: JoinHandle<Result<Stats, rpc_server::Error>>,
}

impl TestServer {
    fn start(options: ServerOptions) -> TestServer {
        testing::init_logging();
        let (stop, shutdown) = crossbeam_channel::bounded(1);
        let handle = std::thread::spawn(move || rpc_server::run(&options, shutdown));
        TestServer { stop, handle }
    }

    /// A server of `handler` instead of Fibonacci.
    fn serving(options: ServerOptions, handler: Arc<dyn Handler>) -> TestServer {
        testing::init_logging();
        let (stop, shutdown) = crossbeam_channel::bounded(1);
        let handle = std::thread::spawn(move || rpc_server::serve(&options, handler, shutdown));
        TestServer { stop, handle }
    }

    fn stop(self) -> Stats {
        let _ = self.stop.send(());
        match self.handle.join() {
            Ok(Ok(stats)) => stats,
            Ok(Err(err)) => panic!("server failed: {err:#}"),
            Err(_) => panic!("server thread panicked"),
        }
    }
}

fn stop_all(servers: Vec<TestServer>) -> Vec<Stats> {
    servers.into_iter().map(TestServer::stop).collect()
}

fn server_options(queue: &str, name: &str) -> ServerOptions {
    ServerOptions {
        brokers: vec![testing::broker()],
        queue: queue.to_string(),
        name: name.to_string(),
        ..ServerOptions::default()
    }
}

fn client(queue: &str) -> FibonacciRpcClient {
    let options = ClientOptions {
        brokers: vec![testing::broker()],
        queue: queue.to_string(),
        timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    };
    FibonacciRpcClient::connect(&options).expect("client connects")
}

/// Starts `count` servers on `queue` and waits until all of them consume it.
fn start_servers(queue: &str, count: usize) -> Vec<TestServer> {
    let servers: Vec<_> = (0..count)
        .map(|i| TestServer::start(server_options(queue, &format!("server-{i}"))))
        .collect();
    let mut admin = Admin::connect().expect("admin connects");
    admin
        .wait_for_consumers(queue, count as u32)
        .expect("servers consume");
    servers
}

/// fib(n) by plain addition: slow, obviously right, independent of the server's algorithm.
fn fib_by_addition(n: u64) -> String {
    let (mut a, mut b) = (BigUint::from(0u8), BigUint::from(1u8));
    for _ in 0..n {
        let next = &a + &b;
        a = std::mem::replace(&mut b, next);
    }
    a.to_string()
}

const FIB_1000: &str = "43466557686937456435688527675040625802564660517371780402481729089536555417949051890403879840079255169295922593080322634775209689623239873322471161642996440906533187938298969649928516003704476137795166849228875";

#[test]
fn library_round_trip() {
    let queue = QueueGuard::new("round-trip");
    let servers = start_servers(queue.name(), 1);
    let mut client = client(queue.name());
    assert_eq!(client.call(30).expect("fib(30)"), "832040");
    let reply = client.call_reply(10).expect("fib(10)");
    assert_eq!(reply.value, "55");
    assert_eq!(reply.server.as_deref(), Some("server-0"));
    client.close().expect("client closes");
    let stats = stop_all(servers);
    assert_eq!(stats[0].answered, 2);
}

#[test]
fn correctness_table() {
    let queue = QueueGuard::new("table");
    let servers = start_servers(queue.name(), 1);
    let mut client = client(queue.name());
    let known = [
        (0, "0"),
        (1, "1"),
        (2, "1"),
        (10, "55"),
        (30, "832040"),
        (93, "12200160415121876738"),
        (94, "19740274219868223167"),
        (1000, FIB_1000),
    ];
    for (n, expected) in known {
        assert_eq!(client.call(n).expect("call"), expected, "fib({n})");
    }
    for n in [12_345, 30_000] {
        assert_eq!(
            client.call(n).expect("call"),
            fib_by_addition(n),
            "fib({n})"
        );
    }
    stop_all(servers);
}

#[test]
fn concurrent_clients_get_their_own_answers() {
    let queue = QueueGuard::new("concurrent");
    let servers = start_servers(queue.name(), 2);
    let workers: Vec<_> = [(0u64, 7u64), (3, 5)]
        .into_iter()
        .map(|(start, step)| {
            let mut client = client(queue.name());
            std::thread::spawn(move || {
                (0..40)
                    .map(|i| {
                        let n = start + i * step;
                        (n, client.call(n).expect("call"))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for worker in workers {
        for (n, value) in worker.join().expect("worker") {
            assert_eq!(value, fib_by_addition(n), "fib({n})");
        }
    }
    let answered: u64 = servers.into_iter().map(|s| s.stop().answered).sum();
    assert_eq!(answered, 80);
}

#[test]
fn three_servers_share_slow_work() {
    let queue = QueueGuard::new("share");
    let servers = start_servers(queue.name(), 3);
    // Six callers keep six slow requests in flight; with prefetch 1 the broker hands them out
    // round-robin, so every server must get some.
    let callers: Vec<_> = (0..6)
        .map(|_| {
            let mut client = client(queue.name());
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| client.call_reply(300_000).expect("call").server)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut by_server: HashMap<String, usize> = HashMap::new();
    for caller in callers {
        for server in caller.join().expect("caller") {
            *by_server.entry(server.expect("server header")).or_default() += 1;
        }
    }
    let stats = stop_all(servers);
    assert_eq!(by_server.len(), 3, "replies per server: {by_server:?}");
    assert!(stats.iter().all(|s| s.answered > 0), "{stats:?}");
    assert_eq!(stats.iter().map(|s| s.answered).sum::<u64>(), 18);
}

/// Publishes raw requests and collects the replies on an exclusive queue.
fn raw_round_trip(
    admin: &Admin,
    queue: &str,
    requests: &[(&[u8], bool)],
) -> Vec<(AmqpProperties, Vec<u8>)> {
    let (reply_queue, consumer) =
        rpc_client::amqp::callback_queue(admin.channel()).expect("reply queue");
    let mut expected = 0;
    for (i, (body, with_reply_to)) in requests.iter().enumerate() {
        let mut properties = AmqpProperties::default().with_correlation_id(i.to_string());
        if *with_reply_to {
            properties = properties.with_reply_to(reply_queue.clone());
            expected += 1;
        }
        admin.publish(queue, body, properties).expect("publish");
    }
    let mut got = Vec::new();
    while got.len() < expected {
        match consumer.recv_timeout(Duration::from_secs(20)) {
            Ok(ConsumerMessage::Delivery(d)) => got.push((d.properties, d.body)),
            other => panic!(
                "waiting for reply {} of {expected}: {other:?}",
                got.len() + 1
            ),
        }
    }
    got
}

#[test]
fn bad_requests_get_error_replies_and_the_server_keeps_serving() {
    let queue = QueueGuard::new("bad");
    let mut options = server_options(queue.name(), "strict");
    options.max_n = 5000;
    let server = TestServer::start(options);
    let mut admin = Admin::connect().expect("admin");
    admin
        .wait_for_consumers(queue.name(), 1)
        .expect("server consumes");

    let oversized = vec![b'7'; 10_000];
    let bad: Vec<(&[u8], &str)> = vec![
        (b"", "bad-request"),
        (b"   ", "bad-request"),
        (b"abc", "bad-request"),
        (b"-1", "bad-request"),
        (b"1.5", "bad-request"),
        (b"1e3", "bad-request"),
        (b"\xff\xfe\xfd", "bad-request"),
        (b"12\x0034", "bad-request"),
        (&oversized, "bad-request"),
        (b"5001", "too-large"),
        (b"18446744073709551616", "too-large"),
    ];
    let mut requests: Vec<(&[u8], bool)> = bad.iter().map(|(b, _)| (*b, true)).collect();
    requests.push((b"30", false)); // no reply_to: acked and dropped
    requests.push((b"20", true));
    let replies = raw_round_trip(&admin, queue.name(), &requests);
    assert_eq!(replies.len(), bad.len() + 1);
    for (properties, body) in &replies {
        let id: usize = properties
            .correlation_id()
            .as_deref()
            .and_then(|id| id.parse().ok())
            .expect("correlation id echoed");
        if id == requests.len() - 1 {
            assert_eq!(body, b"6765");
            assert_eq!(wire::header(properties, ERROR_HEADER), None);
        } else {
            let (request, code) = bad[id];
            assert_eq!(
                wire::header(properties, ERROR_HEADER),
                Some(code),
                "request {request:?} got {:?}",
                String::from_utf8_lossy(body)
            );
            let message = String::from_utf8(body.clone()).expect("UTF-8 message");
            assert!(
                !message.is_empty() && !message.contains('\n'),
                "{message:?}"
            );
        }
        assert_eq!(wire::header(properties, SERVER_HEADER), Some("strict"));
    }
    // The library reports an error reply as Error::Server.
    let mut client = client(queue.name());
    match client.call(5001) {
        Err(Error::Server { code, .. }) => assert_eq!(code, "too-large"),
        other => panic!("expected a server error, got {other:?}"),
    }
    assert_eq!(client.call(3).expect("still serving"), "2");
    admin
        .wait_for_empty(queue.name())
        .expect("nothing left behind");
    let stats = server.stop();
    assert_eq!(
        stats,
        Stats {
            answered: 2,
            refused: bad.len() as u64 + 1,
            dropped: 1,
            unconfirmed: 0,
            reconnects: 0,
        }
    );
}

#[test]
fn existing_quorum_queue_is_used_as_declared() {
    let queue = QueueGuard::new("quorum-existing");
    let admin = Admin::connect().expect("admin");
    admin.declare(queue.name(), true).expect("declare quorum");
    // Our default is classic; the server must not try to redeclare (406).
    let servers = start_servers(queue.name(), 1);
    assert_eq!(client(queue.name()).call(30).expect("call"), "832040");
    stop_all(servers);
}

#[test]
fn missing_queue_is_declared_as_configured() {
    for quorum in [false, true] {
        let queue = QueueGuard::new("declared");
        let mut options = server_options(queue.name(), "declarer");
        options.queue_type = if quorum {
            QueueType::Quorum
        } else {
            QueueType::Classic
        };
        let server = TestServer::start(options);
        let mut admin = Admin::connect().expect("admin");
        admin.wait_for_consumers(queue.name(), 1).expect("consumes");
        // Re-declaring with the same settings succeeds only if they match what the server did.
        admin.declare(queue.name(), quorum).expect("same settings");
        assert_eq!(client(queue.name()).call(1).expect("call"), "1");
        assert_eq!(server.stop().answered, 1);
    }
}

#[test]
fn direct_reply_to_callers_are_served() {
    let queue = QueueGuard::new("direct");
    let servers = start_servers(queue.name(), 1);
    let admin = Admin::connect().expect("admin");
    let channel = admin.channel();
    let consumer = rpc_client::amqp::consume(
        channel,
        "amq.rabbitmq.reply-to",
        ConsumerOptions {
            no_ack: true,
            ..ConsumerOptions::default()
        },
    )
    .expect("consume direct reply-to");
    admin
        .publish(
            queue.name(),
            b"30",
            wire::request_properties("amq.rabbitmq.reply-to", "direct-1"),
        )
        .expect("publish");
    match consumer.recv_timeout(Duration::from_secs(20)) {
        Ok(ConsumerMessage::Delivery(d)) => {
            assert_eq!(d.body, b"832040");
            assert_eq!(d.properties.correlation_id().as_deref(), Some("direct-1"));
        }
        other => panic!("no direct reply: {other:?}"),
    }
    stop_all(servers);
}

#[test]
fn requests_past_their_deadline_are_dropped_unanswered() {
    let queue = QueueGuard::new("deadline");
    let server = TestServer::start(server_options(queue.name(), "deadline"));
    let mut admin = Admin::connect().expect("admin");
    admin.wait_for_consumers(queue.name(), 1).expect("consumes");
    // Sent in 1970 with a 10 s expiration: its caller is long gone. (The broker only expires
    // messages by their time in the queue, so it delivers this one.)
    let expired = wire::request_properties("nobody-listens-here", "gone")
        .with_timestamp(1_000)
        .with_expiration("10000".into());
    admin
        .publish(queue.name(), b"1000000", expired)
        .expect("publish");
    // The next call is served after the expired request was taken off the queue.
    assert_eq!(client(queue.name()).call(12).expect("call"), "144");
    admin.wait_for_empty(queue.name()).expect("empty");
    let stats = server.stop();
    assert_eq!((stats.answered, stats.dropped), (1, 1), "{stats:?}");
}

/// The broker's id of the connection whose client properties mention `needle` (from
/// `$RABBITMQCTL list_connections`, by default the local `rabbitmqctl`).
fn connection_pid(needle: &str) -> Result<Option<String>, Error> {
    Ctl::from_env()
        .connection_pid(needle)
        .map_err(Error::Config)
}

#[test]
fn server_reconnects_after_the_broker_closes_its_connection() {
    let queue = QueueGuard::new("reconnect");
    let name = testing::unique_name("reconnecting-server");
    let mut options = server_options(queue.name(), &name);
    options.brokers[0].client_name = format!("test {name}");
    let server = TestServer::start(options);
    let mut admin = Admin::connect().expect("admin");
    admin.wait_for_consumers(queue.name(), 1).expect("consumes");
    let mut pid = None;
    testing::wait_until("the server's connection", Duration::from_secs(20), || {
        pid = connection_pid(&name)?;
        Ok(pid.is_some())
    })
    .expect("listed");
    let pid = pid.expect("found");
    Ctl::from_env()
        .run(&["close_connection", &pid, "closed by the reconnect test"])
        .unwrap_or_else(|e| panic!("{e}"));
    // A new connection appears (different pid) and consumes again.
    testing::wait_until("a new connection", Duration::from_secs(30), || {
        Ok(connection_pid(&name)?.is_some_and(|p| p != pid))
    })
    .expect("reconnected");
    admin
        .wait_for_consumers(queue.name(), 1)
        .expect("consumes again");
    assert_eq!(client(queue.name()).call(20).expect("call"), "6765");
    let stats = server.stop();
    assert!(stats.reconnects >= 1, "{stats:?}");
    assert_eq!(stats.answered, 1);
}

#[test]
fn many_calls_in_flight_are_matched_to_their_replies() {
    for reply_queue in [ReplyQueue::Exclusive, ReplyQueue::Direct] {
        let queue = QueueGuard::new("in-flight");
        let servers = start_servers(queue.name(), 2);
        let mut client = FibonacciRpcClient::connect(&ClientOptions {
            brokers: vec![testing::broker()],
            queue: queue.name().to_string(),
            reply_queue,
            ..ClientOptions::default()
        })
        .expect("client");
        if reply_queue == ReplyQueue::Direct {
            assert_eq!(client.reply_queue(), "amq.rabbitmq.reply-to");
        }
        // Mixed sizes, so replies come back out of order.
        let numbers: Vec<u64> = (0..200)
            .map(|i| if i % 7 == 0 { 40_000 + i } else { i })
            .collect();
        let mut got: Vec<Option<String>> = vec![None; numbers.len()];
        let mut order = Vec::new();
        client
            .call_many(numbers.iter().copied(), 16, |index, n, result| {
                assert_eq!(numbers[index], n);
                assert!(got[index].is_none(), "call {index} answered twice");
                got[index] = Some(result.expect("call").value);
                order.push(index);
                std::ops::ControlFlow::Continue(())
            })
            .expect("batch");
        for (index, n) in numbers.iter().enumerate() {
            assert_eq!(
                got[index].as_deref(),
                Some(fib_by_addition(*n).as_str()),
                "fib({n})"
            );
        }
        assert_ne!(
            order,
            (0..numbers.len()).collect::<Vec<_>>(),
            "replies all in order?"
        );
        assert_eq!(
            client.call(30).expect("single call after a batch"),
            "832040"
        );
        let answered: u64 = stop_all(servers).iter().map(|s| s.answered).sum();
        assert_eq!(answered, 201);
    }
}

#[test]
fn client_and_server_skip_brokers_that_do_not_answer() {
    let queue = QueueGuard::new("failover");
    let mut dead = testing::broker();
    dead.port = 1; // nothing listens there
    let brokers = vec![dead, testing::broker()];
    let server = TestServer::start(ServerOptions {
        brokers: brokers.clone(),
        ..server_options(queue.name(), "failover")
    });
    let mut admin = Admin::connect().expect("admin");
    admin
        .wait_for_consumers(queue.name(), 1)
        .expect("server consumes via the second broker");
    let mut client = FibonacciRpcClient::connect(&ClientOptions {
        brokers,
        queue: queue.name().to_string(),
        ..ClientOptions::default()
    })
    .expect("client connects via the second broker");
    assert_eq!(client.call(25).expect("call"), "75025");
    assert_eq!(server.stop().answered, 1);
}

#[test]
fn a_high_prefetch_server_acks_everything_it_answered() {
    let queue = QueueGuard::new("prefetch");
    let server = TestServer::start(ServerOptions {
        prefetch: 100,
        ..server_options(queue.name(), "prefetch-100")
    });
    let mut admin = Admin::connect().expect("admin");
    admin.wait_for_consumers(queue.name(), 1).expect("consumes");
    let mut answered = 0;
    client(queue.name())
        .call_many((0..500).map(|i| i % 90), 250, |_, n, result| {
            assert_eq!(result.expect("call").value, fib_by_addition(n));
            answered += 1;
            std::ops::ControlFlow::Continue(())
        })
        .expect("batch");
    assert_eq!(answered, 500);
    let stats = server.stop();
    assert_eq!(stats.answered, 500);
    // Anything answered but not acked would be back in the queue now that the server is gone.
    let state = admin.queue_state(queue.name()).expect("queue state");
    assert_eq!(
        state,
        Some((0, 0)),
        "(ready messages, consumers) after the server stopped"
    );
}

#[test]
fn skewed_clocks_do_not_drop_requests() {
    // A caller whose clock is 120 s behind the server's (or a server 120 s ahead), and one
    // 120 s ahead: both still wait (30 s timeout), both are answered.
    let queue = QueueGuard::new("skew");
    let server = TestServer::start(server_options(queue.name(), "skew"));
    let mut admin = Admin::connect().expect("admin");
    admin.wait_for_consumers(queue.name(), 1).expect("consumes");
    let (reply_queue, consumer) =
        rpc_client::amqp::callback_queue(admin.channel()).expect("reply queue");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    for (id, sent) in [("behind", now - 120), ("ahead", now + 120)] {
        let properties = wire::request_properties(&reply_queue, id)
            .with_timestamp(sent)
            .with_expiration("30000".into());
        admin
            .publish(queue.name(), b"30", properties)
            .expect("publish");
    }
    let mut answered = Vec::new();
    while answered.len() < 2 {
        match consumer.recv_timeout(Duration::from_secs(20)) {
            Ok(ConsumerMessage::Delivery(d)) => {
                assert_eq!(d.body, b"832040");
                answered.push(d.properties.correlation_id().clone().unwrap_or_default());
            }
            other => panic!("waiting for the skewed requests' replies: {other:?}"),
        }
    }
    answered.sort();
    assert_eq!(answered, ["ahead", "behind"]);
    let stats = server.stop();
    assert_eq!((stats.answered, stats.dropped), (2, 0), "{stats:?}");
}

#[test]
fn an_empty_queue_name_is_refused() {
    let mut options = server_options("", "nameless");
    options.queue = String::new();
    let (_stop, shutdown) = crossbeam_channel::bounded(1);
    match rpc_server::run(&options, shutdown) {
        Err(rpc_server::Error::Config(message)) => assert!(message.contains("empty"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

/// A handler that counts the requests it starts in `started`, takes `pause`, then answers
/// with the request body (a decimal number, so the Fibonacci client accepts it as a reply).
fn slow_echo(pause: Duration, started: Arc<AtomicUsize>) -> Arc<dyn Handler> {
    Arc::new(move |request: &Request| {
        started.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(pause);
        Reply::answer(request.body)
    })
}

#[test]
fn workers_handle_requests_at_once_and_a_stop_waits_for_them() {
    let queue = QueueGuard::new("workers");
    let options = ServerOptions {
        workers: 2,
        ..server_options(queue.name(), "workers-0")
    };
    let started = Arc::new(AtomicUsize::new(0));
    let handler = slow_echo(Duration::from_secs(1), Arc::clone(&started));
    let server = TestServer::serving(options, handler);
    let mut admin = Admin::connect().expect("admin connects");
    admin
        .wait_for_consumers(queue.name(), 1)
        .expect("server consumes");
    let mut client = client(queue.name());
    // Two 1-second requests at once: about 1 s with two workers (2 s one after the other).
    let begun = Instant::now();
    let mut answers = Vec::new();
    client
        .call_many([7, 8], 2, |_, n, result| {
            answers.push((n, result.map(|reply| reply.value)));
            ControlFlow::Continue(())
        })
        .expect("calls");
    let took = begun.elapsed();
    answers.sort_by_key(|(n, _)| *n);
    assert_eq!(answers[0].1.as_deref().ok(), Some("7"), "{answers:?}");
    assert_eq!(answers[1].1.as_deref().ok(), Some("8"), "{answers:?}");
    assert!(
        took < Duration::from_millis(1800),
        "two requests took {took:?}"
    );
    // A stop asked while two requests are in hand answers both before it returns.
    let caller = std::thread::spawn(move || {
        let mut replies = Vec::new();
        let sent = client.call_many([5, 6], 2, |_, _, result| {
            replies.push(result.map(|reply| reply.value));
            ControlFlow::Continue(())
        });
        (sent, replies)
    });
    testing::poll_until(
        "both requests in hand",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || Ok(started.load(Ordering::SeqCst) == 4),
    )
    .expect("both requests in hand");
    let stats = server.stop();
    let (sent, replies) = caller.join().expect("caller");
    sent.expect("calls");
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(replies.iter().all(Result::is_ok), "{replies:?}");
    assert_eq!(stats.answered, 4, "{stats:?}");
}

#[test]
fn a_panicking_handler_gets_an_internal_error_reply_and_the_server_goes_on() {
    let queue = QueueGuard::new("panics");
    let handler: Arc<dyn Handler> = Arc::new(|request: &Request| {
        if request.body == b"13" {
            panic!("unlucky");
        }
        Reply::answer(request.body)
    });
    let server = TestServer::serving(server_options(queue.name(), "panics-0"), handler);
    Admin::connect()
        .expect("admin connects")
        .wait_for_consumers(queue.name(), 1)
        .expect("server consumes");
    let mut client = client(queue.name());
    match client.call(13) {
        Err(Error::Server { code, .. }) => assert_eq!(code, "internal"),
        other => panic!("expected an internal error reply, got {other:?}"),
    }
    assert_eq!(client.call(12).expect("the server goes on"), "12");
    let stats = server.stop();
    assert_eq!((stats.answered, stats.refused), (1, 1), "{stats:?}");
}

#[test]
fn a_reply_the_broker_refuses_leaves_its_request_to_come_back() {
    // The caller's queue takes nothing: with `x-overflow: reject-publish` the broker nacks
    // every reply published to it.
    let queue = QueueGuard::new("nacked");
    let full = QueueGuard::new("nacked-replies");
    let admin = Admin::connect().expect("admin connects");
    let mut arguments = FieldTable::new();
    arguments.insert("x-max-length".into(), AmqpValue::LongInt(0));
    arguments.insert(
        "x-overflow".into(),
        AmqpValue::LongString("reject-publish".into()),
    );
    admin
        .channel()
        .queue_declare(
            full.name(),
            QueueDeclareOptions {
                // Durable: RabbitMQ 4.3 denies transient non-exclusive queues.
                durable: true,
                arguments,
                ..QueueDeclareOptions::default()
            },
        )
        .expect("declare the full reply queue");
    let started = Arc::new(AtomicUsize::new(0));
    let handler = slow_echo(Duration::ZERO, Arc::clone(&started));
    // Prefetch 1: the second request is delivered only once the first is acked or rejected.
    let options = ServerOptions {
        confirm_replies: true,
        ..server_options(queue.name(), "nacked-0")
    };
    let server = TestServer::serving(options, handler);
    let mut admin = admin;
    admin.wait_for_consumers(queue.name(), 1).expect("consumes");
    admin
        .publish(
            queue.name(),
            b"7",
            wire::request_properties(full.name(), "refused"),
        )
        .expect("publish");
    // A second caller, whose reply arrives once the first request is settled for good.
    assert_eq!(client(queue.name()).call(12).expect("call"), "12");
    let stats = server.stop();
    // The first reply was nacked, so its request went back to the queue instead of being
    // acked; it came back redelivered and got the 'redelivered' error reply (the redelivery
    // rule), which was nacked too: that last word is acked, so nothing loops.
    assert_eq!(started.load(Ordering::SeqCst), 2, "requests handled");
    assert_eq!(
        (
            stats.answered,
            stats.refused,
            stats.unconfirmed,
            stats.dropped
        ),
        (1, 0, 2, 0),
        "{stats:?}"
    );
    assert_eq!(
        admin.queue_state(queue.name()).expect("queue state"),
        Some((0, 0)),
        "(ready messages, consumers) after the server stopped"
    );
    assert_eq!(
        admin.queue_state(full.name()).expect("reply queue state"),
        Some((0, 0))
    );
}

/// The trace id of a reply's `traceparent`, which must be valid.
fn reply_trace(properties: &AmqpProperties) -> TraceContext {
    let header = wire::header(properties, TRACEPARENT_HEADER).expect("reply has a traceparent");
    TraceContext::parse(Some(header), None).expect("the reply's traceparent is valid")
}

#[test]
fn trace_context_goes_client_to_server_to_reply() {
    let queue = QueueGuard::new("trace");
    let servers = start_servers(queue.name(), 1);
    // A parent (as from TRACEPARENT/TRACESTATE): every call is a child of it.
    let parent = TraceContext::parse(
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        Some("congo=t61rcWkgMzE"),
    )
    .expect("valid");
    let mut fib = client(queue.name());
    fib.set_parent(Some(parent.clone()));
    let reply = fib.call_reply(10).expect("fib(10)");
    assert_eq!(reply.trace_id, parent.trace_id);
    // Without a parent: a new trace per call, and the reply says which.
    fib.set_parent(None);
    let (a, b) = (fib.call_reply(1).expect("a"), fib.call_reply(2).expect("b"));
    assert_ne!(a.trace_id, b.trace_id);
    assert_ne!(a.trace_id, parent.trace_id);
    drop(fib.close());
    // The bytes-level client: the reply's traceparent has the call's trace id and the
    // server's own span id, and the tracestate comes back too.
    let mut rpc = RpcClient::connect(&ClientOptions {
        brokers: vec![testing::broker()],
        queue: queue.name().to_string(),
        timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    })
    .expect("client connects");
    for parent in [Some(parent.clone()), None] {
        let reply = rpc
            .call(&RpcRequest::new("7").with_parent(parent.clone()))
            .expect("call");
        let server = reply_trace(&reply.properties);
        assert_eq!(server.trace_id, reply.trace.trace_id);
        assert_ne!(server.span_id, reply.trace.span_id);
        if let Some(parent) = &parent {
            assert_eq!(reply.trace.trace_id, parent.trace_id);
            assert_ne!(reply.trace.span_id, parent.span_id);
            assert_eq!(reply.header(TRACESTATE_HEADER), Some("congo=t61rcWkgMzE"));
        } else {
            assert_eq!(reply.header(TRACESTATE_HEADER), None);
        }
    }
    drop(rpc.close());
    stop_all(servers);
}

#[test]
fn malformed_or_missing_traceparent_starts_a_new_trace_and_is_never_echoed() {
    let queue = QueueGuard::new("trace-raw");
    let servers = start_servers(queue.name(), 1);
    let admin = Admin::connect().expect("admin");
    let (reply_queue, consumer) =
        rpc_client::amqp::callback_queue(admin.channel()).expect("reply queue");
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let cases: [(&str, Option<&str>); 5] = [
        ("none", None),
        ("valid", Some(valid)),
        (
            "upper",
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"),
        ),
        (
            "zero",
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ),
        (
            "hostile",
            Some("\x1b]0;owned\x07\n00-4bf92f3577b34da6a3ce929d0e0e4736-00"),
        ),
    ];
    for (id, traceparent) in cases {
        let mut headers = FieldTable::new();
        if let Some(value) = traceparent {
            headers.insert(
                TRACEPARENT_HEADER.into(),
                AmqpValue::LongString(value.into()),
            );
            headers.insert(
                TRACESTATE_HEADER.into(),
                AmqpValue::LongString("k=v".into()),
            );
        }
        let properties = AmqpProperties::default()
            .with_correlation_id(id.into())
            .with_reply_to(reply_queue.clone())
            .with_headers(headers);
        admin
            .publish(queue.name(), b"5", properties)
            .expect("publish");
    }
    let mut seen = HashMap::new();
    while seen.len() < cases.len() {
        match consumer.recv_timeout(Duration::from_secs(20)) {
            Ok(ConsumerMessage::Delivery(d)) => {
                let id = d.properties.correlation_id().clone().expect("id");
                let header = wire::header(&d.properties, TRACEPARENT_HEADER).map(String::from);
                let state = wire::header(&d.properties, TRACESTATE_HEADER).map(String::from);
                seen.insert(id, (reply_trace(&d.properties), header, state));
            }
            other => panic!("waiting for reply {} of 5: {other:?}", seen.len() + 1),
        }
    }
    let (valid_trace, _, state) = &seen["valid"];
    assert_eq!(
        valid_trace.trace_id.to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_ne!(valid_trace.span_id, 0x00f0_67aa_0ba9_02b7);
    assert_eq!(state.as_deref(), Some("k=v"));
    for (id, traceparent) in cases {
        let (trace, header, state) = &seen[id];
        if id != "valid" {
            // A new trace; neither the malformed header nor its tracestate comes back.
            assert_ne!(trace.trace_id, valid_trace.trace_id, "{id}");
            assert_ne!(header.as_deref(), traceparent, "{id}");
            assert_eq!(state, &None, "{id}");
        }
    }
    stop_all(servers);
}
