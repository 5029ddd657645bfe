//! What a bench run measured, kept as the rows' results for the table.

use anyhow::{Context as _, Result};
use rpc_client::cli::BENCH_TSV_COLUMNS;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// The runs of one calls/s row.
#[derive(Default, Debug)]
pub struct Rate {
    pub runs: Vec<u64>,
    /// calls/s, p50 and p99 of the best run.
    pub best: Option<(u64, String, String)>,
    pub errors: u64,
}

/// The header lines of the report.
#[derive(Default, Debug)]
pub struct Info {
    pub mode: String,
    pub date: String,
    pub machine: String,
    pub software: String,
    pub broker: String,
    /// How the one-shot rows were timed (hyperfine or a loop).
    pub oneshot_how: String,
    pub elapsed_secs: u64,
}

#[derive(Default, Debug)]
pub struct Results {
    pub rates: HashMap<String, Rate>,
    /// Peak RSS in kB (the largest of an id's counts).
    pub rss: BTreeMap<String, u64>,
    /// One-shot wall times in seconds.
    pub oneshot: HashMap<String, Vec<f64>>,
    /// `(who, n)` → digits, compute ms, decimal ms, total ms (who: ours, gmp, gmpy2).
    pub fib: HashMap<(String, u64), [String; 4]>,
    /// Measurements that failed twice.
    pub failed: Vec<String>,
    /// Instructions per call of rows i, one per run.
    pub instructions: BTreeMap<String, Vec<f64>>,
    /// `/metrics` scrapes of rows m: succeeded, failed.
    pub scrapes: (u64, u64),
    pub info: Info,
}

impl Results {
    /// Adds one run of row `id` from the result line of a `--tsv` bench output (its last
    /// line; its columns are `BENCH_TSV_COLUMNS`, read by name: calls/s, p50, p99 and failed
    /// calls; latencies may be empty).
    pub fn add_run(&mut self, id: &str, output: &str) -> Result<()> {
        let line = output.lines().last().unwrap_or("");
        let columns: Vec<&str> = line.split('\t').map(str::trim).collect();
        let column = |name: &str| {
            let at = BENCH_TSV_COLUMNS.iter().position(|c| *c == name);
            at.and_then(|i| columns.get(i)).copied().unwrap_or("")
        };
        let rate = column("calls_per_s")
            .parse::<u64>()
            .with_context(|| format!("{id}: no calls_per_s in '{line}'"))?;
        let row = self.rates.entry(id.into()).or_default();
        row.runs.push(rate);
        row.errors += column("errors").parse::<u64>().unwrap_or(0);
        if row.best.as_ref().is_none_or(|(best, _, _)| rate > *best) {
            row.best = Some((rate, column("p50_ms").into(), column("p99_ms").into()));
        }
        Ok(())
    }

    pub fn add_instructions(&mut self, id: &str, per_call: f64) {
        self.instructions
            .entry(id.into())
            .or_default()
            .push(per_call);
    }

    /// The median instructions per call of row i `id`.
    pub fn per_call(&self, id: &str) -> Option<f64> {
        median(self.instructions.get(id)?)
    }

    pub fn add_rss(&mut self, id: &str, kb: u64) {
        let entry = self.rss.entry(id.into()).or_default();
        *entry = (*entry).max(kb);
    }

    /// Adds the lines "N DIGITS COMPUTE_MS DECIMAL_MS TOTAL_MS" of a fib bench's output.
    pub fn add_fib(&mut self, who: &str, output: &str) {
        for line in output.lines() {
            let f: Vec<&str> = line.split('\t').map(str::trim).collect();
            if let (Ok(n), 5) = (f[0].parse::<u64>(), f.len()) {
                let values = [f[1], f[2], f[3], f[4]].map(String::from);
                self.fib.insert((who.into(), n), values);
            }
        }
    }

    /// The best calls/s of row `id`.
    pub fn rate(&self, id: &str) -> Option<f64> {
        let (rate, _, _) = self.rates.get(id)?.best.as_ref()?;
        Some(*rate as f64)
    }

