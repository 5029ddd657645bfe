//! Interop, run by `scripts/interop.sh`: our rpc-server / rpc-client against RabbitMQ
//! tutorial-six peers written in Python with pika (`scripts/interop/rpc_{server,client}.py`,
//! run by `INTEROP_PYTHON`, default `target/py-venv/bin/python`).
//!
//! For each queue flavour of `INTEROP_FLAVOURS` (default "classic durable quorum"; classic: the
//! original tutorial's non-durable queue; durable: classic and durable; quorum: today's
//! tutorial's), on its own queue:
//! - (a) their client -> our server (own reply queue, then direct reply-to); the queue is
//!   declared first by the Python server, so ours meets it existing; our server exits 0 on
//!   SIGTERM;
//! - (b) our client -> their server;
//! - (c) their client in raw mode -> our server serving `tr a-z A-Z` (ASCII text and a body
//!   with spaces and UTF-8);
//! - (d) our client's `call` (raw bodies) -> their Fibonacci server and -> our command server.
//!
//! Plus: tutorial clients in pika and amqplib (`tutorial_client.py`, `node/tutorial_client.js`,
//! reading replies as their tutorials do) get no reply to a bad body (`-1`, `abc`), which they
//! would misread, and the answer to a good one; a failing command's error reply (x-rpc-error: exec-failed, with its exit status and
//! last stderr line) as their raw client and our `call` (exit 5) see it; W3C trace context with
//! pika and amqplib instrumented by OpenTelemetry (`otel_peer.py`, `node/otel_peer.js`, its
//! modules from `INTEROP_NODE_PATH`): one trace id end to end both ways; our
//! server's own declaration of a fresh queue is equivalent to a durable classic declaration
//! (and with --transient, to the original tutorial's).
//!
//! The broker is `AMQP_URI`'s (all four programs read it). Logs in `target/tmp/interop/`.

use super::proc::{self, Bg, Output};
use super::{await_consumers, env_or, repo_root, rpc_server_bin, Tally};
use crate::common::{fresh_log_dir, rpc_client_bin};
use rpc_client::testing::{self, QueueGuard};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const NS: [&str; 6] = ["0", "1", "2", "10", "30", "94"];
const EXPECTED: &str = "0\n1\n1\n55\n832040\n19740274219868223167";
/// The per-reply timeout given to the clients.
const CALL_TIMEOUT: &str = "15";
/// How long a client may run.
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);
/// How long a tutorial client waits for the reply to a bad body, which must not come.
const TUTORIAL_WAIT: Duration = Duration::from_secs(3);
/// How long a server has to consume its queue.
const READY: Duration = Duration::from_secs(20);
/// How long a process has to exit after SIGTERM.
const STOP: Duration = Duration::from_secs(10);
/// Raw bodies for the command server (tr a-z A-Z works on bytes: only ASCII letters change).
const RAW_BODIES: [&str; 2] = ["hello", "grüße aus Köln, 2 × 3"];
const RAW_EXPECTED: [&str; 2] = ["HELLO", "GRüßE AUS KöLN, 2 × 3"];

/// A program to run: ours or a Python peer.
pub struct Run {
    python: String,
    peers: PathBuf,
    logs: PathBuf,
    /// `node_modules` of the amqplib peers (`INTEROP_NODE_PATH`, default
    /// `target/node-peers/node_modules`, where scripts/interop.sh installs them).
    node_path: String,
}

/// An OpenTelemetry-instrumented peer: pika's (`otel_peer.py`) or amqplib's
/// (`node/otel_peer.js`); both take the same arguments and check the same spans.
#[derive(Clone, Copy)]
enum Otel {
    Pika,
    Amqplib,
}

impl Otel {
    fn name(self) -> &'static str {
        match self {
            Otel::Pika => "pika",
            Otel::Amqplib => "amqplib",
        }
    }
}

