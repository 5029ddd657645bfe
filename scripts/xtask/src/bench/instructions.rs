//! (i) Instructions per call under callgrind: what the machine's load cannot move (issue 28).
//!
//! A row runs one process under `valgrind --tool=callgrind` twice, for [`FEW`] and for
//! [`MANY`] calls, and counts (I(MANY) − I(FEW)) / (MANY − FEW): every thread of the process
//! (amiquip's I/O thread too, not the kernel), its start and stop cancelled out. The other end
//! runs natively:
//! - the servers (`rpc-server -q --prefetch 100`, or the raw amiquip echo `echo_floor --serve`)
//!   are driven by `rpc-client bench --n 1`;
//! - the clients (`rpc-client bench --n 1`, or the raw amiquip caller `echo_floor --call
//!   --confirm-requests`, which does the protocol work rpc-client's requests must do) call a
//!   native rpc-server.
//!
//! Each row is compared with its anchor and flagged above its bar: rpc-server ≤ 1.15 × the raw
//! echo, rpc-client ≤ 1.15 × the confirming raw caller, `--metrics-addr` (scraped once a
//! second) ≤ 1.03 × without, trace context (`TRACEPARENT` set) ≤ 1.10 × without.

use super::process::{self, Scraper, Server};
use super::results::ratio;
use super::{msg, Bench};
use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Calls of the shorter and the longer run of a row.
pub const FEW: u64 = 1_000;
pub const MANY: u64 = 4_000;
/// The same in the quick smoke run, which only proves that the rows run.
const QUICK_CALLS: (u64, u64) = (100, 400);

/// Calls of the shorter and the longer run of a row in a run (`quick` or not).
pub fn calls(quick: bool) -> (u64, u64) {
    if quick {
        QUICK_CALLS
    } else {
        (FEW, MANY)
    }
}
/// Depths of the rows i.
pub const DEPTHS: [u64; 2] = [1, 64];
/// The prefetch of every server of the rows.
const PREFETCH: &str = "100";
/// The trace context of the trace rows (W3C's example).
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// How long a process under callgrind may take to start consuming, and a run to finish.
const START_LIMIT: Duration = Duration::from_secs(180);
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// Which end runs under callgrind, and as what.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Measured {
    /// rpc-server (with `metrics`: `--metrics-addr`, scraped once a second).
    Server { metrics: bool },
    /// The raw amiquip echo server.
    EchoServer,
    /// rpc-client bench.
    Client,
    /// The raw amiquip caller with confirms.
    RawClient,
}

/// A row i.
#[derive(Clone, Debug)]
pub struct Row {
    pub id: String,
    pub what: String,
    measured: Measured,
    depth: u64,
    /// `TRACEPARENT` set for the client (measured or driving).
    trace: bool,
    /// The row compared with, and the bar above which this one is flagged.
    pub against: Option<(String, f64)>,
}

/// Every row i, in the table's order.
pub fn rows() -> Vec<Row> {
    let mut rows = Vec::new();
    for depth in DEPTHS {
        let id = |name: &str| format!("i{depth}-{name}");
        let row = |name: &str, what: &str, measured, trace, against: Option<(&str, f64)>| Row {
            id: id(name),
            what: format!("{what}, {}", super::rows::label(depth)),
            measured,
            depth,
            trace,
            against: against.map(|(other, bar)| (id(other), bar)),
        };
        let server = Measured::Server { metrics: false };
        rows.extend([
            row(
                "echo",
                "raw amiquip echo server",
                Measured::EchoServer,
                false,
                None,
            ),
            row("server", "rpc-server", server, false, Some(("echo", 1.15))),
            row(
                "server-metrics",
                "rpc-server `--metrics-addr`, /metrics fetched once a second",
                Measured::Server { metrics: true },
                false,
                Some(("server", 1.03)),
            ),
            row(
                "server-trace",
                "rpc-server, requests with a traceparent (TRACEPARENT set for the client)",
                server,
                true,
                Some(("server", 1.10)),
            ),
            row(
                "raw-client",
                "raw amiquip client with confirms (+ expiration, timestamp, mandatory)",
                Measured::RawClient,
                false,
                None,
            ),
            row(
                "client",
                "rpc-client bench",
                Measured::Client,
                false,
                Some(("raw-client", 1.15)),
            ),
            row(
                "client-trace",
                "rpc-client bench, TRACEPARENT set",
                Measured::Client,
                true,
                Some(("client", 1.10)),
            ),
        ]);
    }
    rows
}

