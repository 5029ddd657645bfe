//! `rpc-server --protocol lines|json -- CMD`: a program kept running per worker, against the
//! real broker. Every program gets a marker as its last argument, unique to the test, and
//! every test ends by checking in `/proc` that no process carrying it is left once its
//! server has exited. Logs in `target/tmp/stream/`.

use crate::common::served::{Served, EXIT_WITHIN};
use crate::common::server::ServerProc;
use crate::common::{log_dir, marker, rpc_client_bin};
use rpc_client::testing;
use rpc_client::TraceContext;
use rpc_client::{Error, RpcRequest};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod limits;

fn logs() -> PathBuf {
    log_dir("stream")
}

/// An example handler of `rpc-server/examples/stream/`.
fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples/stream")
        .join(name);
    path.display().to_string()
}

/// The processes of this host (not `except`) with `marker` in their arguments, "PID: ARGS".
fn marked(marker: &str, except: u32) -> Vec<String> {
    crate::common::marked(marker, |pid, _| pid != except)
}

/// A server of a kept program on its own queue, consuming: a [`Served`] (which it derefs to)
/// whose program carries a marker.
struct Kept {
    served: Served,
    mark: String,
}

impl Kept {
    /// `rpc-server --name NAME ARGS... -- PROGRAM... MARKER` on a fresh queue.
    fn start(name: &str, args: &[&str], program: &[&str]) -> Kept {
        let mark = marker();
        let all: Vec<&str> = args
            .iter()
            .copied()
            .chain(["--"])
            .chain(program.iter().copied())
            .chain([mark.as_str()])
            .collect();
        Kept {
            served: Served::start(&logs(), name, &all),
            mark,
        }
    }

    /// The reply body as text; panics with the log if there is none.
    fn text(&self, body: &str) -> String {
        match self.call(RpcRequest::new(body)) {
            Ok(reply) => String::from_utf8_lossy(&reply.body).into_owned(),
            Err(err) => {
                let shown: String = body.chars().take(40).collect();
                panic!("{shown:?}: {err}\n{}", self.server.shown())
            }
        }
    }

    /// The error reply's code and message; panics with what came instead.
    fn refusal(&self, request: RpcRequest) -> (String, String) {
        match self.call(request) {
            Err(Error::Server { code, message }) => (code, message),
            other => panic!(
                "expected an error reply, got {other:?}\n{}",
                self.server.shown()
            ),
        }
    }

    /// The kept processes running now (the server's marked processes).
    fn programs(&self) -> Vec<String> {
        marked(&self.mark, self.server.pid())
    }

