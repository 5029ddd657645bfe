//! The markdown report of `scripts/bench.sh`, made from the facts the script collected.
//!
//! Facts are tab-separated lines, the first field naming the kind:
//!
//! - `set KEY VALUE`: a setting or a header line (`mode`, `date`, `machine`, `software`,
//!   `broker`, `warmup`, `repeat`, `seq_calls`, `inflight_calls`, `py_calls`, `prefetch`,
//!   `depths` and `fib_ns` (space-separated), `oneshot_runs`, `oneshot_how`, `h_seq_calls`,
//!   `h_inflight_calls`, `only` (the letters of the row groups measured), `elapsed`);
//! - `run ID LINE...`: one run of a calls/s row, the last line of a `--tsv` bench output
//!   (calls/s in its column 6, p50 in 7, p99 in 9, failed calls in 11); the best run is shown;
//! - `rss ID KB`: a peak RSS (the largest of an ID's counts);
//! - `oneshot ID SECONDS`: a one-shot wall time (the median of an ID's times is shown);
//! - `fib WHO N DIGITS COMPUTE_MS DECIMAL_MS TOTAL_MS` (WHO: `ours`, `gmp`, `gmpy2`);
//! - `failed ID`: a measurement that failed twice.

use anyhow::{bail, Context as _, Result};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

const REPLY_QUEUES: [&str; 2] = ["exclusive", "direct"];

/// The row groups, by the first letter of their ids (`BENCH_ONLY` picks some).
const GROUPS: &str = "abcdefgh";

/// Calls in flight in the `h8-*` rows (and their servers' prefetch).
const H_DEPTH: u64 = 8;

#[derive(Default)]
struct Row {
    runs: Vec<u64>,
    best: Option<(u64, String, String)>, // calls/s, p50, p99 of the best run
    errors: u64,
}

#[derive(Default)]
struct Facts {
    set: HashMap<String, String>,
    rows: HashMap<String, Row>,
    rss: BTreeMap<String, u64>,
    oneshot: HashMap<String, Vec<f64>>,
    fib: HashMap<(String, u64), [String; 4]>,
    failed: Vec<String>,
}

