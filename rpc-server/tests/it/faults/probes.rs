//! 11. The `--metrics-addr` endpoint under broker faults (`/readyz`, `/metrics`).
//!    - While consuming, `/readyz` is 200 and the answered counter moves by exactly the calls
//!      made.
//!    - A scraper holding every connection the endpoint allows, sending nothing: a scrape
//!      is still answered, within a second (the oldest idle connection is closed to make
//!      room), calls are answered, scrapes work again once they are gone.
//!    - A memory alarm: a scrape answers within 1 s, and `/readyz` is 503 once the broker
//!      blocks the server's publishes; 200 again once the alarm ends.
//!    - The broker application stopped (`stop_app`): `/readyz` is 503 within two heartbeats,
//!      `/healthz` stays 200 (the server is reconnecting, not dead); after `start_app`
//!      `/readyz` is 200 again and `rpc_server_reconnects_total` counted the loss.

use super::{client_options, logs, Def, Scenario};
use crate::common::broker::{BrokerApp, Ctl, MemoryAlarm};
use crate::common::http::{free_port, get, sample};
use crate::common::load::{Call, Outcome, GRACE};
use crate::common::server::ServerProc;
use amiquip::{AmqpValue, FieldTable, QueueDeclareOptions};
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::{wire, FibonacciRpcClient};
use rpc_server::http::MAX_CONNECTIONS;
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

pub const SCENARIO: Def = Def {
    number: "11",
    name: "metrics and probes",
    breaks_broker: true,
    run,
};

/// The server's heartbeat here: a lost broker is noticed within two of these.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// Each GET's bound.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the held request waits before the broker moves it into the request queue: the
/// alarm must be raised by then (`rabbitmqctl` took 4.7 s on a loaded machine).
const HOLD_MS: i32 = 10_000;
const ANSWERED: &str = "rpc_server_requests_total{outcome=\"answered\",code=\"\"}";

/// The server under test: its `--metrics-addr` endpoint and its process.
struct Probed {
    addr: SocketAddr,
    server: ServerProc,
}

impl Probed {
    /// The status of `GET path`.
    fn status(&self, path: &str) -> Result<u16, String> {
        get(self.addr, path, HTTP_TIMEOUT).map(|(status, _)| status)
    }

    /// The body of `GET /metrics`; panics if there is none.
    fn scrape(&self) -> String {
        get(self.addr, "/metrics", HTTP_TIMEOUT)
            .map(|(_, body)| body)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

fn run(sc: &mut Scenario) {
    let queue = QueueGuard::new("fault-probes");
    let hold = QueueGuard::new("fault-probes-hold");
    let replies = QueueGuard::new("fault-probes-replies");
    let mut probed = start_server(queue.name());
    sc.check(probed.status("/readyz") == Ok(200), || {
        format!("/readyz while consuming: {:?}", probed.status("/readyz"))
    });
    let mut client = counted_calls(sc, &probed, queue.name());
    hostile_scraper(sc, &probed, &mut client);
    let _ = client.close();
    memory_alarm(sc, &probed, queue.name(), &hold, &replies);
    broker_restart(sc, &probed);
    let stopped = probed.server.stop(Duration::from_secs(10));
    sc.check(stopped.is_ok(), || stopped.err().unwrap_or_default());
}

/// The server with `--metrics-addr` on a free port, once it consumes `queue`.
fn start_server(queue: &str) -> Probed {
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let addr: SocketAddr = metrics_addr.parse().expect("an address");
    let heartbeat = HEARTBEAT.as_secs().to_string();
    let server = ServerProc::on_broker(
        &logs(),
        "probes",
        queue,
        &testing::broker(),
        &[
            "--metrics-addr",
            &metrics_addr,
            "--heartbeat",
            &heartbeat,
            "--max-backoff",
            "1",
        ],
    );
    testing::wait_for_consumers(&[testing::broker()], queue, 1, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail(10)));
    Probed { addr, server }
}

/// One call of fib(n), recorded right or wrong.
fn call(sc: &mut Scenario, client: &mut FibonacciRpcClient, n: u64) {
    let started = Instant::now();
    let result = client.call(n);
    let right = result.as_deref().ok() == Some(crate::common::expected(n).as_str());
    sc.record(&Call::new(
        n,
        if right {
            Outcome::Right
        } else {
            Outcome::Wrong
        },
        format!("{result:?}"),
        started,
        Duration::from_secs(10) + GRACE,
    ));
}

/// Counters move by exactly the calls made (by the client returned, connected here).
fn counted_calls(sc: &mut Scenario, probed: &Probed, queue: &str) -> FibonacciRpcClient {
    let before = sample(&probed.scrape(), ANSWERED).unwrap_or(-1.0);
    let mut client = FibonacciRpcClient::connect(&client_options(queue, Duration::from_secs(10)))
        .expect("connect");
    const CALLS: u64 = 5;
    for n in 0..CALLS {
        call(sc, &mut client, n + 20);
    }
    let after = sample(&probed.scrape(), ANSWERED).unwrap_or(-1.0);
    sc.check(after - before == CALLS as f64, || {
        format!("answered went from {before} to {after} for {CALLS} calls")
    });
    client
}

/// A hostile scraper holding every connection it may have, sending nothing: a scrape is
/// still answered within a second, calls go on, and a scrape works after they are gone.
fn hostile_scraper(sc: &mut Scenario, probed: &Probed, client: &mut FibonacciRpcClient) {
    let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(probed.addr).expect("connect to the endpoint"))
        .collect();
    let started = Instant::now();
    let scraped = get(probed.addr, "/metrics", Duration::from_secs(1));
    sc.check(matches!(scraped, Ok((200, _))), || {
        format!(
            "a scrape with every slot held by idle connections: {scraped:?} after {:?}",
            started.elapsed()
        )
    });
    call(sc, client, 30);
    drop(idle);
    let back = testing::wait_until(
        "a scrape after the idle connections closed",
        HTTP_TIMEOUT,
        || Ok(probed.status("/metrics") == Ok(200)),
    );
    sc.check(back.is_ok(), || {
        back.as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default()
    });
}

