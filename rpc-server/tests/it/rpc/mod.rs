//! Behaviour of rpc-server against the real broker: servers run in this process
//! (`rpc_server::run` or `serve` with a Rust handler, on a thread), called through the
//! rpc-client library and raw AMQP. Every test uses its own uuid-named queue and deletes it.
//!
//! - [`calls`]: Fibonacci answers, right and to the right caller;
//! - [`requests`]: requests published by hand: malformed, direct reply-to, deadlines, clocks;
//! - [`broker`]: queues as declared, lost connections, dead brokers, refused replies;
//! - [`handlers`]: Rust handlers: workers, panics;
//! - [`trace`]: trace context.

mod broker;
mod calls;
mod handlers;
mod requests;
mod trace;

use crossbeam_channel::Sender;
use num_bigint::BigUint;
use rpc_client::testing::{self, Admin};
use rpc_client::{ClientOptions, FibonacciRpcClient};
use rpc_server::{Handler, Reply, Request, ServerOptions, Stats};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

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

/// A handler that counts the requests it starts in `started`, takes `pause`, then answers
/// fib(n) for the body n ([`fib_of_body`]; the Fibonacci client checks its answers).
fn slow_fib(pause: Duration, started: Arc<AtomicUsize>) -> Arc<dyn Handler> {
    Arc::new(move |request: &Request| {
        started.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(pause);
        fib_of_body(request)
    })
}

/// fib(n) by [`fib_by_addition`] for a request body n, as a Rust handler answers it.
fn fib_of_body(request: &Request) -> Reply {
    match std::str::from_utf8(request.body).map(str::parse::<u64>) {
        Ok(Ok(n)) => Reply::answer(fib_by_addition(n)),
        _ => Reply::refuse(rpc_client::wire::ErrorCode::BadRequest, "not a number"),
    }
}
