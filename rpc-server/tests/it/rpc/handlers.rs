//! Servers of Rust handlers: worker threads and a stop that waits for them, a handler that
//! panics.

use super::{client, fib_of_body, server_options, slow_fib, TestServer};
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::Error;
use rpc_server::{Handler, Request, ServerOptions};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn workers_handle_requests_at_once_and_a_stop_waits_for_them() {
    let queue = QueueGuard::new("workers");
    let options = ServerOptions {
        workers: 2,
        ..server_options(queue.name(), "workers-0")
    };
    let started = Arc::new(AtomicUsize::new(0));
    let handler = slow_fib(Duration::from_secs(1), Arc::clone(&started));
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
    assert_eq!(answers[0].1.as_deref().ok(), Some("13"), "{answers:?}");
    assert_eq!(answers[1].1.as_deref().ok(), Some("21"), "{answers:?}");
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
        fib_of_body(request)
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
    assert_eq!(client.call(12).expect("the server goes on"), "144");
    let stats = server.stop();
    assert_eq!((stats.answered, stats.refused), (1, 1), "{stats:?}");
}

#[test]
fn a_rust_handler_sees_the_callers_deadline_and_past_it_nothing_is_sent() {
    let queue = QueueGuard::new("rust-deadline");
    let options = ServerOptions {
        workers: 2,
        ..server_options(queue.name(), "rust-deadline")
    };
    // "wait": works until the caller is gone; anything else: the time left in ms, or "none".
    let handler: Arc<dyn Handler> = Arc::new(|request: &Request| {
        if request.body == b"wait" {
            while !request.abandoned() {
                std::thread::sleep(Duration::from_millis(5));
            }
            return rpc_server::Reply::answer("too late");
        }
        let left = request
            .deadline()
            .map(|d| d.saturating_duration_since(Instant::now()));
        rpc_server::Reply::answer(left.map_or("none".into(), |d| d.as_millis().to_string()))
    });
    let server = TestServer::serving(options, handler);
    let mut admin = Admin::connect().expect("admin connects");
    admin
        .wait_for_consumers(queue.name(), 1)
        .expect("server consumes");
    let caller = |timeout: Duration| {
        rpc_client::RpcClient::connect(&rpc_client::ClientOptions {
            brokers: vec![testing::broker()],
            queue: queue.name().to_string(),
            timeout,
            ..rpc_client::ClientOptions::default()
        })
        .expect("client connects")
    };
    let reply = caller(Duration::from_secs(5))
        .call(&rpc_client::RpcRequest::new("left?"))
        .expect("answered");
    let left: u64 = String::from_utf8_lossy(&reply.body)
        .parse()
        .expect("ms left");
    assert!((4_000..=5_000).contains(&left), "{left}");
    let gone = caller(Duration::from_secs(1)).call(&rpc_client::RpcRequest::new("wait"));
    assert!(matches!(gone, Err(Error::Timeout { .. })), "{gone:?}");
    // Nothing was sent for it: the server counts it abandoned once the handler returns.
    let stats = server.stop();
    assert_eq!((stats.answered, stats.abandoned), (1, 1), "{stats:?}");
}