impl Run {
    /// `scripts/interop/SCRIPT ARGS...` under the venv's Python.
    fn otel(&self, peer: Otel, args: &[&str]) -> Command {
        match peer {
            Otel::Pika => self.py("otel_peer.py", args),
            Otel::Amqplib => {
                let mut command = Command::new("node");
                command.arg(self.peers.join("node/otel_peer.js")).args(args);
                command.env("NODE_PATH", &self.node_path);
                command
            }
        }
    }

    /// `node scripts/interop/node/SCRIPT ARGS...` with the amqplib modules.
    fn node(&self, script: &str, args: &[&str]) -> Command {
        let mut command = Command::new("node");
        command.arg(self.peers.join("node").join(script)).args(args);
        command.env("NODE_PATH", &self.node_path);
        command
    }

    fn py(&self, script: &str, args: &[&str]) -> Command {
        let mut command = Command::new(&self.python);
        command.arg(self.peers.join(script)).args(args);
        command
    }

    /// Starts `command` in the background as `name`; `Err` (why, its stderr; it is killed)
    /// unless it becomes the one consumer of `queue` within [`READY`].
    fn server(&self, command: Command, name: &str, queue: &str) -> Result<Bg, String> {
        let mut server = Bg::spawn(command, &self.logs, name);
        await_consumers(&testing::broker(), queue, 1, READY, &mut server).map(|()| server)
    }

    /// The client `command` must exit 0 and print `expected`.
    fn check(&self, t: &mut Tally, name: &str, expected: &str, server: &Bg, command: Command) {
        self.check_in(t, name, expected, server, command, b"");
    }

    fn check_in(
        &self,
        t: &mut Tally,
        name: &str,
        expected: &str,
        server: &Bg,
        command: Command,
        stdin: &[u8],
    ) {
        let out = proc::run(command, stdin, CLIENT_DEADLINE);
        t.check(out.exited(0) && out.out() == expected, name, || {
            let want = expected.replace('\n', " ");
            format!(
                "  want exit 0 and: {want}\n{}\n{}",
                out.describe(),
                server.describe()
            )
        });
    }
}

fn ours(args: &[&str]) -> Command {
    let mut command = Command::new(rpc_server_bin());
    command.args(args);
    command
}

fn our_client(args: &[&str]) -> Command {
    let mut command = Command::new(rpc_client_bin());
    command.args(args);
    command
}

/// Fails every check of `names`: their server was not ready.
fn not_ready(t: &mut Tally, names: &[&str], why: &str) {
    for name in names {
        t.fail(&format!("{name} (the server was not ready)"), why);
    }
}

/// Stops `server` with SIGTERM: it must exit 0 (check `name`).
fn stops_clean(t: &mut Tally, name: &str, mut server: Bg) {
    let stopped = server.stop(STOP);
    t.check(stopped == Ok(0), name, || {
        format!("  {stopped:?}\n{}", server.describe())
    });
}

#[test]
#[ignore = "run by scripts/interop.sh, which prepares the Python venv"]
fn interop() {
    let root = repo_root();
    let default_python = root.join("target/py-venv/bin/python").display().to_string();
    let run = Run {
        python: env_or("INTEROP_PYTHON", &default_python),
        peers: root.join("scripts/interop"),
        logs: fresh_log_dir("interop"),
        node_path: env_or(
            "INTEROP_NODE_PATH",
            &root
                .join("target/node-peers/node_modules")
                .display()
                .to_string(),
        ),
    };
    let flavours = env_or("INTEROP_FLAVOURS", "classic durable quorum");
    let flavours: Vec<&str> = flavours.split_whitespace().collect();
    for fl in &flavours {
        assert!(
            ["classic", "durable", "quorum"].contains(fl),
            "INTEROP_FLAVOURS: unknown flavour '{fl}' (classic, durable, quorum)"
        );
    }
    let mut t = Tally::new("interop");
    for fl in &flavours {
        flavour(&run, &mut t, fl);
    }
    own_declaration(&run, &mut t, "durable", &[]);
    lines_server(&run, &mut t);
    error_reply(&run, &mut t);
    tutorial_bad_bodies(&run, &mut t);
    for peer in [Otel::Pika, Otel::Amqplib] {
        otel_their_client(&run, &mut t, peer);
        otel_their_server(&run, &mut t, peer, Some(OTEL_PARENT));
        otel_their_server(&run, &mut t, peer, None);
    }
    if flavours.contains(&"classic") {
        own_declaration(&run, &mut t, "classic", &["--transient"]);
    }
    t.finish();
}

