//! The report rendered from hand-made results (the old facts-file tests, every assertion kept).

use super::results::Results;
use super::settings::Settings;
use super::table::render;

/// Settings of a full run with `vars` (BENCH_* names) set.
fn settings(vars: &[(&str, &str)]) -> Settings {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_vars(false, |name| {
        vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
    .expect("valid settings")
}

/// One run of row `id`: calls/s, p50, p99 (empty for the echo floor), failed calls.
fn run(r: &mut Results, id: &str, rate: u64, p50: &str, p99: &str, errors: u64) {
    let line = format!(".\t.\t.\t.\t.\t{rate}\t{p50}\t.\t{p99}\t.\t{errors}");
    r.add_run(id, &line).expect("a result line");
}

#[test]
fn best_run_ratios_and_flags() {
    let s = settings(&[
        ("BENCH_REPEAT", "2"),
        ("BENCH_DEPTHS", "8"),
        ("BENCH_FIB_NS", "10"),
    ]);
    let mut r = Results::default();
    run(&mut r, "a1", 1000, "0.9", "1.5", 0);
    run(&mut r, "c-exclusive", 800, "1.1", "2.0", 0);
    run(&mut r, "c-exclusive", 900, "1.0", "1.9", 3);
    r.oneshot.insert("e-ours".into(), vec![0.010, 0.030]);
    r.oneshot.insert("e-python".into(), vec![0.1]);
    r.add_fib("ours", "10\t2\t0.1\t0.1\t0.2\n");
    r.add_fib("gmpy2", "10\t2\t0.1\t0.1\t0.1\n");
    r.add_rss("d8-direct", 2048);
    r.add_rss("d8-direct", 4096);
    let table = render(&r, &s);
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
    let s = settings(&[
        ("BENCH_REPEAT", "1"),
        ("BENCH_DEPTHS", "64"),
        ("BENCH_PREFETCH", "100"),
    ]);
    let mut r = Results::default();
    run(&mut r, "a1", 1000, "", "", 0);
    run(&mut r, "a1-confirm", 800, "", "", 0);
    run(&mut r, "c-exclusive", 960, "0.3", "0.5", 0);
    run(&mut r, "a64", 30000, "", "", 0);
    run(&mut r, "a64-confirm", 20000, "", "", 0);
    run(&mut r, "d64-exclusive", 16000, "2", "3", 0);
    let table = render(&r, &s);
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
    let vars = [
        ("BENCH_REPEAT", "1"),
        ("BENCH_H_CALLS", "300"),
        ("BENCH_H_INFLIGHT_CALLS", "600"),
    ];
    let mut r = Results::default();
    run(&mut r, "h1-fib", 1000, "0.9", "1.5", 0);
    run(&mut r, "h1-cat", 400, "2.4", "3.0", 0);
    run(&mut r, "h8-fib", 5000, "1.5", "2.0", 0);
    run(&mut r, "h8-cat", 500, "16", "20", 0);
    let table = render(&r, &settings(&vars));
    let seq = "rpc-client bench --n 30, 1 in flight (sequential), exclusive reply queue, 300 calls";
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
    let only = render(
        &r,
        &settings(&[vars[0], vars[1], vars[2], ("BENCH_ONLY", "h")]),
    );
    assert!(only.contains("| h1-cat |") && only.contains("- only the row groups h were measured"));
    assert!(
        !only.contains("| a1 |") && !only.contains("| g-server-idle |"),
        "{only}"
    );
    assert!(only.contains("Flags: none (no errors)."), "{only}");
    let no_h = render(&Results::default(), &settings(&[("BENCH_ONLY", "abc")]));
    assert!(!no_h.contains("| h1-fib |") && !no_h.contains("rows h:"));
}

#[test]
fn metrics_rows_side_by_side() {
    let s = settings(&[("BENCH_REPEAT", "1"), ("BENCH_ONLY", "m")]);
    let mut r = Results::default();
    run(&mut r, "m1-plain", 2000, "0.4", "0.6", 0);
    run(&mut r, "m1-scraped", 1000, "0.8", "1.2", 0);
    run(&mut r, "m64-plain", 20000, "3", "4", 0);
    r.scrapes = (9, 1);
    let table = render(&r, &s);
    assert!(table.contains("| m1-plain | rpc-client bench --n 30, 1 in flight (sequential)"));
    assert!(table.contains(
        "| rpc-server ×1 (release, -q) `--metrics-addr 127.0.0.1:0`, /metrics fetched once a \
         second, prefetch 1 | 1000 calls/s, p50 0.8 ms, p99 1.2 ms | 0.50 × m1-plain; +0.500 ms per call |"
    ), "{table}");
    assert!(table.contains("| m64-scraped | rpc-client bench --n 30, 64 in flight"));
    assert!(
        table.contains("prefetch 100 | failed | n/a × m64-plain; n/a |"),
        "{table}"
    );
    assert!(table.contains("(10 scrapes, 1 failed)"), "{table}");
    assert!(
        table.contains("- rows m: 1 of 10 scrapes of /metrics failed"),
        "{table}"
    );
    assert!(!table.contains("| a1 |") && !table.contains("| h1-fib |"));
}
