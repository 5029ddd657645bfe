//! Fibonacci answers through the library: right, to the right caller, shared between servers,
//! many in flight, all acked.

use super::{client, fib_by_addition, server_options, start_servers, stop_all, TestServer};
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::{ClientOptions, FibonacciRpcClient, ReplyQueue};
use rpc_server::ServerOptions;
use std::collections::HashMap;

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
