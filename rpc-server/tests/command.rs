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
use rpc_client::TraceContext;
use rpc_client::{ClientOptions, Error, RpcClient, RpcReply, RpcRequest};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
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
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = served
        .call(
            RpcRequest::new("")
                .with_content_type("text/plain")
                .with_parent(TraceContext::parse(Some(parent), None)),
        )
        .expect("call");
    let id = reply
        .properties
        .correlation_id()
        .clone()
        .expect("correlation id");
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

/// `rpc-client --queue QUEUE ARGS...` on the test broker, with `stdin`.
fn rpc_client(queue: &str, args: &[&str], stdin: &[u8]) -> Output {
    rpc_client_env(queue, args, stdin, &[])
}

/// [`rpc_client`] with `env` added to its environment.
fn rpc_client_env(queue: &str, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let broker = testing::broker();
    let mut child = Command::new(rpc_client_bin())
        .envs(env.iter().copied())
        .args(["--host", &broker.host, "--port", &broker.port.to_string()])
        .args(["--vhost", &broker.vhost, "--user", &broker.user])
        .args(["--queue", queue, "--timeout", "20"])
        .args(args)
        .env("AMQP_PASSWORD", &broker.password)
        .env_remove("AMQP_PASSWORD_FILE")
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

/// A number no other process has in its arguments: the tests below run `sleep 360N.<marker>`
/// (seconds `sleep` takes) and look for it in `/proc`.
fn marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}{nanos:09}", std::process::id())
}

/// The `sleep` processes of this host with `marker` in their arguments, as "PID: ARGS".
fn marked(marker: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|byte| *byte == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            let sleep = args.first()?.ends_with("sleep");
            (sleep && args.iter().any(|arg| arg.contains(marker)))
                .then(|| format!("{pid}: {}", args.join(" ")))
        })
        .collect()
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
        // Its guardian process kills the commands' groups.
        await_marked(&mark, 0, Duration::from_secs(2), || server.shown());
        let log = server.log_text();
        assert!(log.contains("the server is gone; killed its"), "{log}");
        caller.join().expect("caller");
        drop(served.queue);
    }
}

#[test]
fn a_command_is_answered_when_it_exits_and_what_left_its_group_is_ended() {
    let mark = marker();
    let served = Served::start(
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

/// How a test server gets the broker password.
enum PasswordFrom {
    Variable,
    File,
    FileVariable,
}

/// `rpc-server` on `queue` with the broker's user and password given as `from` says (never on
/// the command line), run without capabilities when the test runs as root (a process with
/// CAP_SYS_PTRACE reads every process's `/proc` files).
fn secret_server(name: &str, queue: &str, from: PasswordFrom, password_file: &Path) -> ServerProc {
    let broker = testing::broker();
    let port = broker.port.to_string();
    let file = password_file.display().to_string();
    let mut args = vec![
        "--host",
        &broker.host,
        "--port",
        &port,
        "--vhost",
        &broker.vhost,
    ];
    let mut env = vec![("AMQP_USER", broker.user.as_str())];
    match from {
        PasswordFrom::Variable => env.push(("AMQP_PASSWORD", &broker.password)),
        PasswordFrom::File => args.extend(["--password-file", &file]),
        PasswordFrom::FileVariable => env.push(("AMQP_PASSWORD_FILE", &file)),
    }
    let ca = broker.tls_ca.as_ref().map(|p| p.display().to_string());
    if broker.tls {
        args.push("--tls");
    }
    if let Some(ca) = &ca {
        env.push(("AMQP_TLS_CA", ca));
    }
    args.extend(["--queue", queue, "--name", name]);
    let script = "for f in environ cmdline maps auxv; do \
                    if cat /proc/$PPID/$f; then echo; echo \"read-$f\"; fi; \
                  done 2>/dev/null; f=exe; \
                  if readlink /proc/$PPID/$f /proc/$PPID/fd/*; then echo \"read-$f\"; fi; \
                  for d in /proc/[0-9]*; do \
                    if [ \"$(cut -d' ' -f4 $d/stat)\" = $PPID ] && [ $d != /proc/$$ ]; then \
                      f=sibling; cat $d/environ $d/cmdline && echo \"read-$f\"; \
                    fi; \
                  done 2>/dev/null; \
                  env | grep -v '^AMQP_USER='";
    args.extend(["--", "sh", "-c", script]);
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("0") && l.starts_with("Uid:"))
    });
    let wrapper: &[&str] = if root {
        &["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
    } else {
        &[]
    };
    ServerProc::spawn_wrapped(&logs(), name, wrapper, &args, &env)
}