/// (a) to (d) on a queue of flavour `fl`.
fn flavour(run: &Run, t: &mut Tally, fl: &str) {
    let guard = QueueGuard::new(&format!("interop-{fl}"));
    let q = guard.name();
    let theirs = |name: &str| {
        let mut args = vec!["--queue", q];
        let flag = format!("--{fl}");
        if fl != "classic" {
            args.push(&flag);
        }
        run.server(run.py("rpc_server.py", &args), &format!("{fl}-{name}"), q)
    };
    // (a) their client -> our server; the tutorial server declares the queue first.
    match theirs("predeclare") {
        Ok(mut server) => drop(server.stop(STOP)),
        Err(why) => t.fail(&format!("{fl}: tutorial server declares {q}"), &why),
    }
    their_client_our_server(run, t, fl, q);
    // (b) our client -> their server, and (d) our client's `call` -> their server.
    let b1 = format!("{fl}: our client -> their server");
    let d1 = format!("{fl}: our client (call, raw body 30) -> their server");
    match theirs("their-server") {
        Ok(mut server) => {
            let args = [&["--queue", q, "--timeout", CALL_TIMEOUT][..], &NS].concat();
            run.check(t, &b1, EXPECTED, &server, our_client(&args));
            let args = ["--queue", q, "--timeout", CALL_TIMEOUT, "call", "30"];
            run.check(t, &d1, "832040", &server, our_client(&args));
            let _ = server.stop(STOP);
        }
        Err(why) => not_ready(t, &[&b1, &d1], &why),
    }
    command_server(run, t, fl, q);
}

/// (a): their client, own reply queue and direct reply-to, -> our server on the existing queue.
fn their_client_our_server(run: &Run, t: &mut Tally, fl: &str, q: &str) {
    let a1 = format!("{fl}: their client -> our server");
    let a2 = format!("{fl}: their client (direct reply-to) -> our server");
    let a3 = format!("{fl}: our server exits 0 on SIGTERM");
    let server = run.server(ours(&["--queue", q]), &format!("{fl}-our-server"), q);
    let server = match server {
        Ok(server) => server,
        Err(why) => return not_ready(t, &[&a1, &a2, &a3], &why),
    };
    let declare = format!("--declare-{fl}");
    let args = [
        &["--queue", q, &declare, "--timeout", CALL_TIMEOUT][..],
        &NS,
    ]
    .concat();
    run.check(t, &a1, EXPECTED, &server, run.py("rpc_client.py", &args));
    let args = [
        &["--queue", q, "--direct-reply-to", "--timeout", CALL_TIMEOUT][..],
        &NS,
    ]
    .concat();
    run.check(t, &a2, EXPECTED, &server, run.py("rpc_client.py", &args));
    stops_clean(t, &a3, server);
}

