//! `rpc-server -- CMD`: a command run per request, against the real broker, called through the
//! bytes-level client library and the `rpc-client call` binary.
//!
//! Servers are started by the tests' common [`ServerProc`] (with the broker password in their
//! environment, which their commands must not see); their logs are in `target/tmp/command/`
//! and shown on failure.

mod common;

use common::server::ServerProc;
use common::{log_dir, rpc_client_bin};
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::{ClientOptions, Error, RpcClient, RpcReply, RpcRequest};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to exit by itself.
const EXIT_WITHIN: Duration = Duration::from_secs(30);

fn logs() -> PathBuf {
    log_dir("command")
}

/// A command server on its own queue, consuming.
struct Served {
    server: ServerProc,
    queue: QueueGuard,
}

impl Served {
    /// `rpc-server --name NAME ARGS...` on a fresh queue (ARGS end with `-- CMD...`), once it
    /// consumes.
    fn start(name: &str, args: &[&str]) -> Served {
        let queue = QueueGuard::new(name);
        let mut server =
            ServerProc::on_broker(&logs(), name, queue.name(), &testing::broker(), args);
        let mut admin = Admin::connect().expect("admin");
        if let Err(err) = admin.wait_for_consumers(queue.name(), 1) {
            server.sigterm();
            panic!("{err}\n{}", server.finish(EXIT_WITHIN).1);
        }
        Served { server, queue }
    }

    fn client(&self, timeout: Duration) -> RpcClient {
        RpcClient::connect(&ClientOptions {
            brokers: vec![testing::broker()],
            queue: self.queue.name().to_string(),
            timeout,
            ..ClientOptions::default()
        })
        .expect("client connects")
    }

    /// One call with a 20 s timeout.
    fn call(&self, request: RpcRequest) -> Result<RpcReply, Error> {
        self.client(Duration::from_secs(20)).call(&request)
    }

    /// SIGTERM, then the exit status must be 0.
    fn stop(mut self) -> String {
        self.server.sigterm();
        let (status, shown) = self.server.finish(EXIT_WITHIN);
        assert!(status.success(), "{shown}");
        shown
    }
}

fn text(reply: &RpcReply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The error reply's code and message, or a panic saying what came instead.
fn refusal(result: Result<RpcReply, Error>, shown: &str) -> (String, String) {
    match result {
        Err(Error::Server { code, message }) => (code, message),
        other => panic!("expected an error reply, got {other:?}\n{shown}"),
    }
}

#[test]
fn a_tr_server_uppercases_with_content_type_and_server_name() {
    let served = Served::start("cmd-upper", &["--", "tr", "a-z", "A-Z"]);
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
    let served = Served::start("cmd-fail", &["--", "sh", "-c", script]);
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
    let flood = Served::start("cmd-flood", &["--max-reply-bytes", "100000", "--", "yes"]);
    let shown = flood.server.shown();
    let started = Instant::now();
    let (code, message) = refusal(flood.call(RpcRequest::new("")), &shown);
    assert_eq!(code, "too-large", "{message}");
    assert!(started.elapsed() < Duration::from_secs(5));
    flood.stop();

    // Never reads its stdin: 4 MiB (more than any pipe holds) is no problem.
    let deaf = Served::start(
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
    let cat = Served::start("cmd-cat", &["--", "cat"]);
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
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = served
        .call(
            RpcRequest::new("")
                .with_content_type("text/plain")
                .with_header("traceparent", traceparent),
        )
        .expect("call");
    let id = reply
        .properties
        .correlation_id()
        .clone()
        .expect("correlation id");
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
        || Ok(server.children() == 2),
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

/// `rpc-client --queue QUEUE ARGS...` on the test broker, with `stdin`.
fn rpc_client(queue: &str, args: &[&str], stdin: &[u8]) -> Output {
    let broker = testing::broker();
    let mut child = Command::new(rpc_client_bin())
        .args(["--host", &broker.host, "--port", &broker.port.to_string()])
        .args(["--vhost", &broker.vhost, "--user", &broker.user])
        .args(["--queue", queue, "--timeout", "20"])
        .args(args)
        .env("AMQP_PASSWORD", &broker.password)
        .env_remove("AMQP_URI")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rpc-client");
    if let Some(mut input) = child.stdin.take() {
        use std::io::Write;
        input.write_all(stdin).expect("write stdin");
    }
    child.wait_with_output().expect("rpc-client output")
}

#[test]
fn rpc_client_call_against_a_tr_server_by_argument_stdin_and_json() {
    let served = Served::start("cmd-cli", &["--", "tr", "a-z", "A-Z"]);
    let queue = served.queue.name().to_string();
    let shown = served.server.shown();
    let out = rpc_client(&queue, &["call", "hello"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{shown}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\n");

    let out = rpc_client(&queue, &["call", "one", "-", "three"], b"from stdin\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ONE\nFROM STDIN\nTHREE\n"
    );

    let out = rpc_client(&queue, &["call", "--json", "hello"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(json.lines().count(), 1, "{json}");
    for field in [
        "\"body\": \"HELLO\"",
        "\"encoding\": \"utf-8\"",
        "\"server\": \"cmd-cli\"",
        "\"elapsed_ms\": ",
    ] {
        assert!(json.contains(field), "{field} missing in {json}");
    }
    served.stop();

    let failing = Served::start(
        "cmd-cli-fail",
        &["--", "sh", "-c", "echo broken >&2; exit 3"],
    );
    let out = rpc_client(failing.queue.name(), &["call", "x"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("exec-failed"), "{stderr}");
    assert!(stderr.contains("status 3: broken"), "{stderr}");
    failing.stop();
}
