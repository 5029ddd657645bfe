//! What a command's run makes of a request: its output as the reply, its failure, a hang or a
//! flood within the limits, its environment, two at once with `--workers 2`.

use super::{logs, refusal, text, Served, EXIT_WITHIN};
use crate::common::server::ServerProc;
use rpc_client::testing;
use rpc_client::RpcRequest;
use rpc_client::TraceContext;
use std::ops::ControlFlow;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_tr_server_uppercases_with_content_type_and_server_name() {
    let served = Served::start(&logs(), "cmd-upper", &["--", "tr", "a-z", "A-Z"]);
    let reply = served.call(RpcRequest::new("hello").with_content_type("text/plain"));
    let shown = served.server.shown();
    let reply = reply.unwrap_or_else(|e| panic!("{e}\n{shown}"));
    assert_eq!(reply.body, b"HELLO", "{shown}");
    assert_eq!(reply.content_type(), Some("text/plain"), "{shown}");
    assert_eq!(reply.server.as_deref(), Some("cmd-upper"), "{shown}");
    // Bytes that are not UTF-8 go through untouched; an empty body is a request too.
    let reply = served.call(RpcRequest::new(&b"\xff\xfeabc\x00"[..]));
    assert_eq!(reply.expect("binary body").body, b"\xff\xfeABC\x00");
    assert!(served
        .call(RpcRequest::new(""))
        .expect("empty")
        .body
        .is_empty());
    let shown = served.stop();
    assert!(shown.contains(" [.] tr: exited with status 0"), "{shown}");
}

#[test]
fn failing_commands_get_exec_failed_with_status_and_last_stderr_line() {
    let script = "echo 'first complaint' >&2; printf 'last words\\033[2J\\n' >&2; exit 3";
    let served = Served::start(&logs(), "cmd-fail", &["--", "sh", "-c", script]);
    let shown = served.server.shown();
    let (code, message) = refusal(served.call(RpcRequest::new("x")), &shown);
    assert_eq!(code, "exec-failed");
    assert_eq!(message, "the command exited with status 3: last words?[2J");
    let shown = served.stop();
    assert!(
        shown.contains("first complaint"),
        "stderr is logged\n{shown}"
    );
    assert!(!shown.contains('\u{1b}'), "escapes reach the log\n{shown}");
}

#[test]
fn hanging_commands_are_killed_with_their_children_at_the_exec_timeout() {
    let pid_file = logs().join(format!("hang-{}.pid", std::process::id()));
    let _ = std::fs::remove_file(&pid_file);
    let pid_path = pid_file.display().to_string();
    // Writes its pid (the group's id), leaves a child behind, then hangs for body "hang".
    let script = format!(
        "echo $$ > '{pid_path}'; sleep 60 & read -r line; \
         if [ \"$line\" = hang ]; then sleep 60; fi; echo \"$line\""
    );
    let served = Served::start(
        &logs(),
        "cmd-hang",
        &["--exec-timeout", "1", "--", "sh", "-c", &script],
    );
    let shown = served.server.shown();
    let started = Instant::now();
    let (code, message) = refusal(served.call(RpcRequest::new("hang\n")), &shown);
    let took = started.elapsed();
    assert_eq!(code, "exec-timeout", "{message}");
    assert!(message.contains("within 1s"), "{message}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    // Killed processes are reaped by init a moment later: poll, with a deadline.
    let group_gone = |what: &str| {
        let group = std::fs::read_to_string(&pid_file).expect("the command wrote its pid");
        let group = format!("-{}", group.trim());
        testing::poll_until(
            what,
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                let alive = Command::new("kill")
                    .args(["-0", "--", &group])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success());
                Ok(!alive)
            },
        )
        .unwrap_or_else(|e| panic!("{e}: process group {group} lives on"));
    };
    group_gone("the hanging command's group to go");
    // The server goes on, and a quick run leaves no child behind either.
    let reply = served
        .call(RpcRequest::new("quick\n"))
        .expect("next request");
    assert_eq!(text(&reply), "quick\n");
    group_gone("a finished command's background child to go");
    served.stop();
    let _ = std::fs::remove_file(&pid_file);
}