/// The setup cell of a row.
pub fn setup(row: &Row) -> String {
    let driver = format!(
        "driven by native `rpc-client bench --n 1 --in-flight {}`",
        row.depth
    );
    let server = format!("native `rpc-server -q --prefetch {PREFETCH}`");
    match row.measured {
        Measured::Server { .. } => format!("`rpc-server -q --prefetch {PREFETCH}` {driver}"),
        Measured::EchoServer => format!("`echo_floor --serve --prefetch {PREFETCH}` {driver}"),
        Measured::Client => format!("`rpc-client bench --n 1` against {server}"),
        Measured::RawClient => format!("`echo_floor --call --confirm-requests` against {server}"),
    }
}

impl Bench {
    /// Measures the rows i (see the module docs), `BENCH_REPEAT` runs each.
    pub(super) fn instructions(&mut self) -> Result<()> {
        let echo = echo_floor_binary(&self.work)?;
        let (few, many) = calls(self.settings.quick);
        msg(&format!(
            "i: instructions per call under callgrind, (I({many}) − I({few})) / {}",
            many - few
        ));
        // The native rpc-server the measured clients call.
        let queue = format!("{}-i-native", self.queue);
        self.queues.names.push(queue.clone());
        let mut args: Vec<String> = ["-q", "--prefetch", PREFETCH].map(String::from).into();
        args.extend(["--queue".into(), queue.clone()]);
        let log = self.work.join("servers/i-native.log");
        let bin = self.bin_dir.join("rpc-server");
        let native = Server::start(&bin, "i-native", &queue, &args, &log, &self.brokers)?;
        self.servers.push(("i-native".into(), native));
        for run in 1..=self.settings.repeat {
            for row in rows() {
                let stem = format!("{}.{run}", row.id);
                msg(&format!(
                    "{} (run {run}/{}): {}",
                    row.id, self.settings.repeat, row.what
                ));
                let mut counts = [0; 2];
                let measured = self.retried(&stem, &row.id, |bench| {
                    for (i, calls) in [few, many].into_iter().enumerate() {
                        counts[i] = bench.callgrind(&row, &echo, &queue, calls, &stem)?;
                    }
                    Ok(())
                })?;
                if measured {
                    let per_call = counts[1].saturating_sub(counts[0]) as f64 / (many - few) as f64;
                    msg(&format!("{}: {per_call:.0} instructions per call", row.id));
                    self.results.add_instructions(&row.id, per_call);
                }
            }
        }
        for (_, mut server) in self.servers.drain(..) {
            server.stop()?;
        }
        Ok(())
    }