#[test]
fn the_command_finds_the_password_in_nothing_it_can_read() {
    let broker = testing::broker();
    let password_file = logs().join(format!("password-{}", std::process::id()));
    std::fs::create_dir_all(logs()).expect("log dir");
    std::fs::write(&password_file, format!("{}\n", broker.password)).expect("password file");
    for (from, name) in [
        (PasswordFrom::Variable, "cmd-secret-env"),
        (PasswordFrom::File, "cmd-secret-file"),
        (PasswordFrom::FileVariable, "cmd-secret-file-env"),
    ] {
        let queue = QueueGuard::new(name);
        let mut server = secret_server(name, queue.name(), from, &password_file);
        let mut admin = Admin::connect().expect("admin");
        if let Err(err) = admin.wait_for_consumers(queue.name(), 1) {
            server.sigterm();
            panic!("{err}\n{}", server.finish(EXIT_WITHIN).1);
        }
        // rpc-client reads the password file too.
        let out = Command::new(rpc_client_bin())
            .args(["--host", &broker.host, "--port", &broker.port.to_string()])
            .args(["--vhost", &broker.vhost, "--user", &broker.user])
            .args(["--queue", queue.name(), "--timeout", "20", "call", "x"])
            .env("AMQP_PASSWORD_FILE", &password_file)
            .env_remove("AMQP_PASSWORD")
            .env_remove("AMQP_URI")
            .output()
            .expect("run rpc-client");
        let shown = server.shown();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}\n{shown}");
        let seen = String::from_utf8_lossy(&out.stdout);
        // It did read the command line, and nothing else of the server's.
        assert!(seen.contains("read-cmdline"), "{name}: {seen}\n{shown}");
        // The server's other child, its guardian, is readable, and holds no password.
        assert!(seen.contains("read-sibling"), "{name}: {seen}\n{shown}");
        assert!(
            seen.contains("RPC_SERVER_INTERNAL_GUARDIAN"),
            "{name}: {seen}"
        );
        assert!(seen.contains("rpc-server"), "{name}: {seen}\n{shown}");
        // (The markers are not in the script as such, which is in the command line.)
        for closed in ["read-environ", "read-maps", "read-auxv", "read-exe"] {
            assert!(!seen.contains(closed), "{name}: {seen}");
        }
        assert!(!seen.contains("AMQP_PASSWORD"), "{name}: {seen}");
        assert!(
            !seen.contains(&broker.password),
            "{name}: the password in {seen}"
        );
        server.sigterm();
        let (status, shown) = server.finish(EXIT_WITHIN);
        assert!(status.success(), "{shown}");
    }
    let _ = std::fs::remove_file(&password_file);
}

#[test]
fn a_bad_password_file_is_a_one_line_error_exit_2_in_both_binaries() {
    let missing = logs().join("no-such-password-file");
    let empty = logs().join(format!("empty-password-{}", std::process::id()));
    std::fs::create_dir_all(logs()).expect("log dir");
    std::fs::write(&empty, "\n").expect("empty file");
    for (file, why) in [(&missing, "No such file"), (&empty, "empty")] {
        let path = file.display().to_string();
        let mut server = ServerProc::spawn_args(
            &logs(),
            "cmd-bad-password-file",
            &["--password-file", &path, "--", "cat"],
            &[],
        );
        let (status, shown) = server.finish(EXIT_WITHIN);
        assert_eq!(status.code(), Some(2), "{shown}");
        let log = server.log_text();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(
            log.contains(&format!("--password-file '{path}': {why}")),
            "{log}"
        );

        let out = Command::new(rpc_client_bin())
            .args(["call", "x"])
            .env("AMQP_PASSWORD_FILE", &path)
            .env_remove("AMQP_PASSWORD")
            .env_remove("AMQP_URI")
            .output()
            .expect("run rpc-client");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("--password-file '{path}': {why}")),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_file(&empty);
}

/// Each line of `stderr` as a JSON object with the fields every line has.
fn json_log_lines(stderr: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    stderr
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            let object = value.as_object().expect("an object").clone();
            for field in ["timestamp", "level", "target", "message"] {
                assert!(object[field].is_string(), "{field} in {line}");
            }
            let timestamp = object["timestamp"].as_str().unwrap_or("");
            // RFC 3339, UTC: 2026-12-02T10:00:00.123456Z
            assert!(
                timestamp.len() >= 20 && &timestamp[10..11] == "T" && timestamp.ends_with('Z'),
                "{timestamp}"
            );
            object
        })
        .collect()
}

#[test]
fn json_logs_and_the_trace_from_rpc_clients_environment() {
    let served = Served::start(
        "cmd-json",
        &[
            "--log-format",
            "json",
            "--",
            "sh",
            "-c",
            "printf %s \"$TRACEPARENT\"",
        ],
    );
    let queue = served.queue.name().to_string();
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let out = rpc_client_env(
        &queue,
        &["-v", "call", "--json", "x"],
        b"",
        &[
            ("TRACEPARENT", parent),
            ("TRACESTATE", "rojo=00f067aa0ba902b7"),
            ("RPC_LOG_FORMAT", "json"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let server_log = served.server.log_text();
    let shown = served.stop();
    assert!(out.status.success(), "{stderr}\n{shown}");
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    // stdout: the reply (the command's TRACEPARENT: the server's span, in our trace) and the
    // call's trace id.
    let reply: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("call --json is JSON");
    assert_eq!(reply["trace_id"], trace_id, "{reply}");
    let body = reply["body"].as_str().expect("body");
    assert!(body.starts_with(&parent[..36]) && body != parent, "{body}");
    assert_eq!(reply["headers"]["traceparent"], body, "{reply}");
    assert_eq!(reply["headers"]["tracestate"], "rojo=00f067aa0ba902b7");
    // The client's log (JSON, -v): the call's line has the trace id.
    let client_lines = json_log_lines(&stderr);
    assert!(
        client_lines
            .iter()
            .any(|l| l.get("trace_id").and_then(|v| v.as_str()) == Some(trace_id)),
        "{stderr}"
    );
    // The server's log: every line JSON; the per-request line has its fields.
    let server_lines = json_log_lines(&server_log);
    let request = server_lines
        .iter()
        .find(|l| l["target"] == "rpc_server::request")
        .unwrap_or_else(|| panic!("no per-request line\n{server_log}"));
    assert_eq!(request["trace_id"], trace_id, "{request:?}");
    assert_eq!(request["outcome"], "answered", "{request:?}");
    assert!(request["duration_ms"].as_f64().is_some(), "{request:?}");
    assert!(
        request["correlation_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{request:?}"
    );
    let password = format!(":{}@", testing::broker().password);
    assert!(!stderr.contains(&password) && !server_log.contains(&password));
}