/// (c) their raw client -> our command server, and (d) our `call` -> it.
/// Their client (raw) -> our server keeping a Python handler (`--protocol lines`, issue 20):
/// `rpc-server/examples/stream/upper_lines.py`, started once for all three calls.
fn lines_server(run: &Run, t: &mut Tally) {
    let guard = QueueGuard::new("interop-lines");
    let q = guard.name();
    let l1 = "their client (raw) -> our server --protocol lines -- python3 upper_lines.py";
    let l2 = "our lines server started its Python program once for the three calls";
    let l3 = "our lines server exits 0 on SIGTERM";
    let example = repo_root().join("rpc-server/examples/stream/upper_lines.py");
    let example = example.display().to_string();
    let command = ours(&[
        "--queue",
        q,
        "--protocol",
        "lines",
        "--",
        "python3",
        &example,
    ]);
    let server = match run.server(command, "our-lines-server", q) {
        Ok(server) => server,
        Err(why) => return not_ready(t, &[l1, l2, l3], &why),
    };
    let bodies = ["hello", "two words", "ünïcode"];
    let args = [
        &["--raw", "--queue", q, "--timeout", CALL_TIMEOUT][..],
        &bodies,
    ]
    .concat();
    let expected = "HELLO\nTWO WORDS\nÜNÏCODE";
    run.check(t, l1, expected, &server, run.py("rpc_client.py", &args));
    let starts = server.stderr().matches("started `").count();
    t.check(starts == 1, l2, || {
        format!("  started {starts} times (want 1)\n{}", server.describe())
    });
    stops_clean(t, l3, server);
}

fn command_server(run: &Run, t: &mut Tally, fl: &str, q: &str) {
    let c1 = format!("{fl}: their client (raw) -> our server -- tr a-z A-Z");
    let c2 = format!("{fl}: their client (raw, direct reply-to) -> our server -- tr a-z A-Z");
    let c3 = format!("{fl}: our command server exits 0 on SIGTERM");
    let d2 = format!("{fl}: our client (call) -> our server -- tr a-z A-Z");
    let d3 = format!("{fl}: our client (call -, body on stdin) -> our server -- tr a-z A-Z");
    let command = ours(&["--queue", q, "--", "tr", "a-z", "A-Z"]);
    let server = match run.server(command, &format!("{fl}-our-cmd-server"), q) {
        Ok(server) => server,
        Err(why) => return not_ready(t, &[&c1, &c2, &c3, &d2, &d3], &why),
    };
    let expected = RAW_EXPECTED.join("\n");
    let raw = ["--raw", "--queue", q, "--timeout", CALL_TIMEOUT];
    let args = [&raw[..], &RAW_BODIES].concat();
    run.check(t, &c1, &expected, &server, run.py("rpc_client.py", &args));
    let args = [&raw[..], &["--direct-reply-to"], &RAW_BODIES].concat();
    run.check(t, &c2, &expected, &server, run.py("rpc_client.py", &args));
    let call = ["--queue", q, "--timeout", CALL_TIMEOUT, "call"];
    let args = [&call[..], &RAW_BODIES].concat();
    run.check(t, &d2, &expected, &server, our_client(&args));
    let args = [&call[..], &["-"]].concat();
    let body = RAW_BODIES[1].as_bytes();
    run.check_in(t, &d3, RAW_EXPECTED[1], &server, our_client(&args), body);
    stops_clean(t, &c3, server);
}

/// Our server declares a fresh queue; a client declaring it as `fl` must be accepted as
/// equivalent (else the broker closes its channel with 406).
fn own_declaration(run: &Run, t: &mut Tally, fl: &str, server_flags: &[&str]) {
    let guard = QueueGuard::new(&format!("interop-{fl}-own"));
    let q = guard.name();
    let described = [&[fl][..], server_flags].concat().join(" ");
    let name = format!("{fl}: our server's declaration ({described}) matches the peer's");
    let args = [&["--queue", q][..], server_flags].concat();
    match run.server(ours(&args), &format!("own-{fl}-our-server"), q) {
        Ok(mut server) => {
            let declare = format!("--declare-{fl}");
            let args = ["--queue", q, &declare, "--timeout", CALL_TIMEOUT, "10"];
            run.check(t, &name, "55", &server, run.py("rpc_client.py", &args));
            let _ = server.stop(STOP);
        }
        Err(why) => not_ready(t, &[&name], &why),
    }
}

