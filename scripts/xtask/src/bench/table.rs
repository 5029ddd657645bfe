//! The markdown report: header, one table (the calls/s rows of `rows.rs`, and the one-shot,
//! fib and memory rows e, f, g), flags and run time.

use super::instructions;
use super::results::{extra_per_call, ratio, Results};
use super::rows::{self, Compare, Row};
use super::settings::{Settings, GROUPS};
use std::fmt::Write as _;

/// A rendered row: id, measurement, setup, result, ratio.
type Cells = [String; 5];

fn cells(cells: [&str; 5]) -> Cells {
    cells.map(String::from)
}

fn mib(kb: Option<f64>) -> String {
    kb.map_or("n/a".into(), |kb| format!("{:.1} MiB", kb / 1024.0))
}

fn ms(value: Option<f64>) -> String {
    value.map_or("failed".into(), |ms| format!("{ms:.3} ms"))
}

/// A calls/s row's cells, and its flags.
fn rate_row(row: &Row, r: &Results, s: &Settings, flags: &mut Vec<String>) -> Cells {
    let id = row.id.as_str();
    let mut parts: Vec<String> = Vec::new();
    if row.anchor {
        parts.push("anchor".into());
    }
    for compare in &row.compare {
        match compare {
            Compare::Ratio(other) => {
                parts.push(format!("{} × {other}", ratio(r.rate(id), r.rate(other))));
            }
            Compare::ExtraPerCall(other) => parts.push(extra_per_call(r.rate(id), r.rate(other))),
            Compare::Floor(floor, bar) => {
                if let (Some(a), Some(b)) = (r.rate(id), r.rate(floor)) {
                    let share = a / b;
                    // Compared as printed, so a flag never shows a share that reads as the bar.
                    let shown = format!("{share:.3}").parse::<f64>().unwrap_or(share);
                    if b > 0.0 && shown < *bar {
                        flags.push(format!(
                            "{id}: {share:.3} × the echo floor {floor} (below {bar:.2})"
                        ));
                    }
                }
            }
            Compare::NotSlower(other, why) => {
                if let (Some(a), Some(b)) = (r.rate(id), r.rate(other)) {
                    if a < b {
                        flags.push(format!("{id}: {why} {other}"));
                    }
                }
            }
        }
    }
    [
        row.id.clone(),
        row.what.clone(),
        row.setup.clone(),
        r.cell(id, s.repeat),
        parts.join("; "),
    ]
}

/// (e) one-shot wall times: rpc-client vs the tutorial's Python client.
fn oneshot_rows(r: &Results, s: &Settings, flags: &mut Vec<String>) -> Vec<Cells> {
    let (runs, how) = (s.oneshot_runs, &r.info.oneshot_how);
    let python = r.median_ms("e-python");
    let mut out = Vec::new();
    for (id, command) in [
        ("e-ours", "rpc-client 30"),
        ("e-ours-direct", "rpc-client --reply-queue direct 30"),
    ] {
        out.push(cells([
            id,
            &format!("one-shot `{command}`: median wall time of {runs} runs ({how})"),
            &rows::ours("", 1),
            &ms(r.median_ms(id)),
            &format!(
                "{} × e-python (lower is better)",
                ratio(r.median_ms(id), python)
            ),
        ]));
    }
    out.push(cells([
        "e-python",
        &format!("one-shot `python rpc_client.py 30` (tutorial client): median of {runs} runs"),
        &rows::ours("", 1),
        &ms(python),
        "anchor",
    ]));
    if let (Some(theirs), Some(ours)) = (python, r.median_ms("e-ours")) {
        if theirs < ours {
            flags.push("e-ours: slower than the Python one-shot client".into());
        }
    }
    out
}

