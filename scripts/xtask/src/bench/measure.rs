//! Measuring: a phase's servers and rows, the one-shot and memory rows, fib.

use super::process::{self, Scraper, Server};
use super::rows::{Measure, Phase, Row, BIG_JSON_BYTES};
use super::{msg, Bench, PEERS};
use anyhow::Result;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Makes the command of a measurement (again, for a retry).
type MakeCommand = Box<dyn Fn(&Bench) -> Command>;

/// The longest a measurement may take.
const ROW_LIMIT: Duration = Duration::from_secs(600);
/// The longest a build may take (the first `--features gmp` build compiles GMP).
pub const BUILD_LIMIT: Duration = Duration::from_secs(1800);

impl Bench {
    /// Starts the phase's servers, runs its rows `BENCH_REPEAT` times in turn, stops them.
    pub(super) fn phase(&mut self, phase: &Phase) -> Result<()> {
        let bin = self.bin_dir.join("rpc-server");
        let mut scrapers = Vec::new();
        for spec in &phase.servers {
            let queue = format!("{}-{}", self.queue, spec.name);
            self.queues.names.push(queue.clone());
            let mut args = vec!["--queue".to_string(), queue.clone()];
            args.extend(spec.args.iter().cloned());
            let log = self.work.join(format!("servers/{}.log", spec.name));
            msg(&format!(
                "starting rpc-server {} on {queue}",
                args[2..].join(" ")
            ));
            let server = Server::start(&bin, spec.name, &queue, &args, &log, &self.brokers)?;
            if let (true, Some(addr)) = (spec.scraped, server.metrics) {
                scrapers.push(Scraper::start(addr));
            }
            self.servers.push((spec.name.to_string(), server));
        }
        if let Some(id) = phase.rss_idle {
            std::thread::sleep(Duration::from_secs(1)); // idle a moment before reading the peak
            self.server_rss(id);
        }
        let s = &self.settings;
        let rows: Vec<&Row> = (phase.rows.iter())
            .filter(|row| s.want(&row.group().to_string()) || s.want(row.also_for))
            .collect();
        for run in 1..=self.settings.repeat {
            for row in &rows {
                self.row(row, run)?;
            }
        }
        if phase.oneshots {
            if self.settings.want("e") {
                self.oneshots()?;
            }
            if self.settings.want("g") && self.gnu_time {
                self.oneshot_rss()?;
            }
        }
        if let Some(id) = phase.rss_end {
            self.server_rss(id);
        }
        if let Some(name) = phase.big_json.filter(|_| self.settings.want("s")) {
            self.big_json(name)?;
        }
        for scraper in scrapers {
            let (ok, failed) = scraper.finish();
            self.results.scrapes.0 += ok;
            self.results.scrapes.1 += failed;
        }
        for (_, mut server) in self.servers.drain(..) {
            if let Err(err) = server.stop() {
                msg(&format!("warning: {err:#}"));
            }
        }
        Ok(())
    }

    /// The peak RSS of the phase's first server, as `id`.
    fn server_rss(&mut self, id: &str) {
        if let Some(kb) = self
            .servers
            .first()
            .and_then(|(_, s)| process::vmhwm(s.pid()))
        {
            self.results.add_rss(id, kb);
        }
    }