/// Our server serving a command that fails: the clients get an error reply.
fn error_reply(run: &Run, t: &mut Tally) {
    let guard = QueueGuard::new("interop-error");
    let q = guard.name();
    let e1 = "error reply: their client (raw) <- our server -- failing command";
    let e2 = "error reply: our client (call) <- our server -- failing command";
    let fails = "cat >/dev/null; echo \"no such record\" >&2; exit 3";
    let command = ours(&["--queue", q, "--", "sh", "-c", fails]);
    let mut server = match run.server(command, "error-our-server", q) {
        Ok(server) => server,
        Err(why) => return not_ready(t, &[e1, e2], &why),
    };
    let want =
        "error reply (x-rpc-error: exec-failed): the command exited with status 3: no such record";
    let args = [
        "--raw",
        "--error-replies",
        "--queue",
        q,
        "--timeout",
        CALL_TIMEOUT,
        "x",
    ];
    let out = proc::run(run.py("rpc_client.py", &args), b"", CLIENT_DEADLINE);
    check_error(t, e1, &out, want, &server);
    let args = ["--queue", q, "--timeout", CALL_TIMEOUT, "call", "x"];
    let out = proc::run(our_client(&args), b"", CLIENT_DEADLINE);
    check_error(t, e2, &out, "no such record", &server);
    let _ = server.stop(STOP);
}

/// Tutorial clients that read any reply as the result (pika's `int(body)`, amqplib's text as
/// is) send bad bodies to our Fibonacci server: they must get no reply (no ` [.] Got` line,
/// "no reply" on stderr within [`TUTORIAL_WAIT`]), while a valid body is answered.
fn tutorial_bad_bodies(run: &Run, t: &mut Tally) {
    let guard = QueueGuard::new("interop-tutorial-bad");
    let q = guard.name();
    let peers = ["pika", "amqplib"];
    let names: Vec<String> = peers
        .iter()
        .flat_map(|peer| {
            ["30", "-1", "abc"]
                .map(|body| format!("tutorial client ({peer}) {body:?} -> our server"))
        })
        .collect();
    let mut server = match run.server(ours(&["--queue", q]), "tutorial-bad-our-server", q) {
        Ok(server) => server,
        Err(why) => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            return not_ready(t, &names, &why);
        }
    };
    let wait = TUTORIAL_WAIT.as_secs().to_string();
    let mut names = names.iter();
    for peer in peers {
        for body in ["30", "-1", "abc"] {
            let args = [body, "--queue", q, "--timeout", &wait];
            let command = match peer {
                "pika" => run.py("tutorial_client.py", &args),
                _ => run.node("tutorial_client.js", &args),
            };
            let out = proc::run(command, b"", CLIENT_DEADLINE);
            let name = names.next().map_or("", String::as_str);
            if body == "30" {
                let want = " [.] Got 832040";
                t.check(out.exited(0) && out.out() == want, name, || {
                    format!("  want exit 0 and '{want}'\n{}", out.describe())
                });
                continue;
            }
            let unanswered = !out.exited(0)
                && !out.out().contains("[.] Got")
                && out.stderr.contains("no reply within");
            t.check(unanswered, name, || {
                format!(
                    "  want no reply (exit 1, 'no reply within' on stderr, no ' [.] Got')\n{}\n{}",
                    out.describe(),
                    server.describe()
                )
            });
        }
    }
    let logged = server
        .stderr()
        .matches("not replying (bad-request)")
        .count();
    t.check(
        logged == 4,
        "our server logs each bad body it leaves unanswered",
        || format!("  {logged} lines (want 4)\n{}", server.describe()),
    );
    let _ = server.stop(STOP);
}

/// The client exited 5 with `want` in its stderr.
fn check_error(t: &mut Tally, name: &str, out: &Output, want: &str, server: &Bg) {
    t.check(out.exited(5) && out.stderr.contains(want), name, || {
        format!(
            "  want exit 5 and '{want}' on stderr\n{}\n{}",
            out.describe(),
            server.describe()
        )
    });
}