/// (f) fib(n) + decimal: ours (and ours with GMP) vs gmpy2.
fn fib_rows(r: &Results, s: &Settings) -> Vec<Cells> {
    let mut out = Vec::new();
    for &n in &s.fib_ns {
        let id = format!("f-{n}");
        let fib = |who: &str| r.fib.get(&(who.to_string(), n));
        let (Some(o), Some(g)) = (fib("ours"), fib("gmpy2")) else {
            let what = format!("fib({n}) + decimal");
            out.push(cells([&id, &what, "best of runs", "failed", "n/a"]));
            continue;
        };
        let v = |cells: &[String; 4], i: usize| cells[i].parse::<f64>().ok();
        let parts = |x: &[String; 4]| {
            let (compute, decimal) = (ratio(v(x, 1), v(g, 1)), ratio(v(x, 2), v(g, 2)));
            (ratio(v(x, 3), v(g, 3)), compute, decimal)
        };
        let runs = if n <= 100_000 {
            20
        } else if n <= 1_000_000 {
            5
        } else {
            2
        };
        let runs = format!("best of {runs} runs each");
        let (total, compute, decimal) = parts(o);
        out.push(cells([
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
            &format!("{total} × gmpy2 (compute {compute}, decimal {decimal}; lower is better)"),
        ]));
        if let Some(x) = fib("gmp") {
            let (total, compute, decimal) = parts(x);
            out.push(cells([
                &format!("{id}-gmp"),
                &format!("fib({n}) + to decimal: ours built with --features gmp vs gmpy2"),
                &runs,
                &format!("ours {} ms ({} + {}); gmpy2 {} ms", x[3], x[1], x[2], g[3]),
                &format!("{total} × gmpy2 (compute {compute}, decimal {decimal})"),
            ]));
        }
    }
    out
}

/// (g) peak RSS of the servers and clients.
fn memory_rows(r: &Results, s: &Settings) -> Vec<Cells> {
    let biggest = r
        .rss
        .iter()
        .filter(|(id, _)| id.starts_with('c') || id.starts_with('d'))
        .max_by_key(|(_, &kb)| kb)
        .map(|(id, _)| id.as_str());
    let idle = r.rss_kb("server_idle");
    let (ours, theirs) = (r.rss_kb("oneshot-ours"), r.rss_kb("oneshot-python"));
    let big = biggest.and_then(|id| r.rss_kb(id));
    let seq = rows::ours("", 1);
    let vs_idle = |id| format!("{} × g-server-idle", ratio(r.rss_kb(id), idle));
    vec![
        cells([
            "g-server-idle",
            "peak RSS (VmHWM) of rpc-server, idle after start",
            &seq,
            &mib(idle),
            "anchor",
        ]),
        cells([
            "g-server-seq",
            "peak RSS of that rpc-server after rows b, c, e",
            &seq,
            &mib(r.rss_kb("server_seq")),
            &vs_idle("server_seq"),
        ]),
        cells([
            "g-server-inflight",
            "peak RSS of rpc-server after the in-flight rows d",
            &rows::ours("", s.prefetch),
            &mib(r.rss_kb("server_inflight")),
            &vs_idle("server_inflight"),
        ]),
        cells([
            "g-oneshot-ours",
            "peak RSS of one-shot `rpc-client 30` (GNU time %M, max of 3)",
            &seq,
            &mib(ours),
            &format!("{} × g-oneshot-python", ratio(ours, theirs)),
        ]),
        cells([
            "g-oneshot-python",
            "peak RSS of one-shot `python rpc_client.py 30` (tutorial client)",
            &seq,
            &mib(theirs),
            "anchor",
        ]),
        cells([
            "g-client-bench",
            &format!(
                "peak RSS of the largest rpc-client bench run ({})",
                biggest.unwrap_or("none")
            ),
            &format!("as in {}", biggest.unwrap_or("n/a")),
            &mib(big),
            &format!("{} × g-oneshot-ours", ratio(big, ours)),
        ]),
    ]
}

/// (s1-json-rss) the peak RSS of the json server of rows s before and after one big request.
fn big_json_row(r: &Results) -> Cells {
    let (before, after) = (r.rss_kb("json_before"), r.rss_kb("json_after"));
    let body_kb = (rows::BIG_JSON_BYTES / 1024) as f64;
    let grew = match (before, after) {
        (Some(before), Some(after)) => format!(
            "+{:.1} MiB: {:.2} × the body",
            (after - before) / 1024.0,
            (after - before) / body_kb
        ),
        _ => "n/a".into(),
    };
    cells([
        "s1-json-rss",
        &format!(
            "peak RSS (VmHWM) of rpc-server before / after one request of {} MiB of control \
             characters",
            rows::BIG_JSON_BYTES >> 20
        ),
        &rows::ours(
            " `--protocol json -- python3 echo_json.py`, after rows s1",
            1,
        ),
        &format!("{} / {}", mib(before), mib(after)),
        &grew,
    ])
}