    /// One run of `row` for `calls` calls: the instructions of the measured process.
    fn callgrind(
        &mut self,
        row: &Row,
        echo: &Path,
        native_queue: &str,
        calls: u64,
        stem: &str,
    ) -> Result<u64> {
        let dir = self.work.join("callgrind");
        std::fs::create_dir_all(&dir)?;
        let prefix = format!("{stem}.{calls}");
        // Left by a failed attempt: not counted twice.
        remove_outputs(&dir, &prefix)?;
        let mut valgrind = Command::new("valgrind");
        valgrind.args(["--tool=callgrind", "-q"]);
        valgrind.arg(format!(
            "--callgrind-out-file={}/{prefix}.%p",
            dir.display()
        ));
        let depth = row.depth.to_string();
        let (out, err) = (
            self.work.join(format!("{prefix}.out")),
            self.work.join(format!("{prefix}.err")),
        );
        match row.measured {
            Measured::Server { .. } | Measured::EchoServer => {
                let queue = format!("{}-{prefix}", self.queue);
                let mut server = valgrind;
                if let Measured::Server { metrics } = row.measured {
                    server.arg(self.bin_dir.join("rpc-server"));
                    server.args(["--queue", &queue, "-q", "--prefetch", PREFETCH]);
                    server.args(
                        metrics
                            .then_some(["--metrics-addr", "127.0.0.1:0"])
                            .into_iter()
                            .flatten(),
                    );
                } else {
                    self.declare(&queue)?;
                    server
                        .arg(echo)
                        .args(["--serve", &queue, "--prefetch", PREFETCH]);
                    server.args(["--calls", &calls.to_string()]);
                }
                self.queues.names.push(queue.clone());
                let log = self.work.join(format!("servers/{prefix}.log"));
                let mut server = Server::spawn(server, &queue, &log, &self.brokers, START_LIMIT)?;
                let scraper = server.metrics.map(Scraper::start);
                let mut client = self.client(&queue, row, calls);
                process::run(&mut client, &out, &err, RUN_LIMIT)?;
                if let Some(scraper) = scraper {
                    let (ok, failed) = scraper.finish();
                    if ok == 0 || failed > 0 {
                        bail!("{ok} scrapes of /metrics succeeded, {failed} failed");
                    }
                }
                if row.measured == Measured::EchoServer {
                    server.wait_exit(Duration::from_secs(60))?;
                } else {
                    server.stop()?;
                }
            }
            Measured::Client => {
                let client = self.client(native_queue, row, calls);
                let mut measured = valgrind;
                measured.arg(client.get_program()).args(client.get_args());
                for (key, value) in client.get_envs() {
                    match value {
                        Some(value) => measured.env(key, value),
                        None => measured.env_remove(key),
                    };
                }
                process::run(&mut measured, &out, &err, RUN_LIMIT)?;
            }
            Measured::RawClient => {
                let mut raw = valgrind;
                raw.arg(echo)
                    .args(["--call", native_queue, "--in-flight", &depth]);
                raw.args(["--calls", &calls.to_string(), "--warmup", "0"]);
                raw.args(["--body", "1", "--confirm-requests"]);
                process::run(&mut raw, &out, &err, RUN_LIMIT)?;
            }
        }
        summed(&dir, &prefix)
    }

    /// `rpc-client bench --n 1` of `calls` calls on `queue`, no warm-up, at the row's depth.
    fn client(&self, queue: &str, row: &Row, calls: u64) -> Command {
        let mut client = Command::new(self.bin_dir.join("rpc-client"));
        client.args(["--queue", queue, "bench", "--n", "1", "--warmup", "0"]);
        client.args(["--calls", &calls.to_string()]);
        client.args(["--in-flight", &row.depth.to_string()]);
        if row.trace {
            client.env("TRACEPARENT", TRACEPARENT);
        } else {
            client.env_remove("TRACEPARENT");
        }
        client
    }

    fn declare(&self, queue: &str) -> Result<()> {
        let admin = rpc_client::testing::Admin::connect_to(&self.brokers)?;
        admin.declare(queue, false)?;
        Ok(())
    }
}

/// Removes the callgrind outputs `dir/prefix.*`.
fn remove_outputs(dir: &Path, prefix: &str) -> Result<()> {
    for path in outputs(dir, prefix)? {
        std::fs::remove_file(&path).with_context(|| path.display().to_string())?;
    }
    Ok(())
}

fn outputs(dir: &Path, prefix: &str) -> Result<Vec<PathBuf>> {
    let start = format!("{prefix}.");
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(&start) {
            paths.push(path);
        }
    }
    Ok(paths)
}

/// The instructions of the callgrind outputs `dir/prefix.*` (their `summary:` lines summed:
/// one file per process, each counting all of its threads).
fn summed(dir: &Path, prefix: &str) -> Result<u64> {
    let paths = outputs(dir, prefix)?;
    if paths.is_empty() {
        bail!("callgrind wrote no {prefix}.* in {}", dir.display());
    }
    let mut total = 0;
    for path in paths {
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        total +=
            summary(&text).with_context(|| format!("no summary line in {}", path.display()))?;
    }
    Ok(total)
}