impl Facts {
    fn parse(text: &str) -> Result<Facts> {
        let mut facts = Facts::default();
        for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
            let fields: Vec<&str> = line.split('\t').collect();
            facts
                .add(&fields)
                .with_context(|| format!("bench facts, line {}: '{line}'", number + 1))?;
        }
        Ok(facts)
    }

    fn add(&mut self, f: &[&str]) -> Result<()> {
        let num = |i: usize| -> Result<f64> {
            let text = f.get(i).copied().unwrap_or("");
            text.trim()
                .parse()
                .with_context(|| format!("field {} is not a number", i + 1))
        };
        match (f[0], f.len()) {
            ("set", 3) => {
                self.set.insert(f[1].into(), f[2].into());
            }
            ("run", n) if n >= 8 => {
                let column = |i: usize| f.get(i + 1).map_or("", |v| v.trim());
                let rate = column(6).parse::<u64>().context("no calls/s in column 6")?;
                let row = self.rows.entry(f[1].into()).or_default();
                row.runs.push(rate);
                row.errors += column(11).parse::<u64>().unwrap_or(0);
                if row.best.as_ref().is_none_or(|(best, _, _)| rate > *best) {
                    row.best = Some((rate, column(7).into(), column(9).into()));
                }
            }
            ("rss", 3) => {
                let kb = num(2)? as u64;
                let entry = self.rss.entry(f[1].into()).or_default();
                *entry = (*entry).max(kb);
            }
            ("oneshot", 3) => self.oneshot.entry(f[1].into()).or_default().push(num(2)?),
            ("fib", 7) => {
                let n = num(2)? as u64;
                let values = [f[3], f[4], f[5], f[6]].map(|v| v.trim().to_string());
                self.fib.insert((f[1].into(), n), values);
            }
            ("failed", 2) => self.failed.push(f[1].into()),
            _ => bail!("unknown kind of fact or wrong number of fields"),
        }
        Ok(())
    }

    fn get(&self, key: &str) -> &str {
        self.set.get(key).map_or("", String::as_str)
    }

    fn list(&self, key: &str) -> Vec<u64> {
        self.get(key)
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect()
    }

    fn rate(&self, id: &str) -> Option<f64> {
        self.rows
            .get(id)?
            .best
            .as_ref()
            .map(|(rate, _, _)| *rate as f64)
    }

    fn rss(&self, id: &str) -> Option<f64> {
        self.rss.get(id).map(|&kb| kb as f64)
    }

    /// The median one-shot time of `id`, in ms.
    fn median_ms(&self, id: &str) -> Option<f64> {
        let mut times = self.oneshot.get(id)?.clone();
        if times.is_empty() {
            return None;
        }
        times.sort_by(f64::total_cmp);
        let mid = times.len() / 2;
        let median = if times.len() % 2 == 1 {
            times[mid]
        } else {
            (times[mid - 1] + times[mid]) / 2.0
        };
        Some(median * 1000.0)
    }

    /// The result cell of calls/s row `id`.
    fn cell(&self, id: &str) -> String {
        let Some(row) = self.rows.get(id) else {
            return "failed".into();
        };
        let Some((rate, p50, p99)) = &row.best else {
            return "failed".into();
        };
        let mut cell = format!("{rate} calls/s");
        if !p50.is_empty() {
            let _ = write!(cell, ", p50 {p50} ms, p99 {p99} ms");
        }
        if self.get("repeat") != "1" {
            let runs: Vec<String> = row.runs.iter().map(u64::to_string).collect();
            let _ = write!(cell, " (best of runs: {})", runs.join(", "));
        }
        if row.errors > 0 {
            let _ = write!(cell, ", **{} failed calls**", row.errors);
        }
        cell
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    }
}

/// The wall time per call that row `a` spends beyond its anchor `b` (rates in calls/s).
fn extra_per_call(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
            format!("{:+.3} ms per call", 1000.0 / a - 1000.0 / b)
        }
        _ => "n/a".into(),
    }
}

fn number(text: &str) -> Option<f64> {
    text.parse().ok()
}

fn mib(kb: Option<f64>) -> String {
    kb.map_or("n/a".into(), |kb| format!("{:.1} MiB", kb / 1024.0))
}

fn ms(value: Option<f64>) -> String {
    value.map_or("failed".into(), |ms| format!("{ms:.3} ms"))
}

fn label(depth: u64) -> String {
    if depth == 1 {
        "1 in flight (sequential)".into()
    } else {
        format!("{depth} in flight")
    }
}

