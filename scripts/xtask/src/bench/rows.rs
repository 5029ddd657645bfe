//! The calls/s rows, defined as data: each row says what it runs and what it is compared
//! with; [`phases`] groups them by the servers they need. The bench runs a phase by starting
//! its servers, running its rows `BENCH_REPEAT` times in turn (anchor and compared rows
//! alternating) and stopping the servers. A new row is a few lines here; the table is
//! rendered from these definitions (`table.rs`), the non-calls/s rows e, f, g by hand.

use super::settings::Settings;

/// What a calls/s row runs.
#[derive(Clone, Debug)]
pub enum Measure {
    /// `cargo bench --bench echo_floor`: the bare amiquip echo (publish, consume, publish
    /// back), no server; with `confirm`, replies confirmed and each request acked after it.
    EchoFloor {
        in_flight: u64,
        prefetch: u64,
        calls: u64,
        confirm: bool,
    },
    /// The tutorial's Python pika client, sequential (scripts/interop/bench_pika.py).
    Pika {
        server: &'static str,
        direct: bool,
        calls: u64,
    },
    /// `rpc-client bench --n 30` against a server of the phase, with `args` before `bench`.
    Client {
        server: &'static str,
        in_flight: u64,
        direct: bool,
        calls: u64,
        args: Vec<String>,
    },
}

