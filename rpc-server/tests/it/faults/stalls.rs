//! 8. Stalled links: a TCP proxy between the programs and the broker stops forwarding (at a
//!    given AMQP method) without closing the sockets, or passes the broker's bytes one per
//!    second. Every wait ends within its bound:
//!    - a trickled handshake fails within `--connect-timeout` (the whole handshake, not the
//!      silence between bytes);
//!    - a stall at the callback queue's declare fails within `--connect-timeout`;
//!    - a stall mid-call fails within `--timeout` + 1 s (the probe), "connection ... lost",
//!      exit 3, not "no server";
//!    - a stall at the close: `rpc-client 30` prints its result and exits 0 (with a warning)
//!      within `--timeout` + 1 s;
//!    - a server whose link dies notices within two heartbeats and reconnects;
//!    - a server whose link stalls stops within 10 s of SIGTERM.

use super::{client_options, logs, start_servers, stop_servers, Def, Scenario, CONNECT_TIMEOUT};
use crate::common::load::{Call, Outcome, GRACE};
use crate::common::proxy::{method, Mode, Proxy};
use crate::common::server::ServerProc;
use rpc_client::testing::{self, QueueGuard};
use rpc_client::{BrokerOptions, ClientOptions, Error, FibonacciRpcClient};
use rpc_client::{CLOSE_LIMIT, PROBE_LIMIT};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

pub const SCENARIO: Def = Def {
    number: "8",
    name: "stalled and trickled links",
    breaks_broker: true,
    run,
};

/// The callers' timeout in this scenario.
const TIMEOUT: Duration = Duration::from_secs(3);

/// How far past its bound a wait may end (scheduling, the watchdog's wake-up).
const SLACK: Duration = Duration::from_millis(500);

fn upstream() -> SocketAddr {
    let broker = testing::broker();
    (broker.host.as_str(), broker.port)
        .to_socket_addrs()
        .expect("resolve the broker")
        .next()
        .expect("an address of the broker")
}

/// The test broker, reached through `proxy`.
fn via(proxy: &Proxy) -> BrokerOptions {
    BrokerOptions {
        host: "127.0.0.1".into(),
        port: proxy.addr().port(),
        connect_timeout: CONNECT_TIMEOUT,
        ..testing::broker()
    }
}

fn run(sc: &mut Scenario) {
    let queue = QueueGuard::new("fault-stall");
    let mut servers = start_servers(queue.name(), "stall", 1);
    let options = |proxy: &Proxy| ClientOptions {
        brokers: vec![via(proxy)],
        ..client_options(queue.name(), TIMEOUT)
    };

    // A trickled handshake, and a stall at the callback queue's declare.
    for (what, mode, needle) in [
        (
            "trickled handshake",
            Mode::Trickle,
            "no AMQP handshake within",
        ),
        (
            "stall at the callback queue's declare",
            Mode::StallOn(method::QUEUE_DECLARE),
            "callback queue",
        ),
    ] {
        let proxy = Proxy::start(upstream(), mode).expect("proxy");
        let started = Instant::now();
        let result = FibonacciRpcClient::connect(&options(&proxy));
        let call = expect_error(
            sc,
            what,
            result.map(|_| ()),
            needle,
            started,
            CONNECT_TIMEOUT,
        );
        sc.record(&call);
    }

    // A stall mid-call: the request's publish never reaches the broker.
    let proxy = Proxy::start(upstream(), Mode::StallOn(method::BASIC_PUBLISH)).expect("proxy");
    let mut client = FibonacciRpcClient::connect(&options(&proxy)).expect("connect");
    let started = Instant::now();
    let result = client.call(30);
    let call = expect_error(
        sc,
        "stall mid-call",
        result.map(|_| ()),
        "abandoned",
        started,
        TIMEOUT + PROBE_LIMIT,
    );
    sc.record(&call);
    drop(client);
    drop(proxy);

    // A stall at the close: the answered call stays answered, the close ends within its bound
    // (rpc-client then warns and exits 0).
    let proxy = Proxy::start(upstream(), Mode::StallOn(method::CONNECTION_CLOSE)).expect("proxy");
    let mut client = FibonacciRpcClient::connect(&options(&proxy)).expect("connect");
    let started = Instant::now();
    let answer = client.call(30);
    let right = answer.as_deref().ok() == Some("832040");
    sc.record(&Call::new(
        30,
        if right {
            Outcome::Right
        } else {
            Outcome::Wrong
        },
        format!("{answer:?}"),
        started,
        TIMEOUT + PROBE_LIMIT + GRACE,
    ));
    let closing = Instant::now();
    let closed = client.close();
    let took = closing.elapsed();
    sc.check(matches!(closed, Err(Error::Stalled(_))), || {
        format!("stall at close: {closed:?}")
    });
    sc.check(took <= CLOSE_LIMIT + SLACK, || {
        format!("stall at close: the close took {:.2}s", took.as_secs_f64())
    });
    sc.note(format!(
        "stall at close: answered, then the close ended in {:.2}s: {}",
        took.as_secs_f64(),
        closed.map_or_else(|e| e.to_string(), |()| "closed".into())
    ));
    drop(proxy);

    dead_link(sc, queue.name());
    stop_while_stalled(sc, queue.name());
    stop_servers(sc, &mut servers);
}