/// A request held in `hold` (a queue with a TTL), dead-lettered by the broker into `queue`
/// after [`HOLD_MS`], with its reply to `replies`. The admin connection that did it is returned.
fn hold_request(queue: &str, hold: &QueueGuard, replies: &QueueGuard) -> Admin {
    let admin = Admin::connect().expect("admin");
    admin
        .declare(replies.name(), false)
        .expect("declare the reply queue");
    let mut arguments = FieldTable::new();
    arguments.insert("x-message-ttl".into(), AmqpValue::LongInt(HOLD_MS));
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AmqpValue::LongString(String::new()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AmqpValue::LongString(queue.to_string()),
    );
    admin
        .channel()
        .queue_declare(
            hold.name(),
            QueueDeclareOptions {
                durable: true,
                arguments,
                ..QueueDeclareOptions::default()
            },
        )
        .expect("declare the holding queue");
    admin
        .publish(
            hold.name(),
            b"30",
            wire::request_properties(replies.name(), "held"),
        )
        .expect("publish the held request");
    admin
}

/// A memory alarm: scrapes stay fast. The broker blocks a connection (and tells it so) only
/// when it publishes: a request held in a queue with a TTL, dead-lettered into the request
/// queue by the broker itself during the alarm, makes the server reply then.
fn memory_alarm(
    sc: &mut Scenario,
    probed: &Probed,
    queue: &str,
    hold: &QueueGuard,
    replies: &QueueGuard,
) {
    let admin = hold_request(queue, hold, replies);
    let held_at = Instant::now();
    let alarm = MemoryAlarm::raise(Ctl::from_env()).expect("raise the memory alarm");
    let raised = held_at.elapsed();
    let started = Instant::now();
    let scraped = get(probed.addr, "/metrics", HTTP_TIMEOUT);
    let took = started.elapsed();
    sc.check(scraped.is_ok() && took <= Duration::from_secs(1), || {
        format!(
            "a scrape during the alarm: {:?} after {took:?}",
            scraped.as_ref().map(|r| r.0)
        )
    });
    let blocked = testing::wait_until(
        "/readyz 503 once the server is blocked",
        Duration::from_secs(10),
        || Ok(probed.status("/readyz") == Ok(503)),
    );
    sc.check(raised < Duration::from_millis(HOLD_MS as u64), || {
        format!("the alarm took {raised:?} to raise: the held request came before it")
    });
    sc.check(blocked.is_ok(), || {
        format!(
            "{}\n{}",
            blocked
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default(),
            probed.server.log_tail(5)
        )
    });
    let blocked_scrape = probed.scrape();
    let gauge = sample(&blocked_scrape, "rpc_server_broker_blocking_publishers");
    sc.check(gauge == Some(1.0), || {
        format!("rpc_server_broker_blocking_publishers {gauge:?} while blocked")
    });
    sc.note(format!(
        "memory alarm: a scrape took {:.3}s; /readyz {} once the server was blocked",
        took.as_secs_f64(),
        if blocked.is_ok() { "503" } else { "NOT 503" }
    ));
    drop(alarm);
    let unblocked = testing::wait_until(
        "/readyz 200 after the alarm",
        Duration::from_secs(10),
        || Ok(probed.status("/readyz") == Ok(200)),
    );
    sc.check(unblocked.is_ok(), || {
        unblocked
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default()
    });
    drop(admin);
}

/// The broker application stopped and started again.
fn broker_restart(sc: &mut Scenario, probed: &Probed) {
    let mut app = BrokerApp::new(Ctl::from_env(), testing::broker());
    let stopping = Instant::now();
    let stopper = thread::spawn(move || {
        let stopped = app.stop();
        (app, stopped)
    });
    let not_ready = testing::wait_until("/readyz 503 after stop_app", 2 * HEARTBEAT, || {
        Ok(probed.status("/readyz") == Ok(503))
    });
    let noticed = stopping.elapsed();
    sc.check(not_ready.is_ok(), || {
        format!(
            "{}\n{}",
            not_ready
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default(),
            probed.server.log_tail(5)
        )
    });
    let (mut app, stopped) = stopper.join().expect("the stop_app thread");
    stopped.unwrap_or_else(|e| panic!("{e}"));
    sc.check(probed.status("/healthz") == Ok(200), || {
        format!(
            "/healthz while reconnecting: {:?}",
            probed.status("/healthz")
        )
    });
    app.start().unwrap_or_else(|e| panic!("{e}"));
    let restarted = Instant::now();
    let ready = testing::wait_until(
        "/readyz 200 after start_app",
        Duration::from_secs(30),
        || Ok(probed.status("/readyz") == Ok(200)),
    );
    sc.check(ready.is_ok(), || {
        format!(
            "{}\n{}",
            ready
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default(),
            probed.server.log_tail(5)
        )
    });
    let reconnects = sample(&probed.scrape(), "rpc_server_reconnects_total").unwrap_or(0.0);
    sc.check(reconnects >= 1.0, || {
        format!("rpc_server_reconnects_total {reconnects}")
    });
    sc.note(format!(
        "stop_app: /readyz 503 {:.2}s after it began (bound {}s); 200 again {:.2}s after \
         start_app; {reconnects} reconnect(s) counted",
        noticed.as_secs_f64(),
        (2 * HEARTBEAT).as_secs(),
        restarted.elapsed().as_secs_f64()
    ));
}