/// Every row of the table, in group order, and the flags they raise.
fn table(r: &Results, s: &Settings) -> (Vec<Cells>, Vec<String>) {
    let mut flags = Vec::new();
    let mut rows: Vec<Cells> = rows::table_rows(s)
        .iter()
        .map(|row| rate_row(row, r, s, &mut flags))
        .collect();
    let mut with_errors: Vec<_> = r.rates.iter().filter(|(_, x)| x.errors > 0).collect();
    with_errors.sort_by_key(|(id, _)| id.as_str());
    for (id, x) in with_errors {
        flags.push(format!("{id}: {} failed calls", x.errors));
    }
    rows.extend(oneshot_rows(r, s, &mut flags));
    rows.extend(fib_rows(r, s));
    rows.extend(memory_rows(r, s));
    rows.push(big_json_row(r));
    for row in instructions::rows() {
        let [result, ratio] = instructions::cells(&row, r, &mut flags);
        let setup = instructions::setup(&row);
        rows.push([row.id.clone(), row.what.clone(), setup, result, ratio]);
    }
    let group = |cells: &Cells| GROUPS.find(cells[0].chars().next().unwrap_or('?'));
    rows.sort_by_key(group); // stable: each group keeps its own order
    rows.retain(|cells| cells[0].chars().next().is_some_and(|c| s.only.contains(c)));
    let (ok, failed) = r.scrapes;
    if s.want("m") && failed > 0 {
        flags.push(format!(
            "rows m: {failed} of {} scrapes of /metrics failed",
            ok + failed
        ));
    }
    if !r.failed.is_empty() {
        flags.push(format!(
            "not measured (failed twice): {}",
            r.failed.join(" ")
        ));
    }
    (rows, flags)
}

/// The header's lines.
fn header(r: &Results, s: &Settings) -> String {
    let i = &r.info;
    let mut out = format!("# rabbit-rpc bench ({} run), {}\n\n", i.mode, i.date);
    let _ = writeln!(out, "- machine: {}", i.machine);
    let _ = writeln!(out, "- software: {}", i.software);
    let _ = writeln!(
        out,
        "- broker: {}, one queue per server; fib(30) per call; warm-up {} calls per row",
        i.broker, s.warmup
    );
    out.push_str("- ratio: this row ÷ the anchor named (calls/s: higher is better; ms, MiB: lower is better)\n");
    if s.want("h") {
        out.push_str(
            "- rows h: the cost of a process per request: `rpc-server -- cat` runs `cat` once per \
             call and echoes the body `30`, which the Fibonacci client accepts as a decimal reply; \
             \"ms per call\": the wall time per call beyond the Fibonacci anchor's (1/rate − 1/anchor rate)\n",
        );
    }
    if s.want("m") {
        let (ok, failed) = r.scrapes;
        let _ = writeln!(
            out,
            "- rows m: the cost of the metrics endpoint: the same server with `--metrics-addr`, \
             its /metrics fetched once a second by a thread of the bench while the rows run \
             ({} scrapes, {failed} failed), and without",
            ok + failed
        );
    }
    if s.want("i") {
        let (few, many) = instructions::calls(s.quick);
        let _ = writeln!(
            out,
            "- rows i: instructions per call under callgrind (valgrind), (I({many}) − I({few})) / {}, \
             all threads of the measured process, the other end native; lower is better, and \
             the machine's load moves them far less than calls/s (a few percent)",
            many - few,
        );
    }
    if s.want("s") {
        out.push_str(
            "- rows s: a program kept per worker (`--protocol lines`): scripts/interop/echo_lines.py \
             (echoes each line, so the reply is `30`) kept vs started per request, `cat` kept, and \
             the kept handler spending 2 ms of CPU per request with 1, 2 and 4 workers (2 cores \
             here: one each for two workers)\n",
        );
    }
    if s.only != GROUPS {
        let _ = writeln!(
            out,
            "- only the row groups {} were measured (BENCH_ONLY)",
            s.only
        );
    }
    out
}

/// The whole report.
pub fn render(r: &Results, s: &Settings) -> String {
    let (rows, flags) = table(r, s);
    let mut out = header(r, s);
    out.push_str("\n| row | measurement | setup | result | ratio |\n|---|---|---|---|---|\n");
    for cells in &rows {
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out.push('\n');
    if flags.is_empty() && !s.want("cd") {
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
    let _ = writeln!(out, "\nrun time: {} s", r.info.elapsed_secs);
    out
}