/// Checks that `result` is a connection error (exit 3) mentioning `needle`, within `bound`;
/// the call, for the table.
fn expect_error(
    sc: &mut Scenario,
    what: &str,
    result: Result<(), Error>,
    needle: &str,
    started: Instant,
    bound: Duration,
) -> Call {
    let elapsed = started.elapsed();
    let (outcome, detail) = match result {
        Err(err) => {
            let text = err.to_string();
            sc.check(err.exit_code() == 3, || {
                format!("{what}: exit {} ({text})", err.exit_code())
            });
            sc.check(text.contains(needle), || {
                format!("{what}: {text:?} lacks {needle:?}")
            });
            sc.check(elapsed <= bound + SLACK, || {
                format!(
                    "{what}: took {:.2}s, bound {:.1}s",
                    elapsed.as_secs_f64(),
                    bound.as_secs_f64()
                )
            });
            sc.note(format!("{what}: {text} ({:.2}s)", elapsed.as_secs_f64()));
            (Outcome::Error, text)
        }
        Ok(()) => (Outcome::Wrong, format!("{what}: succeeded")),
    };
    Call::new(30, outcome, detail, started, bound + GRACE)
}

/// A server through a proxy with 1 s heartbeats: the link stalls, the server notices and
/// reconnects (through the proxy again, forwarding by then).
fn dead_link(sc: &mut Scenario, queue: &str) {
    let proxy = Proxy::start(upstream(), Mode::Forward).expect("proxy");
    let broker = via(&proxy);
    let mut server = ServerProc::on_broker(
        &logs(),
        "stall-heartbeat",
        queue,
        &broker,
        &["--heartbeat", "1"],
    );
    testing::wait_until(
        "stall-heartbeat to consume",
        Duration::from_secs(20),
        || Ok(server.log_count("waiting for RPC requests") == 1),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail(10)));
    proxy.set_mode(Mode::Stall);
    let stalled = Instant::now();
    let noticed = testing::wait_until("the dead link noticed", Duration::from_secs(10), || {
        Ok(server.log_count("reconnecting") >= 1)
    });
    let took = stalled.elapsed();
    proxy.set_mode(Mode::Forward);
    sc.check(noticed.is_ok() && took <= Duration::from_secs(4), || {
        format!(
            "dead link noticed after {:.1}s\n{}",
            took.as_secs_f64(),
            server.log_tail(10)
        )
    });
    let back = testing::wait_until(
        "stall-heartbeat to consume again",
        Duration::from_secs(20),
        || Ok(server.log_count("waiting for RPC requests") >= 2),
    );
    sc.check(back.is_ok(), || {
        format!("no reconnect\n{}", server.log_tail(10))
    });
    sc.note(format!(
        "dead link (heartbeat 1 s) noticed after {:.2}s; consuming again",
        took.as_secs_f64()
    ));
    let stop = server.stop(Duration::from_secs(10));
    sc.check(stop.is_ok(), || stop.err().unwrap_or_default());
}

/// A server whose link stalls gets SIGTERM: it ends within the 10 s stop bound.
fn stop_while_stalled(sc: &mut Scenario, queue: &str) {
    let proxy = Proxy::start(upstream(), Mode::Forward).expect("proxy");
    let mut server = ServerProc::on_broker(&logs(), "stall-stop", queue, &via(&proxy), &[]);
    testing::wait_until("stall-stop to consume", Duration::from_secs(20), || {
        Ok(server.log_count("waiting for RPC requests") == 1)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", server.log_tail(10)));
    proxy.set_mode(Mode::Stall);
    server.sigterm();
    let signalled = Instant::now();
    let status = server.wait_exit(Duration::from_secs(12));
    let took = signalled.elapsed();
    let code = status.and_then(|s| s.code());
    sc.check(
        matches!(code, Some(0) | Some(3)) && took <= Duration::from_secs(10),
        || {
            format!(
                "stall-stop: exit {status:?} {:.1}s after SIGTERM\n{}",
                took.as_secs_f64(),
                server.log_tail(10)
            )
        },
    );
    sc.note(format!(
        "stop while stalled: exit {code:?} {:.2}s after SIGTERM",
        took.as_secs_f64()
    ));
}
