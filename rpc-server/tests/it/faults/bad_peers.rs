//! 6. The client against a closed port, a port that never speaks AMQP, wrong credentials, a
//!    missing queue and a queue without consumers: each fails quickly with the right error.

use super::{client_options, Def, Scenario, CALL_TIMEOUT, CONNECT_TIMEOUT};
use crate::common::caller::Caller;
use crate::common::load::{Call, Outcome, GRACE};
use rpc_client::exit_code;
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::{BrokerOptions, ClientOptions, Error, FibonacciRpcClient};
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

pub const SCENARIO: Def = Def {
    number: "6",
    name: "client against bad peers",
    breaks_broker: false,
    run,
};

fn run(sc: &mut Scenario) {
    // A password that no message may show.
    let broker = BrokerOptions {
        connect_timeout: CONNECT_TIMEOUT,
        password: "fault-run-secret-4711".into(),
        ..testing::broker()
    };
    closed_port(sc, &broker);
    silent_port(sc, &broker);
    // Wrong credentials. RabbitMQ keeps the socket open for 3 s after refusing a login (to
    // slow down guessing) unless the client announces `authentication_failure_close`, which
    // amiquip does not: the client notices when the broker closes or its handshake timeout
    // ends, whichever comes first.
    expect_connect_error(
        sc,
        "wrong password",
        broker,
        CONNECT_TIMEOUT.min(Duration::from_secs(3)) + Duration::from_secs(1),
        "login refused",
    );

    no_queue(sc);
    no_consumer(sc);
}

/// Connecting to `broker` fails with a connection error (exit 3) within `within`, mentioning
/// `needle` and not the password.
fn expect_connect_error(
    sc: &mut Scenario,
    what: &str,
    broker: BrokerOptions,
    within: Duration,
    needle: &str,
) {
    let connect_budget = 2 * CONNECT_TIMEOUT + GRACE;
    let options = ClientOptions {
        brokers: vec![broker],
        ..client_options("unused", CALL_TIMEOUT)
    };
    let started = Instant::now();
    let result = FibonacciRpcClient::connect(&options);
    let elapsed = started.elapsed();
    let (outcome, detail) = match result {
        Err(err @ Error::Connect { .. }) => {
            let text = err.to_string();
            sc.check(err.exit_code() == exit_code::CONNECTION, || {
                format!("{what}: exit code {}", err.exit_code())
            });
            sc.check(text.contains(needle), || {
                format!("{what}: {text:?} does not mention {needle:?}")
            });
            sc.check(!text.contains(&options.brokers[0].password), || {
                format!("{what}: password in {text:?}")
            });
            sc.check(elapsed < within, || {
                format!("{what}: took {elapsed:?}, want under {within:?}")
            });
            sc.note(format!("{what}: {text} ({:.2}s)", elapsed.as_secs_f64()));
            (Outcome::Error, text)
        }
        Err(other) => (Outcome::Wrong, format!("{what}: {other:?}")),
        Ok(_) => (Outcome::Wrong, format!("{what}: connected")),
    };
    sc.check(outcome == Outcome::Error, || detail.clone());
    sc.record(&Call::new(0, outcome, detail, started, connect_budget));
}

/// A closed port: connection refused.
fn closed_port(sc: &mut Scenario, broker: &BrokerOptions) {
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local addr").port()
    };
    expect_connect_error(
        sc,
        "closed port",
        BrokerOptions {
            host: "127.0.0.1".into(),
            port: closed_port,
            ..broker.clone()
        },
        Duration::from_secs(1),
        "refused",
    );
}

/// A port that accepts connections but never speaks AMQP.
fn silent_port(sc: &mut Scenario, broker: &BrokerOptions) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = listener.local_addr().expect("local addr").port();
    let (done, wait_done) = crossbeam_channel::bounded::<()>(1);
    let silent = thread::spawn(move || {
        let accepted = listener.accept();
        let _ = wait_done.recv_timeout(Duration::from_secs(30));
        drop(accepted);
    });
    expect_connect_error(
        sc,
        "silent port",
        BrokerOptions {
            host: "127.0.0.1".into(),
            port: silent_port,
            ..broker.clone()
        },
        CONNECT_TIMEOUT + Duration::from_millis(1500),
        "no AMQP handshake",
    );
    let _ = done.send(());
    silent.join().expect("silent listener");
}

/// No server and no queue: NoRoute at once, well under the 15 s timeout.
fn no_queue(sc: &mut Scenario) {
    let missing = testing::unique_name("fault-never-declared");
    let mut caller = Caller::connected(client_options(&missing, CALL_TIMEOUT));
    let started = Instant::now();
    let result = caller.client().expect("connected").call_reply(30);
    let elapsed = started.elapsed();
    let outcome = match &result {
        Err(err @ Error::NoRoute { .. }) => {
            sc.check(err.exit_code() == exit_code::NO_ROUTE, || err.to_string());
            sc.check(elapsed < Duration::from_secs(1), || {
                format!("NoRoute took {elapsed:?}")
            });
            sc.note(format!("no queue: {err} ({:.3}s)", elapsed.as_secs_f64()));
            Outcome::Error
        }
        other => {
            sc.check(false, || format!("no queue: {other:?}"));
            Outcome::Wrong
        }
    };
    sc.record(&Call::new(
        30,
        outcome,
        format!("{result:?}"),
        started,
        CALL_TIMEOUT + GRACE,
    ));
}

/// A queue without consumers: Timeout, saying so.
fn no_consumer(sc: &mut Scenario) {
    let queue = QueueGuard::new("fault-no-consumer");
    Admin::connect()
        .expect("admin")
        .declare(queue.name(), false)
        .expect("declare");
    let timeout = Duration::from_secs(1);
    let mut caller = Caller::connected(client_options(queue.name(), timeout));
    let started = Instant::now();
    let result = caller.client().expect("connected").call_reply(30);
    let elapsed = started.elapsed();
    let outcome = match &result {
        Err(err @ Error::Timeout { consumers, .. }) => {
            let text = err.to_string();
            sc.check(*consumers == Some(0), || format!("consumers {consumers:?}"));
            sc.check(text.contains("has no consumer"), || text.clone());
            sc.check(err.exit_code() == exit_code::TIMEOUT, || text.clone());
            sc.check(elapsed >= timeout && elapsed < timeout + GRACE, || {
                format!("timeout after {elapsed:?}")
            });
            sc.note(format!(
                "no consumer: {text} ({:.2}s)",
                elapsed.as_secs_f64()
            ));
            Outcome::Error
        }
        other => {
            sc.check(false, || format!("no consumer: {other:?}"));
            Outcome::Wrong
        }
    };
    sc.record(&Call::new(
        30,
        outcome,
        format!("{result:?}"),
        started,
        timeout + GRACE,
    ));
}
