//! Nothing a command starts outlives its request or its server: a second signal, SIGKILL of the
//! server, children that leave the command's process group. Each test marks the `sleep`
//! processes its commands start and looks for them in `/proc`.

use super::{logs, text, Served};
use crate::common::marker;
use rpc_client::testing;
use rpc_client::RpcRequest;
use std::ops::ControlFlow;
use std::process::Command;
use std::time::{Duration, Instant};

/// The `sleep` processes of this host with `marker` in their arguments (the tests below run
/// `sleep 360N.<marker>`), as "PID: ARGS".
fn marked(marker: &str) -> Vec<String> {
    crate::common::marked(marker, |_, args| {
        args.first()
            .is_some_and(|program| program.ends_with("sleep"))
    })
}

/// Waits up to `within` until `count` processes carry `marker`; panics with `shown` if not.
fn await_marked(marker: &str, count: usize, within: Duration, shown: impl Fn() -> String) {
    testing::poll_until(
        &format!("{count} processes marked {marker}"),
        within,
        Duration::from_millis(10),
        || Ok(marked(marker).len() == count),
    )
    .unwrap_or_else(|e| {
        let left = marked(marker);
        if count == 0 {
            // Not left for the next runs to find.
            for line in &left {
                let pid = line.split(':').next().unwrap_or_default();
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        panic!("{e}: {left:?}\n{}", shown())
    });
}

/// A server whose command runs the request body as a shell script.
const SCRIPT_SERVER: [&str; 4] = ["--", "sh", "-c", "eval \"$(cat)\""];

/// Calls with `script` as body, `count` at once, in a thread (they are not expected to be
/// answered: the test stops the server under them).
fn calls_in_flight(served: &Served, script: &str, count: usize) -> std::thread::JoinHandle<()> {
    let mut client = served.client(Duration::from_secs(5));
    let requests = vec![RpcRequest::new(script.to_string()); count];
    std::thread::spawn(move || {
        let _ = client.call_many(&requests, count, |_, _| ControlFlow::Continue(()));
    })
}

#[test]
fn a_second_signal_ends_the_commands_in_hand_and_all_they_started() {
    let mark = marker();
    let served = Served::start(
        &logs(),
        "cmd-second-signal",
        &[&["--workers", "2"][..], &SCRIPT_SERVER].concat(),
    );
    // Each command leaves a child in its group and one in a session of its own.
    let script = format!("setsid sleep 3608.{mark} & sleep 3609.{mark}");
    let caller = calls_in_flight(&served, &script, 2);
    let shown = || served.server.shown();
    await_marked(&mark, 4, Duration::from_secs(10), shown);
    let mut server = served.server;
    server.sigterm();
    // The first signal waits for the requests in hand (30 s of exec timeout) ...
    testing::poll_until(
        "the clean stop to begin",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || Ok(server.log_count("stopping: finishing 2 request(s)") == 1),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", server.shown()));
    // ... the second ends them, and all they started, before the server exits.
    server.sigterm();
    let (status, shown) = server.finish(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "{shown}");
    await_marked(&mark, 0, Duration::from_secs(2), || shown.clone());
    caller.join().expect("caller");
    drop(served.queue);
}

#[test]
fn a_server_killed_by_sigkill_leaves_no_command_running() {
    let mark = marker();
    for workers in ["1", "2"] {
        let served = Served::start(
            &logs(),
            &format!("cmd-sigkill-{workers}"),
            &[
                &["--workers", workers, "--prefetch", "2"][..],
                &SCRIPT_SERVER,
            ]
            .concat(),
        );
        // A child in the command's group, and the command itself.
        let script = format!("sleep 3607.{mark} & exec sleep 3608.{mark}");
        let caller = calls_in_flight(&served, &script, 2);
        let shown = || served.server.shown();
        let running = if workers == "1" { 2 } else { 4 };
        await_marked(&mark, running, Duration::from_secs(10), shown);
        let mut server = served.server;
        server.sigkill();
        let status = server.wait_exit(Duration::from_secs(5));
        assert!(status.is_some(), "{}", server.shown());
        // Its guardian process kills the commands' groups, then says so.
        await_marked(&mark, 0, Duration::from_secs(2), || server.shown());
        let said = testing::wait_until("the guardian's line", Duration::from_secs(2), || {
            Ok(server.log_text().contains("the server is gone; killed its"))
        });
        assert!(said.is_ok(), "{}", server.log_text());
        caller.join().expect("caller");
        drop(served.queue);
    }
}

#[test]
fn a_server_killed_by_sigkill_leaves_nothing_its_commands_started() {
    let mark = marker();
    let served = Served::start(&logs(), "cmd-sigkill-setsid", &SCRIPT_SERVER);
    // Out of the command's group while its request is in hand: by `setsid` (the command's
    // child), by a double fork (the server's child, its subreaper's); the command hangs.
    let script =
        format!("setsid sleep 3610.{mark} & (setsid sleep 3611.{mark} &); exec sleep 3612.{mark}");
    let caller = calls_in_flight(&served, &script, 1);
    await_marked(&mark, 3, Duration::from_secs(10), || served.server.shown());
    let mut server = served.server;
    server.sigkill();
    assert!(
        server.wait_exit(Duration::from_secs(5)).is_some(),
        "{}",
        server.shown()
    );
    // The guardian finds them by the server's mark in their environment.
    await_marked(&mark, 0, Duration::from_secs(2), || server.shown());
    caller.join().expect("caller");
    drop(served.queue);
}

#[test]
fn a_command_is_answered_when_it_exits_and_what_left_its_group_is_ended() {
    let mark = marker();
    let served = Served::start(
        &logs(),
        "cmd-setsid",
        &[&["--exec-timeout", "20"][..], &SCRIPT_SERVER].concat(),
    );
    let cases = [
        // The case: a child in a session of its own holds stdout open.
        (
            format!("setsid sleep 3602.{mark} & echo started"),
            "started\n",
        ),
        // Away from the pipes, with a child of its own in its group.
        (
            format!(
                "setsid sh -c 'sleep 3603.{mark} & exec sleep 3604.{mark}' \
                 </dev/null >/dev/null 2>&1 & echo quiet"
            ),
            "quiet\n",
        ),
        // A double fork, and a grandchild in yet another session.
        (
            format!(
                "(setsid sh -c 'setsid sleep 3605.{mark} & sleep 3606.{mark}' \
                 </dev/null >/dev/null 2>&1 &); echo forked"
            ),
            "forked\n",
        ),
    ];
    for (script, expected) in cases {
        let started = Instant::now();
        let reply = served.call(RpcRequest::new(script.clone()));
        let took = started.elapsed();
        let shown = served.server.shown();
        let reply = reply.unwrap_or_else(|e| panic!("{script}: {e}\n{shown}"));
        assert_eq!(text(&reply), expected, "{script}\n{shown}");
        assert!(
            took < Duration::from_secs(3),
            "{script}: answered after {took:?}\n{shown}"
        );
        await_marked(&mark, 0, Duration::from_secs(1), || {
            format!("{script}\n{}", served.server.shown())
        });
    }
    let shown = served.stop();
    assert!(
        shown.contains("left running by commands outside their group"),
        "{shown}"
    );
}