    /// Polls for `within` until `count` kept processes (and what they started) run.
    fn wait_programs(&self, what: &str, count: usize, within: Duration) {
        testing::poll_until(what, within, Duration::from_millis(10), || {
            Ok(self.programs().len() == count)
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", self.programs(), self.server.shown()));
    }

    /// SIGKILL; then nothing marked may be left (the guardian's work), and the queue goes.
    fn sigkill(self) {
        let Kept { served, mark } = self;
        let mut server = served.server;
        server.sigkill();
        assert!(server.wait_exit(Duration::from_secs(5)).is_some());
        nothing_left(&mark, &server.shown());
        drop(served.queue);
    }

    /// SIGTERM; the exit status must be 0 and nothing marked may be left.
    fn stop(self) -> String {
        let shown = self.served.stop();
        nothing_left(&self.mark, &shown);
        shown
    }
}

impl std::ops::Deref for Kept {
    type Target = Served;

    fn deref(&self) -> &Served {
        &self.served
    }
}

/// Polls for 2 s until no process carries `mark`; kills and panics otherwise.
fn nothing_left(mark: &str, shown: &str) {
    let result = testing::poll_until(
        "no process of the server left",
        Duration::from_secs(2),
        Duration::from_millis(10),
        || Ok(marked(mark, 0).is_empty()),
    );
    if let Err(err) = result {
        let left = marked(mark, 0);
        for line in &left {
            let pid = line.split(':').next().unwrap_or_default();
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        panic!("{err}: {left:?}\n{shown}");
    }
}

#[test]
fn lines_examples_in_python_and_node_keep_one_process() {
    for (name, program) in [
        ("stream-lines-py", ["python3", &example("upper_lines.py")]),
        ("stream-lines-node", ["node", &example("upper_lines.js")]),
    ] {
        let served = Kept::start(name, &["--protocol", "lines"], &program);
        assert_eq!(served.text("hello"), "HELLO");
        let reply = served
            .call(RpcRequest::new("ümlaut").with_content_type("text/plain"))
            .expect("call");
        assert_eq!(reply.body, "ÜMLAUT".as_bytes());
        assert_eq!(reply.content_type(), Some("text/plain"));
        assert_eq!(served.text(""), "");
        // A body the protocol cannot carry never reaches the program: a CR is a line break
        // to these readers too.
        for body in [&b"two\nlines"[..], b"x\rINJECTED", b"\xff\xfe"] {
            let (code, message) = served.refusal(RpcRequest::new(body));
            assert_eq!(code, "bad-request", "{message}");
        }
        assert_eq!(served.text("still up"), "STILL UP");
        assert_eq!(served.programs().len(), 1, "{:?}", served.programs());
        let shown = served.stop();
        assert_eq!(shown.matches("started `").count(), 1, "{shown}");
    }
}

#[test]
fn json_examples_in_python_and_node() {
    for (name, program) in [
        ("stream-json-py", ["python3", &example("words_json.py")]),
        ("stream-json-node", ["node", &example("words_json.js")]),
    ] {
        let served = Kept::start(name, &["--protocol", "json"], &program);
        let reply = served
            .call(RpcRequest::new("one two\nthree").with_header("lang", "en"))
            .unwrap_or_else(|e| panic!("{e}\n{}", served.server.shown()));
        let value: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON body");
        assert_eq!(value["words"], 3, "{value}");
        assert_eq!(value["lang"], "en", "{value}");
        assert_eq!(reply.content_type(), Some("application/json"));
        // A body that is not UTF-8 comes as body_base64, which these handlers refuse.
        let (code, message) = served.refusal(RpcRequest::new(&b"\xff"[..]));
        assert_eq!(code, "exec-failed");
        assert_eq!(message, "send text: this handler counts words");
        assert_eq!(served.programs().len(), 1, "{:?}", served.programs());
        served.stop();
    }
}

/// A json handler that answers each request with the request itself as the body.
const JSON_MIRROR: &str = "import json, sys\n\
    for line in sys.stdin:\n\
    \x20   r = json.loads(line)\n\
    \x20   print(json.dumps({'id': r['id'], 'body': json.dumps(r)}), flush=True)\n";

#[test]
fn json_requests_carry_body_properties_and_the_servers_span() {
    let served = Kept::start(
        "stream-json-mirror",
        &["--protocol", "json"],
        &["python3", "-c", JSON_MIRROR],
    );
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply = served
        .call(
            RpcRequest::new(&b"\x00\xffbin"[..])
                .with_content_type("application/octet-stream")
                .with_header("k", "v")
                .with_parent(TraceContext::parse(Some(parent), None)),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", served.server.shown()));
    let seen: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert_eq!(seen["body_base64"], "AP9iaW4=", "{seen}");
    assert!(seen.get("body").is_none(), "{seen}");
    assert_eq!(seen["content_type"], "application/octet-stream");
    assert_eq!(seen["headers"]["k"], "v", "{seen}");
    let id = reply.properties.correlation_id().expect("id").to_string();
    assert_eq!(seen["correlation_id"], id.as_str());
    let traceparent = reply.header("traceparent").expect("reply traceparent");
    assert_eq!(seen["traceparent"], traceparent, "{seen}");
    assert!(traceparent.starts_with(&parent[..36]), "{traceparent}");
    assert!(seen["id"].is_string(), "{seen}");
    // The time left: within the caller's 20 s (Served::call), the server's 30 s exec timeout.
    let left = seen["timeout_ms"].as_u64().expect("timeout_ms, a number");
    assert!((15_000..=20_000).contains(&left), "{seen}");
    // A request without trace context is not traced: no traceparent in the frame or reply.
    let reply = served
        .call(RpcRequest::new("plain"))
        .unwrap_or_else(|e| panic!("{e}\n{}", served.server.shown()));
    let seen: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert_eq!(seen["body"], "plain", "{seen}");
    assert!(seen.get("traceparent").is_none(), "{seen}");
    assert_eq!(reply.header("traceparent"), None);
    served.stop();
}

/// A `lines` handler: `crash` exits 3, `hang` hangs (a child too), `big`, `two` lines; echo.
const SH_HANDLER: &str = "while read -r l; do case \"$l\" in \
       crash) echo 'dying now' >&2; exit 3;; \
       hang) sleep 3601.$0 & sleep 3602.$0;; \
       big) head -c 200000 /dev/zero | tr '\\0' x; echo;; \
       two) echo one; echo two;; \
       *) echo \"$l\";; esac; done";

#[test]
fn crash_hang_huge_reply_and_extra_lines_restart_the_program() {
    let served = Kept::start(
        "stream-failures",
        &[
            "--protocol",
            "lines",
            "--exec-timeout",
            "1",
            "--max-reply-bytes",
            "100000",
        ],
        &["sh", "-c", SH_HANDLER],
    );
    assert_eq!(served.text("a"), "a");
    let (code, message) = served.refusal(RpcRequest::new("crash"));
    assert_eq!(code, "exec-failed", "{message}");
    assert_eq!(
        message,
        "the program exited with status 3 with a request in hand: dying now"
    );
    assert_eq!(served.text("b"), "b");

    let started = Instant::now();
    let (code, message) = served.refusal(RpcRequest::new("hang"));
    assert_eq!(code, "exec-timeout", "{message}");
    assert!(message.contains("within 1s"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The program and its children are gone with their group; the next request starts
    // afresh.
    assert_eq!(served.text("c"), "c");
    testing::poll_until(
        "the hanging program's group to go",
        Duration::from_secs(2),
        Duration::from_millis(10),
        || Ok(served.programs().len() == 1),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", served.programs()));

    let (code, message) = served.refusal(RpcRequest::new("big"));
    assert_eq!(code, "too-large", "{message}");
    assert!(message.contains("100000 bytes"), "{message}");
    assert_eq!(served.text("d"), "d");

    // Two lines for one request: neither is sent; the program is started again.
    let (code, message) = served.refusal(RpcRequest::new("two"));
    assert_eq!(code, "exec-failed", "{message}");
    assert!(
        message.contains("4 more bytes (\"two\") after its reply line"),
        "{message}"
    );
    assert_eq!(served.text("e"), "e");
    let shown = served.stop();
    // The first start and one after each of crash, hang, big and two.
    assert_eq!(shown.matches("started `").count(), 5, "{shown}");
    assert!(shown.contains("dying now"), "stderr is logged\n{shown}");
}

#[test]
fn a_program_hung_on_an_abandoned_request_is_replaced_and_the_next_call_answered() {
    // One worker, --exec-timeout 60: the caller gives up at 2 s.
    let served = Kept::start(
        "stream-abandoned",
        &["--protocol", "lines", "--exec-timeout", "60"],
        &["sh", "-c", SH_HANDLER],
    );
    assert_eq!(served.text("a"), "a");
    let sent = Instant::now();
    let result = served
        .client(Duration::from_secs(2))
        .call(&RpcRequest::new("hang"));
    assert!(
        matches!(result, Err(Error::Timeout { .. })),
        "{result:?}\n{}",
        served.server.shown()
    );
    // The hung program and its children are gone within 1 s of the deadline ...
    served.wait_programs(
        "the hung program's group to go",
        0,
        Duration::from_secs(3).saturating_sub(sent.elapsed()),
    );
    // ... and a fresh one answers the next call at once.
    let started = Instant::now();
    assert_eq!(served.text("b"), "b");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let shown = served.stop();
    assert!(
        shown.contains("the caller's deadline passed with the request in hand"),
        "{shown}"
    );
    assert_eq!(shown.matches("started `").count(), 2, "{shown}");
    assert!(!shown.contains("failure(s) in a row"), "{shown}");
}

/// A `json` handler: `garbage` is not JSON, `wrong` has another id, `error`; else an echo.
const JSON_FAULTY: &str = "import json, sys\n\
    for line in sys.stdin:\n\
    \x20   r = json.loads(line)\n\
    \x20   b = r.get('body')\n\
    \x20   if b == 'garbage': print('this is not json', flush=True); continue\n\
    \x20   if b == 'wrong': print(json.dumps({'id': 'x' + r['id'], 'body': b}), flush=True); continue\n\
    \x20   if b == 'error': print(json.dumps({'id': r['id'], 'error': 'refused\\x1b[2J'}), flush=True); continue\n\
    \x20   print(json.dumps({'id': r['id'], 'body': b}), flush=True)\n";

#[test]
fn garbage_and_wrong_ids_are_protocol_errors() {
    let served = Kept::start(
        "stream-protocol",
        &["--protocol", "json"],
        &["python3", "-c", JSON_FAULTY],
    );
    assert_eq!(served.text("a"), "a");
    for (body, what) in [("garbage", "not JSON"), ("wrong", "with id \"x")] {
        let (code, message) = served.refusal(RpcRequest::new(body));
        assert_eq!(code, "exec-failed", "{message}");
        assert!(message.starts_with("protocol error"), "{message}");
        assert!(message.contains(what), "{message}");
        assert_eq!(served.text("next"), "next");
    }
    // An error the program reports is an error reply, made printable; the program stays.
    let (code, message) = served.refusal(RpcRequest::new("error"));
    assert_eq!(code, "exec-failed");
    assert_eq!(message, "refused?[2J");
    assert_eq!(served.text("b"), "b");
    let shown = served.stop();
    assert_eq!(shown.matches("started `").count(), 3, "{shown}");
}

/// `cat` and `yes`, as children of a shell that carries the marker.
const CAT: &[&str] = &["sh", "-c", "cat; :"];
const YES: &[&str] = &["sh", "-c", "yes; :"];

#[test]
fn cat_carries_a_large_line_and_a_flood_is_cut_off() {
    let served = Kept::start("stream-cat", &["--protocol", "lines"], CAT);
    let body: String = (0..3_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let reply = served.text(&body);
    assert!(
        reply == body,
        "cat changed a 3 MB line ({} bytes)",
        reply.len()
    );
    served.stop();
    // `yes` floods from its start: no request is written to it, nor answered with a "y".
    let served = Kept::start("stream-flood", &["--protocol", "lines"], YES);
    for _ in 0..3 {
        let (code, message) = served.refusal(RpcRequest::new("x"));
        assert_eq!(code, "exec-failed", "{message}");
        assert!(message.contains("before any request (\"y\")"), "{message}");
    }
    served.stop();
}

#[test]
fn a_program_that_dies_at_start_is_restarted_with_backoff_not_in_a_loop() {
    let starts = logs().join(format!("starts-{}", std::process::id()));
    let _ = std::fs::remove_file(&starts);
    std::fs::create_dir_all(logs()).expect("log dir");
    let script = format!(
        "echo start >> '{}'; echo 'cannot start: no config' >&2; exit 1",
        starts.display()
    );
    let served = Kept::start(
        "stream-dies",
        &["--protocol", "lines", "--exec-timeout", "5"],
        &["sh", "-c", &script],
    );
    let began = Instant::now();
    let mut calls = 0;
    while began.elapsed() < Duration::from_secs(3) {
        let (code, message) = served.refusal(RpcRequest::new("x"));
        assert_eq!(code, "exec-failed", "{message}");
        assert!(message.contains("cannot start: no config"), "{message}");
        calls += 1;
    }
    let took = began.elapsed();
    let count = std::fs::read_to_string(&starts)
        .unwrap_or_default()
        .lines()
        .count();
    let shown = served.stop();
    // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s of pauses fit in about 3 s: six starts at most, where a
    // loop would start it hundreds of times.
    assert!(
        (2..=7).contains(&count),
        "{count} starts in {took:?} ({calls} calls)\n{shown}"
    );
    assert_eq!(calls, count, "one start per call\n{shown}");
    assert!(
        shown.contains("keeps failing before its first reply"),
        "{shown}"
    );
    let _ = std::fs::remove_file(&starts);
}

#[test]
fn max_requests_per_process_recycles_the_program() {
    let served = Kept::start(
        "stream-recycle",
        &["--protocol", "lines", "--max-requests-per-process", "3"],
        &["sh", "-c", "while read -r l; do echo \"$$\"; done"],
    );
    let pids: Vec<String> = (0..7).map(|_| served.text("x")).collect();
    assert!(pids[0] == pids[1] && pids[1] == pids[2], "{pids:?}");
    assert!(pids[3] == pids[4] && pids[4] == pids[5], "{pids:?}");
    assert!(pids[0] != pids[3] && pids[3] != pids[6], "{pids:?}");
    // The retired ones exit (their stdin closed) in the background.
    testing::poll_until(
        "the retired programs to exit",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || Ok(served.programs().len() == 1),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", served.programs()));
    let shown = served.stop();
    assert_eq!(shown.matches("retiring its program").count(), 2, "{shown}");
}

#[test]
fn sigterm_answers_the_requests_in_hand_then_ends_the_programs() {
    // Each request takes a second; at stdin's end it goes on, so the stop must kill it.
    let script = "while read -r l; do sleep 1; echo \"$l\"; done; sleep 3603.$0";
    let served = Kept::start(
        "stream-sigterm",
        &["--protocol", "lines", "--workers", "2"],
        &["sh", "-c", script],
    );
    let mut client = served.client(Duration::from_secs(20));
    let caller = std::thread::spawn(move || {
        let requests = [RpcRequest::new("a"), RpcRequest::new("b")];
        let mut answered = Vec::new();
        let sent = client.call_many(&requests, 2, |_, result| {
            answered.push(result.map(|reply| String::from_utf8_lossy(&reply.body).into_owned()));
            ControlFlow::Continue(())
        });
        (sent, answered)
    });
    testing::poll_until(
        "two programs running",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || Ok(served.programs().len() >= 2),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", served.server.shown()));
    let Kept { served, mark } = served;
    let mut server = served.server;
    let stopped = Instant::now();
    server.sigterm();
    let (status, shown) = server.finish(EXIT_WITHIN);
    let took = stopped.elapsed();
    let (sent, mut answered) = caller.join().expect("caller");
    sent.unwrap_or_else(|e| panic!("{e}\n{shown}"));
    assert!(status.success(), "{shown}");
    answered.sort_by_key(|r| r.as_ref().ok().cloned());
    let answered: Vec<_> = answered.into_iter().map(Result::ok).collect();
    assert_eq!(answered, [Some("a".into()), Some("b".into())], "{shown}");
    // About a second of requests, then the 2 s the programs get to exit.
    assert!(took < Duration::from_secs(8), "{took:?}\n{shown}");
    assert!(
        shown.contains("still running after its stdin was closed"),
        "{shown}"
    );
    nothing_left(&mark, &shown);
    drop(served.queue);
}

#[test]
fn a_server_killed_by_sigkill_leaves_no_program_running() {
    let served = Kept::start(
        "stream-sigkill",
        &["--protocol", "lines", "--workers", "2"],
        &[
            "sh",
            "-c",
            "sleep 3604.$0 & while read -r l; do echo \"$l\"; done",
        ],
    );
    assert_eq!(served.text("a"), "a");
    // The program and its child.
    assert_eq!(served.programs().len(), 2, "{:?}", served.programs());
    // The guardian kills the programs' groups (the sleep with them).
    served.sigkill();
}

#[test]
fn protocol_flags_are_checked() {
    let mut server = ServerProc::spawn_args(
        &logs(),
        "stream-flags",
        &["--max-requests-per-process", "3", "--", "cat"],
        &[],
    );
    let (status, shown) = server.finish(EXIT_WITHIN);
    assert_eq!(status.code(), Some(2), "{shown}");
    assert!(shown.contains("needs --protocol lines or json"), "{shown}");
    let mut server =
        ServerProc::spawn_args(&logs(), "stream-flags-2", &["--protocol", "lines"], &[]);
    let (status, shown) = server.finish(EXIT_WITHIN);
    assert_eq!(status.code(), Some(2), "{shown}");
}

/// `rpc-client call` against a `lines` server, as a user would from the shell.
#[test]
fn rpc_client_call_against_a_lines_server() {
    let served = Kept::start("stream-cli", &["--protocol", "lines"], CAT);
    let broker = testing::broker();
    let out = Command::new(rpc_client_bin())
        .args(["--host", &broker.host, "--port", &broker.port.to_string()])
        .args(["--vhost", &broker.vhost, "--user", &broker.user])
        .args(["--queue", served.queue.name(), "--timeout", "20"])
        .args(["call", "one", "two"])
        .env("AMQP_PASSWORD", &broker.password)
        .env_remove("AMQP_URI")
        .env_remove("AMQP_PASSWORD_FILE")
        .output()
        .expect("run rpc-client");
    let shown = served.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{shown}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "one\ntwo\n");
}

/// Calls `bodies` `in_flight` at a time: each body with its reply body or error reply.
fn call_all(
    served: &Kept,
    bodies: &[String],
    in_flight: usize,
) -> Vec<(String, Result<String, String>)> {
    let requests: Vec<RpcRequest> = bodies.iter().map(|b| RpcRequest::new(b.as_str())).collect();
    let mut client = served.client(Duration::from_secs(60));
    let mut results = Vec::new();
    client
        .call_many(&requests, in_flight, |index, result| {
            let result = match result {
                Ok(reply) => Ok(String::from_utf8_lossy(&reply.body).into_owned()),
                Err(Error::Server { code, message }) => Err(format!("{code}: {message}")),
                Err(err) => panic!("{err}"),
            };
            results.push((bodies[index].clone(), result));
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", served.server.shown()));
    results
}

/// A `lines` handler that answers, then writes a debug line on stdout: at once, or 5 ms later
/// (before it reads again).
const DEBUG_AFTER_REPLY: &str = "import sys, time\n\
    for line in sys.stdin:\n\
    \x20   body = line.removesuffix('\\n')\n\
    \x20   print(body.upper(), flush=True)\n\
    \x20   if body.endswith('late'): time.sleep(0.005)\n\
    \x20   print('debug: done with ' + body, flush=True)\n";

#[test]
fn lines_output_after_a_reply_never_reaches_another_caller() {
    let served = Kept::start(
        "stream-debug-line",
        // Each failure pauses the restart; past 5 s the requests are refused at once.
        &[
            "--protocol",
            "lines",
            "--workers",
            "2",
            "--prefetch",
            "20",
            "--exec-timeout",
            "5",
        ],
        &["python3", "-c", DEBUG_AFTER_REPLY],
    );
    let bodies: Vec<String> = (0..60)
        .map(|i| format!("call {i} {}", if i % 2 == 0 { "now" } else { "late" }))
        .collect();
    let results = call_all(&served, &bodies, 16);
    let shown = served.stop();
    assert_eq!(results.len(), bodies.len(), "{shown}");
    let mut caught = 0;
    for (body, result) in &results {
        match result {
            // Its own answer, never the debug line of another request.
            Ok(reply) => assert_eq!(reply, &body.to_uppercase(), "{shown}"),
            // An error reply: caught, or refused while the failing program's restart waits.
            Err(message) => {
                caught += usize::from(message.contains("more bytes (\"debug: done with"));
            }
        }
    }
    assert!(caught > 0, "{results:?}\n{shown}");
}

#[test]
fn a_line_written_at_start_is_no_answer_and_restarts_back_off() {
    let served = Kept::start(
        "stream-banner",
        &["--protocol", "lines"],
        &[
            "python3",
            "-c",
            "import sys\nprint('ready', flush=True)\nfor l in sys.stdin: print(l, end='', flush=True)",
        ],
    );
    let began = Instant::now();
    let mut calls = 0;
    while began.elapsed() < Duration::from_secs(2) {
        let (code, message) = served.refusal(RpcRequest::new("x"));
        assert_eq!(code, "exec-failed", "{message}");
        assert!(
            message.contains("before any request (\"ready\")"),
            "{message}"
        );
        calls += 1;
    }
    let shown = served.stop();
    // 0.1 + 0.2 + 0.4 + 0.8 s of pauses: five starts at most in 2 s.
    let starts = shown.matches("started `").count();
    assert!(
        (1..=6).contains(&starts),
        "{starts} starts, {calls} calls\n{shown}"
    );
}

#[test]
fn a_clean_exit_with_a_request_in_hand_sends_it_to_a_fresh_program() {
    // Exits after each reply: the next request, written meanwhile, must not fail.
    let served = Kept::start(
        "stream-one-shot",
        &["--protocol", "lines", "--workers", "2", "--prefetch", "20"],
        &["sh", "-c", "read -r l; echo \"$l\""],
    );
    let bodies: Vec<String> = (0..80).map(|i| format!("one shot {i}")).collect();
    for (body, result) in call_all(&served, &bodies, 16) {
        assert_eq!(result.as_ref(), Ok(&body), "{}", served.server.shown());
    }
    served.stop();
    // Reads a request and exits 0 without answering it, once: tried again, answered.
    let flag = logs().join(format!("quit-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let script = format!(
        "while read -r l; do if [ \"$l\" = quit ] && [ ! -e '{0}' ]; then : > '{0}'; exit 0; fi; \
         echo \"$l\"; done",
        flag.display()
    );
    let served = Kept::start(
        "stream-quits",
        &["--protocol", "lines"],
        &["sh", "-c", &script],
    );
    assert_eq!(served.text("a"), "a");
    assert_eq!(served.text("quit"), "quit");
    // A crash still fails the request.
    let served_crash = Kept::start(
        "stream-crash-once",
        &["--protocol", "lines"],
        &["sh", "-c", "read -r l; exit 4"],
    );
    let (code, message) = served_crash.refusal(RpcRequest::new("x"));
    assert_eq!(code, "exec-failed", "{message}");
    assert!(message.contains("status 4"), "{message}");
    served_crash.stop();
    let shown = served.stop();
    assert!(shown.contains("goes to a fresh program"), "{shown}");
    let _ = std::fs::remove_file(&flag);
}

/// Starts `sleep 3605.MARKER` in a session of its own for each request, then answers.
const SETSID_CHILD: &str = "import subprocess, sys\n\
    for line in sys.stdin:\n\
    \x20   subprocess.Popen(['sleep', '3605.' + sys.argv[1]], start_new_session=True)\n\
    \x20   print(line, end='', flush=True)\n";

#[test]
fn what_a_kept_program_starts_outside_its_group_ends_with_the_request() {
    let served = Kept::start(
        "stream-setsid",
        &["--protocol", "lines"],
        &["python3", "-c", SETSID_CHILD],
    );
    for body in ["a", "b"] {
        assert_eq!(served.text(body), body);
        served.wait_programs("the setsid child to be ended", 1, Duration::from_secs(2));
    }
    served.sigkill();
}

#[test]
fn a_server_killed_by_sigkill_leaves_nothing_its_program_started() {
    // For each line, children out of the program's group (by `setsid`, by a double fork),
    // then no answer: the request stays in hand.
    let served = Kept::start(
        "stream-sigkill-setsid",
        &["--protocol", "lines"],
        &[
            "sh",
            "-c",
            "while read -r l; do setsid sleep 3606.$0 & (setsid sleep 3607.$0 &); \
             sleep 3608.$0; done",
        ],
    );
    let mut client = served.client(Duration::from_secs(5));
    let caller = std::thread::spawn(move || {
        let _ = client.call(&RpcRequest::new("a"));
    });
    // The program and its three sleeps.
    served.wait_programs("the program's children", 4, Duration::from_secs(10));
    served.sigkill();
    caller.join().expect("caller");
}

/// A `json` handler that answers; then for `now` writes its reply again 3 ms later, before it
/// reads again, and for `timer` 10 ms later from a timer thread, while it waits for input.
const JSON_TWICE: &str = "import json, sys, threading, time\n\
    def say(r, body):\n\
    \x20   sys.stdout.write(json.dumps({'id': r['id'], 'body': body}) + '\\n'); sys.stdout.flush()\n\
    for line in sys.stdin:\n\
    \x20   r = json.loads(line)\n\
    \x20   say(r, r['body'])\n\
    \x20   if r['body'].startswith('timer'): threading.Timer(0.01, say, (r, 'late')).start()\n\
    \x20   elif r['body'].startswith('now'): time.sleep(0.003); say(r, 'again')\n";

#[test]
fn json_callers_caught_up_in_another_requests_extra_line_are_served() {
    let served = Kept::start(
        "stream-json-twice",
        &["--protocol", "json", "--prefetch", "20"],
        &["python3", "-c", JSON_TWICE],
    );
    // 16 in flight: the next request is in hand as soon as a reply is taken, so a late line
    // comes while another request is in hand.
    let bodies: Vec<String> = (0..150)
        .map(|i| match i % 10 {
            0 => format!("timer {i}"),
            5 => format!("now {i}"),
            _ => format!("plain {i}"),
        })
        .collect();
    let results = call_all(&served, &bodies, 16);
    let shown = served.stop();
    assert_eq!(results.len(), bodies.len(), "{shown}");
    for (body, result) in results {
        assert_eq!(result.as_ref(), Ok(&body), "{shown}");
    }
    // A late line in hand for sure: `stale` is answered first with the previous request's id.
    let served = Kept::start(
        "stream-json-stale",
        &["--protocol", "json"],
        &["python3", "-c", JSON_STALE],
    );
    assert_eq!(served.text("a"), "a");
    assert_eq!(served.text("stale"), "stale");
    let shown = served.stop();
    assert!(
        shown.contains("an earlier request's: the request goes to a fresh program"),
        "{shown}"
    );
}

/// A `json` handler that answers `stale` with a reply to the request before it first.
const JSON_STALE: &str = "import json, sys\n\
    previous = None\n\
    for line in sys.stdin:\n\
    \x20   r = json.loads(line)\n\
    \x20   if r['body'] == 'stale' and previous: print(json.dumps({'id': previous, 'body': 'late'}), flush=True)\n\
    \x20   print(json.dumps({'id': r['id'], 'body': r['body']}), flush=True)\n\
    \x20   previous = r['id']\n";