    pub fn rss_kb(&self, id: &str) -> Option<f64> {
        self.rss.get(id).map(|&kb| kb as f64)
    }

    /// The median one-shot time of `id`, in ms.
    pub fn median_ms(&self, id: &str) -> Option<f64> {
        Some(median(self.oneshot.get(id)?)? * 1000.0)
    }

    /// The result cell of calls/s row `id`; `repeat`: the runs of each row.
    pub fn cell(&self, id: &str, repeat: u64) -> String {
        let Some(row) = self.rates.get(id) else {
            return "failed".into();
        };
        let Some((rate, p50, p99)) = &row.best else {
            return "failed".into();
        };
        let mut cell = format!("{rate} calls/s");
        if !p50.is_empty() {
            let _ = write!(cell, ", p50 {p50} ms, p99 {p99} ms");
        }
        if repeat != 1 {
            let runs: Vec<String> = row.runs.iter().map(u64::to_string).collect();
            let _ = write!(cell, " (best of runs: {})", runs.join(", "));
        }
        if row.errors > 0 {
            let _ = write!(cell, ", **{} failed calls**", row.errors);
        }
        cell
    }
}

/// The median of `values`, if any.
fn median(values: &[f64]) -> Option<f64> {
    let mut values = values.to_vec();
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    }
}

/// The wall time per call that row `a` spends beyond its anchor `b` (rates in calls/s).
pub fn extra_per_call(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 && b > 0.0 => {
            format!("{:+.3} ms per call", 1000.0 / a - 1000.0 / b)
        }
        _ => "n/a".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_rpc_client_bench_writes() {
        let mut r = Results::default();
        let row = rpc_client::cli::BenchTsvRow {
            calls: 3000,
            in_flight: 4,
            reply_queue: "direct",
            n: 30,
            seconds: 2.0,
            latency_ms: Some([1.25, 2.0, 3.5, 9.0]),
            errors: 2,
        };
        r.add_run("w", &row.to_string()).expect("a row");
        assert_eq!(r.rate("w"), Some(1500.0));
        let rate = r.rates.get("w").expect("row w");
        assert_eq!(rate.best, Some((1500, "1.250".into(), "3.500".into())));
        assert_eq!(rate.errors, 2);
    }

    #[test]
    fn best_run_and_failed_calls() {
        let mut r = Results::default();
        let head = format!("{}\n", BENCH_TSV_COLUMNS.join("\t"));
        r.add_run(
            "c",
            &format!("{head}2000\t1\tx\t30\t1\t800\t1.1\t.\t2.0\t.\t0"),
        )
        .expect("ok");
        r.add_run("c", "2000\t1\tx\t30\t1\t900\t1.0\t.\t1.9\t.\t3\n")
            .expect("ok");
        assert_eq!(r.rate("c"), Some(900.0));
        assert_eq!(
            r.cell("c", 2),
            "900 calls/s, p50 1.0 ms, p99 1.9 ms (best of runs: 800, 900), **3 failed calls**"
        );
        assert_eq!(r.cell("missing", 1), "failed");
        let err = r
            .add_run("c", "1\t2\t3\t4\t5\tfast\t\t\t\t\t0")
            .expect_err("no rate");
        assert!(format!("{err:#}").contains("no calls_per_s"));
    }

    #[test]
    fn fib_lines_medians_and_ratios() {
        let mut r = Results::default();
        r.add_fib(
            "ours",
            "n\tdigits\tcompute_ms\tdecimal_ms\ttotal_ms\n10\t2\t0.1\t0.1\t0.2\n",
        );
        assert_eq!(r.fib[&("ours".into(), 10)][3], "0.2");
        r.oneshot.insert("e".into(), vec![0.03, 0.01]);
        assert_eq!(r.median_ms("e"), Some(20.0));
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25");
        assert_eq!(ratio(Some(1.0), None), "n/a");
        assert_eq!(
            extra_per_call(Some(400.0), Some(1000.0)),
            "+1.500 ms per call"
        );
    }
}
