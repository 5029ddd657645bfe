//! 1. SIGKILL one of two servers while 4 callers keep slow calls in flight: its unacked request
//!    goes to the other server, and every call is answered right.

use super::{slow_stream, start_servers, stop_servers, Def, Scenario};
use crate::common::load::{right_answers, Outcome};
use rpc_client::testing::{self, QueueGuard};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

pub const SCENARIO: Def = Def {
    number: "1",
    name: "kill -9 one of two servers",
    breaks_broker: false,
    run,
};

fn run(sc: &mut Scenario) {
    let queue = QueueGuard::new("fault-kill9");
    let mut servers = start_servers(queue.name(), "kill9", 2);
    let stream = slow_stream(queue.name(), 4, Duration::from_millis(50));
    stream.wait("both servers to answer", Duration::from_secs(30), |s| {
        s.answers_by("kill9-a") >= 3 && s.answers_by("kill9-b") >= 3
    });
    servers[0].sigkill();
    let at_kill = stream.answers();
    let killed_at = Instant::now();
    let status = servers[0].wait_exit(Duration::from_secs(5));
    sc.check(status.and_then(|s| s.signal()) == Some(9), || {
        format!("kill9-a did not die of SIGKILL: {status:?}")
    });
    testing::wait_for_consumers(
        &[testing::broker()],
        queue.name(),
        1,
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let by_a_at_kill = stream.answers_by("kill9-a");
    stream.wait("30 answers after the kill", Duration::from_secs(60), |s| {
        s.answers() >= at_kill + 30
    });
    let by_a_after = stream.answers_by("kill9-a");
    let calls = stream.finish().calls;
    sc.record_all(&calls);
    // With 4 callers and 2 servers of prefetch 1, both servers always have a request in hand:
    // the one kill9-a had is redelivered to kill9-b.
    let by_b = calls
        .iter()
        .filter(|c| c.outcome == Outcome::Right && c.server.as_deref() == Some("kill9-b"))
        .count();
    sc.note(format!(
        "killed kill9-a after {at_kill} answers; {} more by kill9-b in {:.1}s; \
         kill9-a answered {} before, {} after the kill",
        right_answers(&calls) - at_kill,
        killed_at.elapsed().as_secs_f64(),
        by_a_at_kill,
        by_a_after - by_a_at_kill
    ));
    sc.check(by_b > 0, || "kill9-b answered nothing".into());
    // Requests kill9-a handled (logged) but never answered: the one in its hands when it died,
    // answered by kill9-b after the broker redelivered it. (0 when the kill fell between two
    // requests, or between a reply and its ack: then kill9-b answers it again, and the client
    // discards that second reply.)
    let started_by_a = servers[0].log_count(" [.] fib(") as u64;
    sc.note(format!(
        "kill9-a had {} request(s) in hand (started, not answered) when it died",
        started_by_a.saturating_sub(by_a_after)
    ));
    sc.check_all_right();
    stop_servers(sc, &mut servers[1..]);
}