    /// Row s1-json-rss: the peak RSS of server `name` before and after one request of
    /// [`BIG_JSON_BYTES`] of control characters (`rpc-client call -`, the body on stdin).
    fn big_json(&mut self, name: &str) -> Result<()> {
        let Some(pid) = (self.servers.iter())
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.pid())
        else {
            return Ok(());
        };
        let body = self.work.join("big-json.body");
        let bytes: Vec<u8> = (0..BIG_JSON_BYTES)
            .map(|i| [1, 2, 0x1b, 0x7f][i % 4])
            .collect();
        std::fs::write(&body, bytes)?;
        msg(&format!(
            "s1-json-rss: one request of {} MiB of control characters to {name}",
            BIG_JSON_BYTES >> 20
        ));
        if let Some(kb) = process::vmhwm(pid) {
            self.results.add_rss("json_before", kb);
        }
        let (client, queue) = (self.bin_dir.join("rpc-client"), self.queue_of(name));
        let call = move |_: &Bench| {
            let mut sh = Command::new("sh");
            sh.args([
                "-c",
                "exec \"$0\" --queue \"$1\" call - < \"$2\" > /dev/null",
            ])
            .arg(&client)
            .arg(&queue)
            .arg(&body);
            sh
        };
        if self.attempt("s1-json-rss", ROW_LIMIT, call)? {
            if let Some(kb) = process::vmhwm(pid) {
                self.results.add_rss("json_after", kb);
            }
        }
        Ok(())
    }

    fn queue_of(&self, server: &str) -> String {
        format!("{}-{server}", self.queue)
    }

    /// One run of a calls/s row.
    fn row(&mut self, row: &Row, run: u64) -> Result<()> {
        let (id, s) = (row.id.as_str(), &self.settings);
        let what = match &row.measure {
            Measure::EchoFloor {
                in_flight,
                prefetch,
                calls,
                confirm,
            } => {
                let confirm = if *confirm { " --confirm" } else { "" };
                format!("echo floor{confirm}, {in_flight} in flight, prefetch {prefetch}, {calls} calls")
            }
            Measure::Pika { direct, calls, .. } => format!(
                "Python pika tutorial client, sequential, {} reply queue, {calls} calls",
                reply_queue(*direct)
            ),
            Measure::Client {
                in_flight,
                direct,
                calls,
                ..
            } => format!(
                "rpc-client bench, {in_flight} in flight, {} reply queue, {calls} calls",
                reply_queue(*direct)
            ),
        };
        msg(&format!("{id} (run {run}/{}): {what}", s.repeat));
        let stem = format!("{id}.{run}");
        let rss = self.work.join(format!("{stem}.rss"));
        let measure_rss = self.gnu_time && matches!(row.measure, Measure::Client { .. });
        let command = |b: &Bench| b.command(&row.measure, measure_rss.then_some(&rss));
        if !self.attempt(&stem, ROW_LIMIT, command)? {
            return Ok(());
        }
        let out = std::fs::read_to_string(self.work.join(format!("{stem}.out")))?;
        if let Err(err) = self.results.add_run(id, &out) {
            msg(&format!("warning: {err:#}"));
        }
        if measure_rss {
            self.rss_file(id, &rss);
        }
        Ok(())
    }

    /// The command of a measurement; with `rss`, under GNU time writing its peak RSS there.
    fn command(&self, measure: &Measure, rss: Option<&PathBuf>) -> Command {
        let warmup = self.settings.warmup.to_string();
        match measure {
            Measure::EchoFloor {
                in_flight,
                prefetch,
                calls,
                confirm,
            } => {
                let mut cargo = super::cargo();
                cargo
                    .args(super::WORKSPACE_BENCH)
                    .args(["-q", "--bench", "echo_floor"]);
                cargo.args(["--", "--calls", &calls.to_string()]);
                cargo.args(["--in-flight", &in_flight.to_string()]);
                cargo.args(["--prefetch", &prefetch.to_string()]);
                cargo.args(confirm.then_some("--confirm"));
                cargo
            }
            Measure::Pika {
                server,
                direct,
                calls,
            } => {
                let mut python = Command::new(&self.python);
                python.arg(format!("{PEERS}/bench_pika.py"));
                python.args([
                    "--queue",
                    &self.queue_of(server),
                    "--calls",
                    &calls.to_string(),
                ]);
                python.args(["--warmup", &warmup]);
                python.args(direct.then_some("--direct-reply-to"));
                python
            }
            Measure::Client {
                server,
                in_flight,
                direct,
                calls,
                args,
            } => {
                let client = self.bin_dir.join("rpc-client");
                let mut command = match rss {
                    Some(path) => {
                        let mut time = Command::new("/usr/bin/time");
                        time.args(["-f", "%M", "-o"]).arg(path).arg(client);
                        time
                    }
                    None => Command::new(client),
                };
                command.args(["--queue", &self.queue_of(server)]);
                command
                    .args(["--reply-queue", reply_queue(*direct)])
                    .args(args);
                command.args(["bench", "--calls", &calls.to_string()]);
                command.args(["--in-flight", &in_flight.to_string(), "--n", "30"]);
                // Never more warm-up than measured calls (the slow per-request rows s).
                let warmup = self.settings.warmup.min(*calls).to_string();
                command.args(["--warmup", &warmup, "--tsv"]);
                command
            }
        }
    }

    /// Runs the command `make` gives (stdout to `<stem>.out`, stderr to `<stem>.err` in the
    /// run directory), retried once ([`Bench::retried`]): false if the row failed.
    pub(super) fn attempt(
        &mut self,
        stem: &str,
        limit: Duration,
        make: impl Fn(&Bench) -> Command,
    ) -> Result<bool> {
        let (out, err) = (
            self.work.join(format!("{stem}.out")),
            self.work.join(format!("{stem}.err")),
        );
        let row = stem.split('.').next().unwrap_or(stem);
        self.retried(stem, row, |bench| {
            process::run(&mut make(bench), &out, &err, limit)
        })
    }

    /// Runs `run`; if it fails, waits for the broker and our servers' consumers and runs it
    /// once more. If that fails too, `row` is noted as failed (false). Err: interrupted.
    pub(super) fn retried(
        &mut self,
        stem: &str,
        row: &str,
        mut run: impl FnMut(&mut Bench) -> Result<()>,
    ) -> Result<bool> {
        for attempt in 1..=2 {
            let Err(error) = run(self) else {
                return Ok(true);
            };
            process::check_interrupted()?;
            msg(&format!("warning: {stem}: {error:#}"));
            if attempt == 2 {
                break;
            }
            msg(&format!(
                "{stem}: waiting for the broker, then retrying once"
            ));
            if let Err(error) = self.recover() {
                msg(&format!("warning: {stem}: {error:#}"));
                break;
            }
            msg(&format!("{stem}: broker back; retrying"));
        }
        self.results.failed.push(row.into());
        Ok(false)
    }

    /// Waits until the broker answers again and our servers consume again.
    pub(super) fn recover(&mut self) -> Result<()> {
        let wait = self.settings.broker_wait_secs;
        let mut broker = Command::new("scripts/broker.sh");
        broker.env("BROKER_WAIT", wait.to_string());
        self.interactive(&mut broker, Duration::from_secs(wait + 60))?;
        for (_, server) in &mut self.servers {
            server.wait_consuming(&self.brokers, Duration::from_secs(60))?;
        }
        Ok(())
    }

    /// Adds the peak RSS GNU time wrote to `path` (its last line) as `id`.
    pub(super) fn rss_file(&mut self, id: &str, path: &PathBuf) {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let digits: String = (text.lines().last().unwrap_or("").chars())
            .filter(char::is_ascii_digit)
            .collect();
        if let Ok(kb) = digits.parse() {
            self.results.add_rss(id, kb);
        }
    }

    /// (f) fib(n) + decimal for BENCH_FIB_NS: ours, ours with GMP (full runs), gmpy2.
    pub(super) fn fib(&mut self) -> Result<()> {
        let ns: Vec<String> = self.settings.fib_ns.iter().map(u64::to_string).collect();
        msg(&format!(
            "f: fib(n) + decimal for n = {}: cargo bench --bench fib, then gmpy2",
            ns.join(" ")
        ));
        let ours = |features: &'static [&'static str]| {
            let ns = ns.clone();
            move |_: &Bench| {
                let mut cargo = super::cargo();
                cargo.args(super::WORKSPACE_BENCH).arg("-q").args(features);
                cargo.args(["--bench", "fib", "--"]).args(&ns);
                cargo
            }
        };
        let mut runs: Vec<(&str, MakeCommand)> = vec![("ours", Box::new(ours(&[])))];
        // The optional GMP build (LGPL; off by default). Its first build compiles GMP (minutes).
        if !self.settings.quick {
            runs.push(("gmp", Box::new(ours(&["--features", "rpc-server/gmp"]))));
        }
        let (python, peer) = (self.python.clone(), format!("{PEERS}/fib_gmpy2.py"));
        let gmpy2 = move |_: &Bench| {
            let mut command = Command::new(&python);
            command.arg(&peer).args(&ns);
            command
        };
        runs.push(("gmpy2", Box::new(gmpy2)));
        for (who, command) in runs {
            let stem = format!("f-{who}");
            if self.attempt(&stem, BUILD_LIMIT, command)? {
                let out = std::fs::read_to_string(self.work.join(format!("{stem}.out")))?;
                self.results.add_fib(who, &out);
            }
        }
        Ok(())
    }
}

pub fn reply_queue(direct: bool) -> &'static str {
    if direct {
        "direct"
    } else {
        "exclusive"
    }
}