/// One part of a row's ratio cell.
#[derive(Clone, Debug)]
pub enum Compare {
    /// "R × ID": this row's calls/s ÷ row ID's.
    Ratio(String),
    /// "+X ms per call": the wall time per call beyond row ID's.
    ExtraPerCall(String),
    /// Flag the row when below this share of row ID (an echo floor).
    Floor(String, f64),
    /// Flag the row when slower than row ID.
    NotSlower(String, &'static str),
}

#[derive(Clone, Debug)]
pub struct Row {
    pub id: String,
    pub what: String,
    pub setup: String,
    pub measure: Measure,
    /// An anchor: its ratio cell starts with "anchor".
    pub anchor: bool,
    pub compare: Vec<Compare>,
    /// Other row groups that need it measured (the d rows' RSS feeds row g).
    pub also_for: &'static str,
}

/// A server of a phase: on the queue `<run queue>-<name>`, with these rpc-server arguments.
#[derive(Clone, Debug)]
pub struct Server {
    pub name: &'static str,
    pub args: Vec<String>,
    /// Fetch its `/metrics` once a second while the phase runs (needs `--metrics-addr`).
    pub scraped: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Phase {
    /// The row groups it measures something for.
    pub groups: &'static str,
    pub servers: Vec<Server>,
    pub rows: Vec<Row>,
    /// Read the first server's peak RSS a second after start, as this id.
    pub rss_idle: Option<&'static str>,
    /// Read the first server's peak RSS at the end, as this id.
    pub rss_end: Option<&'static str>,
    /// After the rows, the one-shot rows e and the clients' peak RSS (g) on the first server.
    pub oneshots: bool,
    /// After the rows, one request of [`BIG_JSON_BYTES`] of control characters to this server
    /// (`--protocol json`), its peak RSS read before and after (row s1-json-rss).
    pub big_json: Option<&'static str>,
}

/// The body of the big json request of row s1-json-rss: 8 MiB, the default
/// `--max-request-bytes`.
pub const BIG_JSON_BYTES: usize = 8 << 20;

impl Row {
    pub fn group(&self) -> char {
        self.id.chars().next().unwrap_or('?')
    }
}

fn reply_queue(direct: bool) -> &'static str {
    if direct {
        "direct"
    } else {
        "exclusive"
    }
}

pub fn label(depth: u64) -> String {
    if depth == 1 {
        "1 in flight (sequential)".into()
    } else {
        format!("{depth} in flight")
    }
}

fn server(name: &'static str, prefetch: u64, more: &[&str]) -> Server {
    let mut args: Vec<String> = ["-q", "--prefetch"].map(String::from).to_vec();
    args.push(prefetch.to_string());
    args.extend(more.iter().map(|a| a.to_string()));
    Server {
        name,
        args,
        scraped: false,
    }
}

/// "rpc-server ×1 (release, -q)`<how>`, prefetch P": the setup cell of a row on a server.
pub fn ours(how: &str, prefetch: u64) -> String {
    format!("rpc-server ×1 (release, -q){how}, prefetch {prefetch}")
}

/// The echo floor a`K` and a`K`-confirm.
fn floors(depth: u64, prefetch: u64, calls: u64) -> [Row; 2] {
    let id = format!("a{depth}");
    let setup = format!("echo thread (amiquip), prefetch {prefetch}, exclusive reply queue");
    let measure = |confirm| Measure::EchoFloor {
        in_flight: depth,
        prefetch,
        calls,
        confirm,
    };
    let bare = Row {
        id: id.clone(),
        what: format!("echo floor, {}, {calls} calls", label(depth)),
        setup: setup.clone(),
        measure: measure(false),
        anchor: true,
        compare: vec![],
        also_for: "",
    };
    let confirmed = Row {
        id: format!("{id}-confirm"),
        what: format!("echo floor with confirms, {}, {calls} calls", label(depth)),
        setup: format!(
            "{setup}; replies confirmed, each request acked after its reply's confirm \
             (`--confirm`)"
        ),
        measure: measure(true),
        anchor: true,
        compare: vec![Compare::Ratio(id)],
        also_for: "",
    };
    [bare, confirmed]
}

/// An `rpc-client bench` row against `server`.
fn client(id: String, what: String, setup: String, measure: Measure) -> Row {
    Row {
        id,
        what,
        setup,
        measure,
        anchor: false,
        compare: vec![],
        also_for: "",
    }
}

/// `rpc-client bench` rows c (1 in flight, `in_flight` 1) or d`K`, in both reply queues,
/// each against its echo floors (flagged below 0.95 × the bare one and 0.85 × the one with
/// confirms).
fn ours_vs_floor(s: &Settings, in_flight: u64, direct: bool) -> Row {
    let (id, calls, prefetch) = if in_flight == 1 {
        ("c".to_string(), s.seq_calls, 1)
    } else {
        (format!("d{in_flight}"), s.inflight_calls, s.prefetch)
    };
    let rq = reply_queue(direct);
    let floor = format!("a{in_flight}");
    let mut row = client(
        format!("{id}-{rq}"),
        format!(
            "rpc-client bench, {}, {rq} reply queue, {calls} calls",
            label(in_flight)
        ),
        ours("", prefetch),
        Measure::Client {
            server: "main",
            in_flight,
            direct,
            calls,
            args: vec![],
        },
    );
    row.compare = vec![
        Compare::Ratio(floor.clone()),
        Compare::Ratio(format!("{floor}-confirm")),
        Compare::Floor(floor.clone(), 0.95),
        Compare::Floor(format!("{floor}-confirm"), 0.85),
    ];
    if in_flight > 1 {
        row.also_for = "g";
    }
    row
}

/// (a) K=1, (b), (c) on a prefetch-1 server; then (e) and (g) on it.
fn sequential(s: &Settings) -> Phase {
    let mut rows: Vec<Row> = floors(1, 1, s.seq_calls).into();
    for direct in [false, true] {
        let rq = reply_queue(direct);
        let mut pika = client(
            format!("b-{rq}"),
            format!(
                "tutorial Python client (pika), sequential, {rq} reply queue, {} calls",
                s.py_calls
            ),
            ours("", 1),
            Measure::Pika {
                server: "main",
                direct,
                calls: s.py_calls,
            },
        );
        pika.compare = vec![Compare::Ratio("a1".into())];
        rows.push(pika);
        let mut ours = ours_vs_floor(s, 1, direct);
        ours.compare.insert(2, Compare::Ratio(format!("b-{rq}")));
        let not_slower = "slower than the Python tutorial client";
        ours.compare
            .push(Compare::NotSlower(format!("b-{rq}"), not_slower));
        rows.push(ours);
    }
    Phase {
        groups: "abceg",
        servers: vec![server("main", 1, &[])],
        rows,
        rss_idle: Some("server_idle"),
        rss_end: Some("server_seq"),
        oneshots: true,
        ..Phase::default()
    }
}

/// (a) and (d) at each depth of BENCH_DEPTHS, on a prefetch-BENCH_PREFETCH server.
fn in_flight(s: &Settings) -> Phase {
    let mut rows = Vec::new();
    for &k in &s.depths {
        rows.extend(floors(k, s.prefetch, s.inflight_calls));
        rows.push(ours_vs_floor(s, k, false));
        rows.push(ours_vs_floor(s, k, true));
    }
    Phase {
        groups: "adg",
        servers: vec![server("main", s.prefetch, &[])],
        rows,
        rss_end: Some("server_inflight"),
        ..Phase::default()
    }
}

/// Calls in flight in the `h8-*` rows (and their servers' prefetch).
pub const H_DEPTH: u64 = 8;

/// Rows of servers side by side compared with the first, the anchor: (id suffix, server
/// arguments, how the setup cell says it). `group`: the row group letter.
fn side_by_side(
    group: &str,
    depth: u64,
    calls: u64,
    prefetch: u64,
    variants: &[(&'static str, &[&str], &str)],
) -> (Vec<Server>, Vec<Row>) {
    let what = format!(
        "rpc-client bench --n 30, {}, exclusive reply queue, {calls} calls",
        label(depth)
    );
    let anchor = format!("{group}{depth}-{}", variants[0].0);
    let (mut servers, mut rows) = (Vec::new(), Vec::new());
    for (i, &(name, args, how)) in variants.iter().enumerate() {
        servers.push(server(name, prefetch, args));
        let mut row = client(
            format!("{group}{depth}-{name}"),
            what.clone(),
            ours(how, prefetch),
            Measure::Client {
                server: name,
                in_flight: depth,
                direct: false,
                calls,
                args: vec![],
            },
        );
        row.anchor = i == 0;
        if i > 0 {
            row.compare = vec![
                Compare::Ratio(anchor.clone()),
                Compare::ExtraPerCall(anchor.clone()),
            ];
        }
        rows.push(row);
    }
    (servers, rows)
}

/// (h) the cost of a process per request: the Fibonacci server vs `-- cat`, side by side.
fn process_per_request(depth: u64, calls: u64) -> Phase {
    let mut variants: Vec<(&'static str, &[&str], &str)> = vec![
        ("fib", &[], ", Fibonacci"),
        ("cat", &["--", "cat"], " `-- cat` (a process per request)"),
    ];
    if depth > 1 {
        variants.push((
            "cat-w2",
            &["--workers", "2", "--", "cat"],
            " `--workers 2 -- cat` (2 processes at once)",
        ));
    }
    let (servers, rows) = side_by_side("h", depth, calls, depth, &variants);
    Phase {
        groups: "h",
        servers,
        rows,
        ..Phase::default()
    }
}

/// Depths of the rows m.
pub const M_DEPTHS: [u64; 2] = [1, 64];

/// (m) the cost of the metrics endpoint (issue 18): the same server with `--metrics-addr`,
/// scraped once a second by a thread of the bench, and without, side by side.
fn metrics(s: &Settings, depth: u64) -> Phase {
    let (calls, prefetch) = if depth == 1 {
        (s.seq_calls, 1)
    } else {
        (s.inflight_calls, s.prefetch)
    };
    let variants: [(&'static str, &[&str], &str); 2] = [
        ("plain", &[], ""),
        (
            "scraped",
            &["--metrics-addr", "127.0.0.1:0"],
            " `--metrics-addr 127.0.0.1:0`, /metrics fetched once a second",
        ),
    ];
    let (mut servers, rows) = side_by_side("m", depth, calls, prefetch, &variants);
    servers[1].scraped = true;
    Phase {
        groups: "m",
        servers,
        rows,
        ..Phase::default()
    }
}

/// The bench's Python handler (echoes each line), run kept and per request, by the venv's
/// interpreter when there is one (`python3` may be a shim that costs more than Python's start).
fn echo_py(more: &[&str]) -> Vec<String> {
    python_script("echo_lines.py", more)
}

/// `scripts/interop/SCRIPT ARGS...` run by the venv's Python, else `python3`.
fn python_script(script: &str, more: &[&str]) -> Vec<String> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let venv = format!("{root}/target/py-venv/bin/python");
    let python = if std::path::Path::new(&venv).exists() {
        venv
    } else {
        "python3".into()
    };
    let script = format!("{root}/scripts/interop/{script}");
    let mut command = vec![python, script];
    command.extend(more.iter().map(|a| a.to_string()));
    command
}

/// CPU per request of the kept handler in the rows s with workers, in ms.
const S_BURN_MS: &str = "2";

/// A server of the rows s on `--prefetch prefetch` running `cmd` with `--protocol protocol`.
fn stream_server(
    name: &'static str,
    prefetch: u64,
    workers: u64,
    protocol: &str,
    cmd: &[String],
) -> Server {
    let mut args: Vec<String> = vec!["-q".into(), "--prefetch".into(), prefetch.to_string()];
    args.extend([
        "--workers".into(),
        workers.to_string(),
        "--protocol".into(),
        protocol.into(),
        "--".into(),
    ]);
    args.extend(cmd.iter().cloned());
    Server {
        name,
        args,
        scraped: false,
    }
}

/// A row s against `server`, compared with `against` (ratio and time per call).
fn stream_row(
    id: &str,
    server: &'static str,
    depth: u64,
    calls: u64,
    setup: String,
    against: &[&str],
) -> Row {
    let mut row = client(
        id.into(),
        format!(
            "rpc-client bench --n 30, {}, exclusive reply queue, {calls} calls",
            label(depth)
        ),
        setup,
        Measure::Client {
            server,
            in_flight: depth,
            direct: false,
            calls,
            args: vec![],
        },
    );
    row.anchor = against.is_empty();
    for other in against {
        row.compare.push(Compare::Ratio((*other).into()));
    }
    row
}

/// (s) a program kept per worker (issue 20): sequentially, the Python echo handler kept
/// (`--protocol lines`) vs the built-in Fibonacci handler and vs the same handler started per
/// request, its json twin kept (and that server's peak RSS over one big request), and `cat`
/// kept; at 8 in flight, the kept Python handler with 1, 2 and 4 workers.
fn stream(s: &Settings, depth: u64) -> Phase {
    let py = echo_py(&[]);
    let cat = vec!["cat".to_string()];
    let (mut servers, mut rows) = (Vec::new(), Vec::new());
    if depth == 1 {
        let calls = s.h_seq_calls;
        servers.push(server("fib", 1, &[]));
        servers.push(stream_server("py-lines", 1, 1, "lines", &py));
        servers.push(stream_server("py-exec", 1, 1, "exec", &py));
        servers.push(stream_server("cat-lines", 1, 1, "lines", &cat));
        rows.push(stream_row(
            "s1-fib",
            "fib",
            1,
            calls,
            ours(", Fibonacci", 1),
            &[],
        ));
        let lines = " `--protocol lines -- python3 echo_lines.py` (kept)";
        rows.push(stream_row(
            "s1-py-lines",
            "py-lines",
            1,
            calls,
            ours(lines, 1),
            &["s1-fib", "s1-py-exec"],
        ));
        let exec = " `-- python3 echo_lines.py` (a process per request)";
        let exec_calls = (calls / 20).max(10);
        rows.push(stream_row(
            "s1-py-exec",
            "py-exec",
            1,
            exec_calls,
            ours(exec, 1),
            &["s1-fib"],
        ));
        servers.push(stream_server(
            "py-json",
            1,
            1,
            "json",
            &python_script("echo_json.py", &[]),
        ));
        let json = " `--protocol json -- python3 echo_json.py` (kept)";
        rows.push(stream_row(
            "s1-py-json",
            "py-json",
            1,
            calls,
            ours(json, 1),
            &["s1-fib", "s1-py-lines"],
        ));
        let cat_lines = " `--protocol lines -- cat` (kept)";
        rows.push(stream_row(
            "s1-cat-lines",
            "cat-lines",
            1,
            calls,
            ours(cat_lines, 1),
            &["s1-fib"],
        ));
    } else {
        let calls = s.h_inflight_calls;
        let burning = echo_py(&[S_BURN_MS]);
        for (name, workers) in [("py-w1", 1), ("py-w2", 2), ("py-w4", 4)] {
            servers.push(stream_server(name, depth, workers, "lines", &burning));
            let how = format!(
                " `--workers {workers} --protocol lines -- python3 echo_lines.py {S_BURN_MS}` \
                 ({S_BURN_MS} ms of CPU per request)"
            );
            let id = format!("s{depth}-{name}");
            let against: &[&str] = if workers == 1 { &[] } else { &["s8-py-w1"] };
            rows.push(stream_row(
                &id,
                name,
                depth,
                calls,
                ours(&how, depth),
                against,
            ));
        }
    }
    Phase {
        groups: "s",
        servers,
        rows,
        big_json: (depth == 1).then_some("py-json"),
        ..Phase::default()
    }
}

/// Every phase of calls/s rows, in the order they run.
pub fn phases(s: &Settings) -> Vec<Phase> {
    let mut phases = vec![
        sequential(s),
        in_flight(s),
        process_per_request(1, s.h_seq_calls),
        process_per_request(H_DEPTH, s.h_inflight_calls),
    ];
    phases.extend(M_DEPTHS.map(|depth| metrics(s, depth)));
    phases.extend([stream(s, 1), stream(s, H_DEPTH)]);
    phases
}

/// Every calls/s row, in the order of the table (by group, then as defined).
pub fn table_rows(s: &Settings) -> Vec<Row> {
    let mut rows: Vec<Row> = phases(s).into_iter().flat_map(|p| p.rows).collect();
    rows.sort_by_key(|row| super::settings::GROUPS.find(row.group()));
    rows
}