/// The count of a callgrind output's `summary:` (or `totals:`) line.
fn summary(text: &str) -> Option<u64> {
    let line = (text.lines())
        .find(|l| l.starts_with("summary:"))
        .or_else(|| text.lines().find(|l| l.starts_with("totals:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The path of the echo_floor bench binary (`cargo bench --no-run`, built in `prepare`).
fn echo_floor_binary(work: &Path) -> Result<PathBuf> {
    let mut cargo = super::cargo();
    cargo.args(super::WORKSPACE_BENCH);
    cargo.args([
        "--no-run",
        "--bench",
        "echo_floor",
        "--message-format",
        "json",
    ]);
    let (out, err) = (work.join("i-build.out"), work.join("i-build.err"));
    process::run(&mut cargo, &out, &err, super::measure::BUILD_LIMIT)?;
    let json = std::fs::read_to_string(&out)?;
    let path = (json.lines())
        .filter(|l| l.contains("\"name\":\"echo_floor\""))
        .find_map(|l| l.split("\"executable\":\"").nth(1)?.split('"').next())
        .filter(|p| !p.is_empty())
        .context("cargo named no echo_floor executable")?;
    Ok(PathBuf::from(path))
}

/// The result and ratio cells of row `row`, flagging it above its bar.
pub fn cells(row: &Row, r: &super::results::Results, flags: &mut Vec<String>) -> [String; 2] {
    let Some(own) = r.per_call(&row.id) else {
        return ["failed".into(), "n/a".into()];
    };
    let runs = &r.instructions[&row.id];
    let mut result = format!("{own:.0} instructions per call");
    if runs.len() > 1 {
        let all: Vec<String> = runs.iter().map(|x| format!("{x:.0}")).collect();
        result.push_str(&format!(" (median of runs: {})", all.join(", ")));
    }
    let Some((other, bar)) = &row.against else {
        return [result, "anchor".into()];
    };
    let theirs = r.per_call(other);
    let ratio_cell = format!("{} × {other} (bar {bar:.2})", ratio(Some(own), theirs));
    if let Some(theirs) = theirs.filter(|t| *t > 0.0) {
        let share = own / theirs;
        if format!("{share:.2}").parse::<f64>().unwrap_or(share) > *bar {
            flags.push(format!(
                "{}: {share:.2} × {other} in instructions per call (above {bar:.2})",
                row.id
            ));
        }
    }
    [result, ratio_cell]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_and_rows() {
        assert_eq!(summary("events: Ir\nsummary: 41389395\n"), Some(41_389_395));
        assert_eq!(summary("totals: 12\n"), Some(12));
        assert_eq!(summary("events: Ir\n"), None);
        let rows = rows();
        assert_eq!(rows.len(), 14);
        for row in &rows {
            if let Some((other, _)) = &row.against {
                assert!(rows.iter().any(|r| &r.id == other), "{other}");
            }
        }
    }

    #[test]
    fn ratios_medians_and_flags() {
        let mut r = crate::bench::results::Results::default();
        for x in [45_000.0, 44_000.0, 46_000.0] {
            r.add_instructions("i1-echo", x);
        }
        r.add_instructions("i1-server", 51_750.0);
        r.add_instructions("i64-echo", 35_000.0);
        r.add_instructions("i64-server", 47_000.0);
        let row = |id: &str| rows().into_iter().find(|r| r.id == id).expect(id);
        let mut flags = Vec::new();
        let [result, ratio] = cells(&row("i1-server"), &r, &mut flags);
        assert_eq!(result, "51750 instructions per call");
        assert_eq!(ratio, "1.15 × i1-echo (bar 1.15)");
        assert!(flags.is_empty(), "{flags:?}");
        let [result, ratio] = cells(&row("i1-echo"), &r, &mut flags);
        assert_eq!(ratio, "anchor");
        assert!(
            result.starts_with("45000 instructions per call (median of runs: 45000, 44000, 46000)")
        );
        let [_, ratio] = cells(&row("i64-server"), &r, &mut flags);
        assert_eq!(ratio, "1.34 × i64-echo (bar 1.15)");
        assert_eq!(
            flags,
            ["i64-server: 1.34 × i64-echo in instructions per call (above 1.15)"]
        );
        let [result, ratio] = cells(&row("i64-client"), &r, &mut flags);
        assert_eq!((result.as_str(), ratio.as_str()), ("failed", "n/a"));
    }
}
