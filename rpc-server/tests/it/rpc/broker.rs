//! The server and the broker: queues declared or used as they are, a closed connection, brokers
//! that do not answer, replies the broker refuses, a queue name it would not take.

use super::{client, server_options, slow_fib, start_servers, stop_all, TestServer};
use crate::common::broker::Ctl;
use amiquip::{AmqpValue, FieldTable, QueueDeclareOptions};
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::wire;
use rpc_client::{ClientOptions, Error, FibonacciRpcClient};
use rpc_server::{QueueType, ServerOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
fn an_empty_queue_name_is_refused() {
    let mut options = server_options("", "nameless");
    options.queue = String::new();
    let (_stop, shutdown) = crossbeam_channel::bounded(1);
    match rpc_server::run(&options, shutdown) {
        Err(rpc_server::Error::Config(message)) => assert!(message.contains("empty"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
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
    let handler = slow_fib(Duration::ZERO, Arc::clone(&started));
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
    assert_eq!(client(queue.name()).call(12).expect("call"), "144");
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