/// scripts/bench.sh's settings as shell assignments, from `var` (its BENCH_* variables, the
/// defaults of a full run or, with BENCH_QUICK=1, of a quick smoke run).
pub fn settings(var: impl Fn(&str) -> Option<String>) -> Result<String> {
    let quick = match var("BENCH_QUICK").as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(other) => bail!("BENCH_QUICK must be 0 or 1, got '{other}'"),
    };
    let (seq, inflight, py, oneshot, repeat, warmup) = if quick {
        ("2000", "5000", "1000", "5", "1", "200")
    } else {
        ("20000", "100000", "10000", "20", "3", "500")
    };
    let (h_seq, h_inflight) = if quick {
        ("300", "600")
    } else {
        ("2000", "4000")
    };
    let fib_ns = if quick {
        "10000 100000 1000000"
    } else {
        "10000 100000 1000000 10000000"
    };
    let only = var("BENCH_ONLY").unwrap_or_else(|| GROUPS.into());
    if only.is_empty() || !only.chars().all(|c| GROUPS.contains(c)) {
        bail!("BENCH_ONLY must be letters of row groups among '{GROUPS}' (e.g. h), got '{only}'");
    }
    let mut out = format!("QUICK={}\nwarmup={warmup}\nONLY={only}\n", u8::from(quick));
    for (name, variable, default, max) in [
        ("REPEAT", "BENCH_REPEAT", repeat, u64::MAX),
        ("SEQ_CALLS", "BENCH_CALLS", seq, u64::MAX),
        ("INFLIGHT_CALLS", "BENCH_INFLIGHT_CALLS", inflight, u64::MAX),
        ("PY_CALLS", "BENCH_PY_CALLS", py, u64::MAX),
        ("H_SEQ_CALLS", "BENCH_H_CALLS", h_seq, u64::MAX),
        (
            "H_INFLIGHT_CALLS",
            "BENCH_H_INFLIGHT_CALLS",
            h_inflight,
            u64::MAX,
        ),
        ("ONESHOT_RUNS", "BENCH_ONESHOT_RUNS", oneshot, u64::MAX),
        ("PREFETCH", "BENCH_PREFETCH", "100", 65535),
        ("BROKER_WAIT_SECS", "BENCH_BROKER_WAIT", "120", u64::MAX),
        ("DEPTHS", "BENCH_DEPTHS", "8 64", 65535),
        ("FIB_NS", "BENCH_FIB_NS", fib_ns, u64::MAX),
    ] {
        let text = var(variable).unwrap_or_else(|| default.into());
        let values = text
            .split_whitespace()
            .map(|v| v.parse::<u64>().ok().filter(|&n| n >= 1 && n <= max))
            .collect::<Option<Vec<_>>>()
            .filter(|values| !values.is_empty())
            .with_context(|| {
                let limit = if max < u64::MAX {
                    format!(" up to {max}")
                } else {
                    String::new()
                };
                format!("{variable} must be a positive integer{limit}, got '{text}'")
            })?;
        if name == "DEPTHS" && values.contains(&1) {
            bail!("BENCH_DEPTHS: in-flight depths must be 2..65535 (1 is the sequential row)");
        }
        let values: Vec<String> = values.iter().map(u64::to_string).collect();
        if matches!(name, "DEPTHS" | "FIB_NS") {
            let _ = writeln!(out, "{name}=({})", values.join(" "));
        } else if values.len() == 1 {
            let _ = writeln!(out, "{name}={}", values[0]);
        } else {
            bail!("{variable} must be one positive integer, got '{text}'");
        }
    }
    Ok(out)
}

