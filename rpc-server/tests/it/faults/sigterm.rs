//! 2. SIGTERM one of two servers under load: it finishes the request in hand and exits 0
//!    within a few seconds; every call is answered right.

use super::{slow_stream, start_servers, stop_servers, Def, Scenario};
use rpc_client::testing::QueueGuard;
use std::time::Duration;

pub const SCENARIO: Def = Def {
    number: "2",
    name: "SIGTERM one of two servers",
    breaks_broker: false,
    run,
};

fn run(sc: &mut Scenario) {
    let queue = QueueGuard::new("fault-sigterm");
    let mut servers = start_servers(queue.name(), "term", 2);
    let stream = slow_stream(queue.name(), 4, Duration::from_millis(50));
    stream.wait("both servers to answer", Duration::from_secs(30), |s| {
        s.answers_by("term-a") >= 3 && s.answers_by("term-b") >= 3
    });
    let at_term = stream.answers();
    let stopped = servers[0].stop(Duration::from_secs(5));
    match &stopped {
        Ok(took) => sc.note(format!(
            "term-a exited 0 {:.2}s after SIGTERM, after {at_term} answers",
            took.as_secs_f64()
        )),
        Err(err) => sc.check(false, || err.clone()),
    }
    stream.wait("30 answers after the stop", Duration::from_secs(60), |s| {
        s.answers() >= at_term + 30
    });
    let calls = stream.finish().calls;
    sc.record_all(&calls);
    // Every request term-a started, it answered: it abandoned nothing in hand.
    let started_by_a = servers[0].log_count(" [.] fib(");
    let answered_by_a = calls
        .iter()
        .filter(|c| c.server.as_deref() == Some("term-a"))
        .count();
    sc.check(started_by_a == answered_by_a, || {
        format!("term-a started {started_by_a} requests but answered {answered_by_a}")
    });
    sc.check(servers[0].log_count("shutting down") == 1, || {
        format!(
            "term-a did not log its shutdown\n{}",
            servers[0].log_tail(10)
        )
    });
    sc.check_all_right();
    stop_servers(sc, &mut servers[1..]);
}