#[test]
fn floods_and_unread_bodies_neither_deadlock_nor_exceed_the_limits() {
    let flood = Served::start(
        &logs(),
        "cmd-flood",
        &["--max-reply-bytes", "100000", "--", "yes"],
    );
    let shown = flood.server.shown();
    let started = Instant::now();
    let (code, message) = refusal(flood.call(RpcRequest::new("")), &shown);
    assert_eq!(code, "too-large", "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    flood.stop();

    // Never reads its stdin: 4 MiB (more than any pipe holds) is no problem.
    let deaf = Served::start(
        &logs(),
        "cmd-deaf",
        &["--max-request-bytes", "5000000", "--", "echo", "done"],
    );
    let reply = deaf.call(RpcRequest::new(vec![b'x'; 4 << 20]));
    let shown = deaf.server.shown();
    assert_eq!(
        text(&reply.unwrap_or_else(|e| panic!("{e}\n{shown}"))),
        "done\n"
    );
    // Over --max-request-bytes: refused without running the command.
    let (code, message) = refusal(deaf.call(RpcRequest::new(vec![b'x'; 5_000_001])), &shown);
    assert_eq!(code, "too-large", "{message}");
    assert!(message.contains("5000001 bytes"), "{message}");
    deaf.stop();

    // A large body through, both ways.
    let cat = Served::start(&logs(), "cmd-cat", &["--", "cat"]);
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let reply = cat.call(RpcRequest::new(body.clone())).expect("cat");
    assert!(reply.body == body, "cat changed a 3 MB body");
    cat.stop();
}

#[test]
fn the_command_sees_the_request_in_its_environment_but_not_the_password() {
    let script =
        "echo \"$RPC_CORRELATION_ID|$RPC_CONTENT_TYPE|$TRACEPARENT|${AMQP_PASSWORD-unset}\"";
    let served = Served::start(
        &logs(),
        "cmd-env",
        &[
            "--reply-content-type",
            "application/x-test",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = served
        .call(
            RpcRequest::new("")
                .with_content_type("text/plain")
                .with_parent(TraceContext::parse(Some(parent), None)),
        )
        .expect("call");
    let id = reply.properties.correlation_id().expect("correlation id");
    // The command's parent is the server's span: the reply's traceparent, in the caller's
    // trace.
    let traceparent = reply.header("traceparent").expect("reply traceparent");
    assert!(traceparent.starts_with(&parent[..36]), "{traceparent}");
    assert_eq!(
        text(&reply),
        format!("{id}|text/plain|{traceparent}|unset\n")
    );
    assert_eq!(reply.content_type(), Some("application/x-test"));
    served.stop();
}

#[test]
fn two_workers_run_two_slow_requests_at_once_and_sigterm_waits_for_both() {
    let served = Served::start(
        &logs(),
        "cmd-workers",
        &["--workers", "2", "--", "sh", "-c", "sleep 1; cat"],
    );
    let mut client = served.client(Duration::from_secs(20));
    let requests = [RpcRequest::new("a"), RpcRequest::new("b")];
    let started = Instant::now();
    let mut replies = [None, None];
    client
        .call_many(&requests, 2, |index, result| {
            replies[index] = Some(result.map(|reply| text(&reply)));
            ControlFlow::Continue(())
        })
        .expect("calls");
    let took = started.elapsed();
    let shown = served.server.shown();
    assert_eq!(
        replies[0].as_ref().map(|r| r.as_deref().ok()),
        Some(Some("a")),
        "{shown}"
    );
    assert_eq!(
        replies[1].as_ref().map(|r| r.as_deref().ok()),
        Some(Some("b")),
        "{shown}"
    );
    assert!(
        took < Duration::from_millis(1800),
        "two 1-s requests took {took:?}\n{shown}"
    );

    // SIGTERM with both workers busy: both are answered, then the server exits 0.
    let caller = std::thread::spawn(move || {
        let mut answered = Vec::new();
        let sent = client.call_many(&requests, 2, |_, result| {
            answered.push(result.map(|reply| text(&reply)));
            ControlFlow::Continue(())
        });
        (sent, answered)
    });
    let mut server = served.server;
    testing::poll_until(
        "both requests started",
        Duration::from_secs(10),
        Duration::from_millis(10),
        // Two commands and the server's guardian.
        || Ok(server.children() == 3),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", server.shown()));
    server.sigterm();
    let (status, shown) = server.finish(EXIT_WITHIN);
    let (sent, answered) = caller.join().expect("caller");
    sent.expect("calls");
    assert!(status.success(), "{shown}");
    assert_eq!(answered.len(), 2, "{answered:?}\n{shown}");
    assert!(answered.iter().all(Result::is_ok), "{answered:?}\n{shown}");
    assert!(shown.contains("4 answered"), "{shown}");
    drop(served.queue);
}

#[test]
fn a_missing_program_exits_2_at_once() {
    let mut server = ServerProc::spawn_args(
        &logs(),
        "cmd-missing",
        &["--", "no-such-program-for-rpc-server"],
        &[],
    );
    let (status, shown) = server.finish(EXIT_WITHIN);
    assert_eq!(status.code(), Some(2), "{shown}");
    assert!(shown.contains("not found in PATH"), "{shown}");
}