/// Their instrumented client -> our server: the peer checks its spans and the replies'
/// traceparent; our server's log names the trace of both calls.
fn otel_their_client(run: &Run, t: &mut Tally, peer: Otel) {
    let guard = QueueGuard::new("interop-otel");
    let q = guard.name();
    let o1 = format!(
        "trace context: their instrumented client ({}) -> our server, one trace",
        peer.name()
    );
    let o1 = o1.as_str();
    let name = format!("otel-our-server-{}", peer.name());
    let mut server = match run.server(ours(&["--queue", q]), &name, q) {
        Ok(server) => server,
        Err(why) => return not_ready(t, &[o1], &why),
    };
    let args = [
        "client",
        "--queue",
        q,
        "--timeout",
        CALL_TIMEOUT,
        "10",
        "30",
    ];
    let out = proc::run(run.otel(peer, &args), b"", CLIENT_DEADLINE);
    let _ = server.stop(STOP);
    let tid = out.stderr.lines().find_map(|line| {
        let id = line.strip_prefix("trace ")?;
        (id.len() == 32
            && id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then_some(id)
    });
    let logged = tid.map_or(0, |id| {
        server.stderr().matches(&format!("(trace {id})")).count()
    });
    let ok = out.exited(0) && out.out() == "55\n832040" && tid.is_some() && logged == 2;
    t.check(ok, o1, || {
        let shown = format!("trace {tid:?}, logged by our server {logged} times (want 2)");
        format!("  {shown}\n{}\n{}", out.describe(), server.describe())
    });
}

/// The trace id of the parent our client gets in TRACEPARENT.
const OTEL_PARENT: &str = "0af7651916cd43dd8448eb211c80319c";

/// Our client -> their instrumented server, tracing by `TRACEPARENT` (a child of the trace
/// `parent`) or, without a parent, by `--trace` (a new trace): one trace id in their spans,
/// our reply's traceparent and `call --json`'s output.
fn otel_their_server(run: &Run, t: &mut Tally, peer: Otel, parent: Option<&str>) {
    let guard = QueueGuard::new("interop-otel-their");
    let q = guard.name();
    let how = if parent.is_some() {
        "TRACEPARENT"
    } else {
        "--trace"
    };
    let o2 = format!(
        "trace context: our client ({how}) -> their instrumented server ({}), one trace",
        peer.name()
    );
    let o2 = o2.as_str();
    let args = ["server", "--queue", q, "--count", "1"];
    let name = format!("otel-their-server-{}", peer.name());
    let mut server = match run.server(run.otel(peer, &args), &name, q) {
        Ok(server) => server,
        Err(why) => return not_ready(t, &[o2], &why),
    };
    let mut flags = vec!["--queue", q, "--timeout", CALL_TIMEOUT];
    if parent.is_none() {
        flags.push("--trace");
    }
    flags.extend(["call", "--json", "10"]);
    let mut client = our_client(&flags);
    if let Some(parent) = parent {
        client.env("TRACEPARENT", format!("00-{parent}-b7ad6b7169203331-01"));
    }
    let out = proc::run(client, b"", CLIENT_DEADLINE);
    // Their server exits after the one request, printing the trace id its spans share.
    let exit = server.wait_exit(STOP);
    let theirs = server.stdout();
    let theirs = theirs.trim_end();
    let json = &out.stdout;
    let ok = out.exited(0)
        && exit.is_some_and(|s| s.success())
        && parent.is_none_or(|parent| theirs == parent)
        && theirs.len() == 32
        && json.contains(&format!("\"trace_id\": \"{theirs}\""))
        && json.contains(&format!("\"traceparent\": \"00-{theirs}-"))
        && json.contains("\"body\": \"55\"");
    t.check(ok, o2, || {
        let theirs = proc::tail(theirs, 3);
        format!(
            "  their server: {exit:?}, printed:\n{theirs}\n{}\n{}",
            out.describe(),
            server.describe()
        )
    });
}