/// The whole report: header, table, flags and run time.
pub fn render(text: &str) -> Result<String> {
    let facts = Facts::parse(text)?;
    let f = &facts;
    let (seq, inflight, py) = (
        f.get("seq_calls"),
        f.get("inflight_calls"),
        f.get("py_calls"),
    );
    let prefetch = f.get("prefetch");
    let floor_setup =
        |p: &str| format!("echo thread (amiquip), prefetch {p}, exclusive reply queue");
    let confirmed_setup = |p: &str| {
        format!(
            "echo thread (amiquip), prefetch {p}, exclusive reply queue; replies confirmed, \
             each request acked after its reply's confirm (`--confirm`)"
        )
    };
    let ours_setup = |p: &str| format!("rpc-server ×1 (release, -q), prefetch {p}");
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut flags: Vec<String> = Vec::new();
    let mut row = |cells: [&str; 5]| rows.push(cells.map(String::from));
    // The bare floor flags below 0.95; the floor that pays for confirms (`-confirm`: one
    // confirmed publish per call, as rpc-client's requests have) below 0.85.
    let below_floor = |flags: &mut Vec<String>, id: &str, anchor: &str| {
        let bar = if anchor.ends_with("-confirm") {
            0.85
        } else {
            0.95
        };
        if let (Some(a), Some(b)) = (f.rate(id), f.rate(anchor)) {
            let r = a / b;
            if b > 0.0 && format!("{r:.3}").parse::<f64>().unwrap_or(r) < bar {
                flags.push(format!(
                    "{id}: {r:.3} × the echo floor {anchor} (below {bar:.2})"
                ));
            }
        }
    };
    let confirmed_floor = |rows: &mut Vec<[String; 5]>, anchor: &str, what: String, p: &str| {
        let id = format!("{anchor}-confirm");
        rows.push([
            id.clone(),
            what,
            confirmed_setup(p),
            f.cell(&id),
            format!("anchor; {} × {anchor}", ratio(f.rate(&id), f.rate(anchor))),
        ]);
    };

    row([
        "a1",
        &format!("echo floor, {}, {seq} calls", label(1)),
        &floor_setup("1"),
        &f.cell("a1"),
        "anchor",
    ]);
    confirmed_floor(
        &mut rows,
        "a1",
        format!("echo floor with confirms, {}, {seq} calls", label(1)),
        "1",
    );
    for k in f.list("depths") {
        let id = format!("a{k}");
        let what = format!("echo floor, {}, {inflight} calls", label(k));
        rows.push([
            id.clone(),
            what,
            floor_setup(prefetch),
            f.cell(&id),
            "anchor".into(),
        ]);
        let what = format!("echo floor with confirms, {}, {inflight} calls", label(k));
        confirmed_floor(&mut rows, &id, what, prefetch);
    }
    let mut row = |cells: [&str; 5]| rows.push(cells.map(String::from));
    for rq in REPLY_QUEUES {
        let id = format!("b-{rq}");
        row([
            &id,
            &format!("tutorial Python client (pika), sequential, {rq} reply queue, {py} calls"),
            &ours_setup("1"),
            &f.cell(&id),
            &format!("{} × a1", ratio(f.rate(&id), f.rate("a1"))),
        ]);
    }
    for rq in REPLY_QUEUES {
        let (id, py_id) = (format!("c-{rq}"), format!("b-{rq}"));
        row([
            &id,
            &format!(
                "rpc-client bench, {}, {rq} reply queue, {seq} calls",
                label(1)
            ),
            &ours_setup("1"),
            &f.cell(&id),
            &format!(
                "{} × a1; {} × a1-confirm; {} × {py_id}",
                ratio(f.rate(&id), f.rate("a1")),
                ratio(f.rate(&id), f.rate("a1-confirm")),
                ratio(f.rate(&id), f.rate(&py_id))
            ),
        ]);
        below_floor(&mut flags, &id, "a1");
        below_floor(&mut flags, &id, "a1-confirm");
        if let (Some(ours), Some(theirs)) = (f.rate(&id), f.rate(&py_id)) {
            if ours < theirs {
                flags.push(format!(
                    "{id}: slower than the Python tutorial client {py_id}"
                ));
            }
        }
    }
    for k in f.list("depths") {
        for rq in REPLY_QUEUES {
            let (id, anchor) = (format!("d{k}-{rq}"), format!("a{k}"));
            row([
                &id,
                &format!(
                    "rpc-client bench, {}, {rq} reply queue, {inflight} calls",
                    label(k)
                ),
                &ours_setup(prefetch),
                &f.cell(&id),
                &format!(
                    "{} × {anchor}; {} × {anchor}-confirm",
                    ratio(f.rate(&id), f.rate(&anchor)),
                    ratio(f.rate(&id), f.rate(&format!("{anchor}-confirm")))
                ),
            ]);
            below_floor(&mut flags, &id, &anchor);
            below_floor(&mut flags, &id, &format!("{anchor}-confirm"));
        }
    }
    let mut with_errors: Vec<_> = f.rows.iter().filter(|(_, r)| r.errors > 0).collect();
    with_errors.sort_by_key(|(id, _)| id.as_str());
    for (id, r) in with_errors {
        flags.push(format!("{id}: {} failed calls", r.errors));
    }

    let (runs, how) = (f.get("oneshot_runs"), f.get("oneshot_how"));
    let python = f.median_ms("e-python");
    for (id, command) in [
        ("e-ours", "rpc-client 30"),
        ("e-ours-direct", "rpc-client --reply-queue direct 30"),
    ] {
        row([
            id,
            &format!("one-shot `{command}`: median wall time of {runs} runs ({how})"),
            &ours_setup("1"),
            &ms(f.median_ms(id)),
            &format!(
                "{} × e-python (lower is better)",
                ratio(f.median_ms(id), python)
            ),
        ]);
    }
    row([
        "e-python",
        &format!("one-shot `python rpc_client.py 30` (tutorial client): median of {runs} runs"),
        &ours_setup("1"),
        &ms(python),
        "anchor",
    ]);
    if let (Some(theirs), Some(ours)) = (python, f.median_ms("e-ours")) {
        if theirs < ours {
            flags.push("e-ours: slower than the Python one-shot client".into());
        }
    }

    for n in f.list("fib_ns") {
        let id = format!("f-{n}");
        let fib = |who: &str| f.fib.get(&(who.to_string(), n));
        let (Some(o), Some(g)) = (fib("ours"), fib("gmpy2")) else {
            row([
                &id,
                &format!("fib({n}) + decimal"),
                "best of runs",
                "failed",
                "n/a",
            ]);
            continue;
        };
        let v = |cells: &[String; 4], i: usize| number(&cells[i]);
        let runs = if n <= 100_000 {
            20
        } else if n <= 1_000_000 {
            5
        } else {
            2
        };
        let runs = format!("best of {runs} runs each");
        row([
            &id,
            &format!(
                "fib({n}) + to decimal ({} digits): ours (dashu-int, default) vs gmpy2 (GMP)",
                o[0]
            ),
            &runs,
            &format!(
                "ours {} ms ({} + {}); gmpy2 {} ms ({} + {})",
                o[3], o[1], o[2], g[3], g[1], g[2]
            ),
            &format!(
                "{} × gmpy2 (compute {}, decimal {}; lower is better)",
                ratio(v(o, 3), v(g, 3)),
                ratio(v(o, 1), v(g, 1)),
                ratio(v(o, 2), v(g, 2))
            ),
        ]);
        if let Some(x) = fib("gmp") {
            row([
                &format!("{id}-gmp"),
                &format!("fib({n}) + to decimal: ours built with --features gmp vs gmpy2"),
                &runs,
                &format!("ours {} ms ({} + {}); gmpy2 {} ms", x[3], x[1], x[2], g[3]),
                &format!(
                    "{} × gmpy2 (compute {}, decimal {})",
                    ratio(v(x, 3), v(g, 3)),
                    ratio(v(x, 1), v(g, 1)),
                    ratio(v(x, 2), v(g, 2))
                ),
            ]);
        }
    }

    let biggest = f
        .rss
        .iter()
        .filter(|(id, _)| id.starts_with('c') || id.starts_with('d'))
        .max_by_key(|(_, &kb)| kb)
        .map(|(id, _)| id.as_str());
    let idle = f.rss("server_idle");
    row([
        "g-server-idle",
        "peak RSS (VmHWM) of rpc-server, idle after start",
        &ours_setup("1"),
        &mib(idle),
        "anchor",
    ]);
    row([
        "g-server-seq",
        "peak RSS of that rpc-server after rows b, c, e",
        &ours_setup("1"),
        &mib(f.rss("server_seq")),
        &format!("{} × g-server-idle", ratio(f.rss("server_seq"), idle)),
    ]);
    row([
        "g-server-inflight",
        "peak RSS of rpc-server after the in-flight rows d",
        &ours_setup(prefetch),
        &mib(f.rss("server_inflight")),
        &format!("{} × g-server-idle", ratio(f.rss("server_inflight"), idle)),
    ]);
    let (ours, theirs) = (f.rss("oneshot-ours"), f.rss("oneshot-python"));
    row([
        "g-oneshot-ours",
        "peak RSS of one-shot `rpc-client 30` (GNU time %M, max of 3)",
        &ours_setup("1"),
        &mib(ours),
        &format!("{} × g-oneshot-python", ratio(ours, theirs)),
    ]);
    row([
        "g-oneshot-python",
        "peak RSS of one-shot `python rpc_client.py 30` (tutorial client)",
        &ours_setup("1"),
        &mib(theirs),
        "anchor",
    ]);
    let big = biggest.and_then(|id| f.rss(id));
    row([
        "g-client-bench",
        &format!(
            "peak RSS of the largest rpc-client bench run ({})",
            biggest.unwrap_or("none")
        ),
        &format!("as in {}", biggest.unwrap_or("n/a")),
        &mib(big),
        &format!("{} × g-oneshot-ours", ratio(big, ours)),
    ]);

    // (h) the cost of a process per request: the same client against Fibonacci and `cat`.
    for (k, calls) in [
        (1, f.get("h_seq_calls")),
        (H_DEPTH, f.get("h_inflight_calls")),
    ] {
        let anchor = format!("h{k}-fib");
        let what = format!(
            "rpc-client bench --n 30, {}, exclusive reply queue, {calls} calls",
            label(k)
        );
        let server = |how: &str| format!("rpc-server ×1 (release, -q){how}, prefetch {k}");
        row([
            &anchor,
            &what,
            &server(", Fibonacci"),
            &f.cell(&anchor),
            "anchor",
        ]);
        let mut compared = vec![(format!("h{k}-cat"), " `-- cat` (a process per request)")];
        if k > 1 {
            compared.push((
                format!("h{k}-cat-w2"),
                " `--workers 2 -- cat` (2 processes at once)",
            ));
        }
        for (id, how) in compared {
            row([
                &id,
                &what,
                &server(how),
                &f.cell(&id),
                &format!(
                    "{} × {anchor}; {}",
                    ratio(f.rate(&id), f.rate(&anchor)),
                    extra_per_call(f.rate(&id), f.rate(&anchor))
                ),
            ]);
        }
    }

    if !f.failed.is_empty() {
        flags.push(format!(
            "not measured (failed twice): {}",
            f.failed.join(" ")
        ));
    }

    let only = match f.get("only") {
        "" => GROUPS,
        only => only,
    };
    rows.retain(|cells| cells[0].chars().next().is_some_and(|c| only.contains(c)));

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# rabbit-rpc bench ({} run), {}\n",
        f.get("mode"),
        f.get("date")
    );
    let _ = writeln!(out, "- machine: {}", f.get("machine"));
    let _ = writeln!(out, "- software: {}", f.get("software"));
    let _ = writeln!(
        out,
        "- broker: {}, one queue per run; fib(30) per call; warm-up {} calls per row",
        f.get("broker"),
        f.get("warmup")
    );
    out.push_str("- ratio: this row ÷ the anchor named (calls/s: higher is better; ms, MiB: lower is better)\n");
    if only.contains('h') {
        out.push_str(
            "- rows h: the cost of a process per request: `rpc-server -- cat` runs `cat` once per \
             call and echoes the body `30`, which the Fibonacci client accepts as a decimal reply; \
             \"ms per call\": the wall time per call beyond the Fibonacci anchor's (1/rate − 1/anchor rate)\n",
        );
    }
    if only != GROUPS {
        let _ = writeln!(
            out,
            "- only the row groups {only} were measured (BENCH_ONLY)"
        );
    }
    out.push('\n');
    out.push_str("| row | measurement | setup | result | ratio |\n|---|---|---|---|---|\n");
    for cells in &rows {
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
    if flags.is_empty() && !only.contains(['c', 'd']) {
        out.push_str("Flags: none (no errors).\n");
    } else if flags.is_empty() {
        out.push_str(
            "Flags: none (every rpc-client row at least 0.95 × its echo floor and 0.85 × the \
             floor with confirms, no errors).\n",
        );
    } else {
        out.push_str("Flags:\n");
        for flag in &flags {
            let _ = writeln!(out, "- {flag}");
        }
    }
    let _ = writeln!(out, "\nrun time: {} s", f.get("elapsed"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_run_ratios_and_flags() {
        let facts = "set\trepeat\t2\nset\tdepths\t8\nset\tfib_ns\t10\n\
            run\ta1\t.\t.\t.\t.\t.\t1000\t0.9\t.\t1.5\t.\t0\n\
            run\tc-exclusive\t.\t.\t.\t.\t.\t800\t1.1\t.\t2.0\t.\t0\n\
            run\tc-exclusive\t.\t.\t.\t.\t.\t900\t1.0\t.\t1.9\t.\t3\n\
            oneshot\te-ours\t0.010\noneshot\te-ours\t0.030\noneshot\te-python\t0.1\n\
            fib\tours\t10\t2\t0.1\t0.1\t0.2\nfib\tgmpy2\t10\t2\t0.1\t0.1\t0.1\n\
            rss\td8-direct\t2048\nrss\td8-direct\t4096\n";
        let table = render(facts).expect("renders");
        assert!(table.contains("| c-exclusive | rpc-client bench, 1 in flight (sequential)"));
        assert!(table.contains(
            "900 calls/s, p50 1.0 ms, p99 1.9 ms (best of runs: 800, 900), **3 failed calls** | 0.90 × a1"
        ));
        assert!(table.contains("- c-exclusive: 0.900 × the echo floor a1 (below 0.95)"));
        assert!(table.contains("- c-exclusive: 3 failed calls"));
        assert!(table.contains("| e-ours | one-shot `rpc-client 30`"));
        assert!(table.contains("| 20.000 ms | 0.20 × e-python"));
        assert!(table.contains("| f-10 | fib(10) + to decimal (2 digits)"));
        assert!(table.contains("| 4.0 MiB |"), "{table}");
        assert!(table.contains("| b-direct |") && table.contains("| failed |"));
    }

    #[test]
    fn confirmed_echo_floor_rows() {
        let facts = "set\trepeat\t1\nset\tdepths\t64\nset\tprefetch\t100\n\
            run\ta1\t.\t.\t.\t.\t.\t1000\t\t\t\t\t0\n\
            run\ta1-confirm\t.\t.\t.\t.\t.\t800\t\t\t\t\t0\n\
            run\tc-exclusive\t.\t.\t.\t.\t.\t960\t0.3\t.\t0.5\t.\t0\n\
            run\ta64\t.\t.\t.\t.\t.\t30000\t\t\t\t\t0\n\
            run\ta64-confirm\t.\t.\t.\t.\t.\t20000\t\t\t\t\t0\n\
            run\td64-exclusive\t.\t.\t.\t.\t.\t16000\t2\t.\t3\t.\t0\n";
        let table = render(facts).expect("renders");
        assert!(
            table.contains("| a1-confirm | echo floor with confirms, 1 in flight (sequential)"),
            "{table}"
        );
        assert!(
            table.contains("| 800 calls/s | anchor; 0.80 × a1 |"),
            "{table}"
        );
        assert!(table.contains("| 0.96 × a1; 1.20 × a1-confirm; n/a × b-exclusive |"));
        assert!(
            table.contains("| 20000 calls/s | anchor; 0.67 × a64 |"),
            "{table}"
        );
        assert!(
            table.contains("| 0.53 × a64; 0.80 × a64-confirm |"),
            "{table}"
        );
        assert!(table.contains("- d64-exclusive: 0.800 × the echo floor a64-confirm (below 0.85)"));
        assert!(!table.contains("c-exclusive: 1.200"), "{table}");
    }

    #[test]
    fn process_per_request_rows() {
        let facts = "set\trepeat\t1\nset\th_seq_calls\t300\nset\th_inflight_calls\t600\n\
            run\th1-fib\t.\t.\t.\t.\t.\t1000\t0.9\t.\t1.5\t.\t0\n\
            run\th1-cat\t.\t.\t.\t.\t.\t400\t2.4\t.\t3.0\t.\t0\n\
            run\th8-fib\t.\t.\t.\t.\t.\t5000\t1.5\t.\t2.0\t.\t0\n\
            run\th8-cat\t.\t.\t.\t.\t.\t500\t16\t.\t20\t.\t0\n";
        let table = render(facts).expect("renders");
        let seq =
            "rpc-client bench --n 30, 1 in flight (sequential), exclusive reply queue, 300 calls";
        assert!(
            table.contains(&format!(
                "| h1-fib | {seq} | rpc-server ×1 (release, -q), Fibonacci, prefetch 1 \
                 | 1000 calls/s, p50 0.9 ms, p99 1.5 ms | anchor |"
            )),
            "{table}"
        );
        assert!(table.contains(&format!(
            "| h1-cat | {seq} | rpc-server ×1 (release, -q) `-- cat` (a process per request), \
             prefetch 1 | 400 calls/s, p50 2.4 ms, p99 3.0 ms | 0.40 × h1-fib; +1.500 ms per call |"
        )));
        assert!(table.contains("| h8-cat | rpc-client bench --n 30, 8 in flight, exclusive"));
        assert!(table.contains("| 0.10 × h8-fib; +1.800 ms per call |"));
        assert!(table.contains(
            "`--workers 2 -- cat` (2 processes at once), prefetch 8 | failed | n/a × h8-fib; n/a |"
        ));
        assert!(table.contains("- rows h: the cost of a process per request"));
        // Without BENCH_ONLY every group is shown; with it, only the groups measured.
        assert!(table.contains("| a1 |") && !table.contains("BENCH_ONLY"));
        let only = render(&format!("set\tonly\th\n{facts}")).expect("renders");
        assert!(
            only.contains("| h1-cat |") && only.contains("- only the row groups h were measured")
        );
        assert!(
            !only.contains("| a1 |") && !only.contains("| g-server-idle |"),
            "{only}"
        );
        assert!(only.contains("Flags: none (no errors)."), "{only}");
        let no_h = render("set\tonly\tabc\n").expect("renders");
        assert!(!no_h.contains("| h1-fib |") && !no_h.contains("rows h:"));
    }

    #[test]
    fn settings_defaults_and_errors() {
        let quick = settings(|name| (name == "BENCH_QUICK").then(|| "1".into())).expect("ok");
        assert!(
            quick.contains("QUICK=1\nwarmup=200\nONLY=abcdefgh\nREPEAT=1\n"),
            "{quick}"
        );
        assert!(
            quick.contains("H_SEQ_CALLS=300\nH_INFLIGHT_CALLS=600\n"),
            "{quick}"
        );
        let full = settings(|_| None).expect("ok");
        assert!(
            full.contains("H_SEQ_CALLS=2000\nH_INFLIGHT_CALLS=4000\n"),
            "{full}"
        );
        let only_h = settings(|name| (name == "BENCH_ONLY").then(|| "h".into())).expect("ok");
        assert!(only_h.contains("\nONLY=h\n"), "{only_h}");
        assert!(
            quick.contains("DEPTHS=(8 64)\n") && quick.contains("FIB_NS=(10000 100000 1000000)\n")
        );
        let bad = |var: &'static str, value: &'static str| {
            settings(move |name| (name == var).then(|| value.into())).expect_err(value)
        };
        assert!(format!("{:#}", bad("BENCH_PREFETCH", "70000")).contains("integer up to 65535"));
        assert!(format!("{:#}", bad("BENCH_DEPTHS", "1 8")).contains("1 is the sequential row"));
        bad("BENCH_CALLS", "many");
        bad("BENCH_REPEAT", "1 2");
        bad("BENCH_QUICK", "yes");
        bad("BENCH_H_CALLS", "0");
        bad("BENCH_H_INFLIGHT_CALLS", "-5");
        assert!(format!("{:#}", bad("BENCH_ONLY", "hx")).contains("among 'abcdefgh'"));
        bad("BENCH_ONLY", "h;rm");
    }

    #[test]
    fn bad_facts_are_refused_with_their_line() {
        let err = render("set\tmode\n").expect_err("too few fields");
        assert!(format!("{err:#}").contains("line 1"));
        assert!(render("run\ta1\t1\t2\t3\t4\t5\tfast\t\t\t\t\t0\n").is_err());
    }
}
