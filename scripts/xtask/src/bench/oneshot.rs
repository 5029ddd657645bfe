//! Rows e and g of the one-shot clients: wall time (hyperfine, or a timed loop) and peak RSS.

use super::process;
use super::{msg, Bench, PEERS};
use anyhow::Result;
use std::process::Command;
use std::time::Duration;

/// The longest one one-shot client may take.
const ONESHOT_LIMIT: Duration = Duration::from_secs(60);

impl Bench {
    /// The one-shot clients, each as a program and its arguments: ours, ours with direct
    /// reply-to, the tutorial's Python client; all call fib(30) on the phase's main server.
    fn oneshot_commands(&self) -> [(&'static str, Vec<String>); 3] {
        let client = self.bin_dir.join("rpc-client").display().to_string();
        let queue = format!("{}-main", self.queue);
        let python = self.python.display().to_string();
        let peer = format!("{PEERS}/rpc_client.py");
        [
            (
                "ours",
                vec![client.clone(), "--queue".into(), queue.clone(), "30".into()],
            ),
            (
                "ours-direct",
                [&client, "--reply-queue", "direct", "--queue", &queue, "30"]
                    .map(String::from)
                    .to_vec(),
            ),
            (
                "python",
                [&python, &peer, "--queue", &queue, "30"]
                    .map(String::from)
                    .to_vec(),
            ),
        ]
    }

    /// (e) one-shot wall time: the median of BENCH_ONESHOT_RUNS runs of each client.
    pub(super) fn oneshots(&mut self) -> Result<()> {
        let runs = self.settings.oneshot_runs;
        let how = if self.hyperfine {
            "hyperfine"
        } else {
            "a timed loop"
        };
        self.results.info.oneshot_how = how.into();
        msg(&format!("e: one-shot wall time, {runs} runs each ({how})"));
        let commands = self.oneshot_commands();
        if !self.hyperfine {
            for (name, argv) in &commands {
                self.oneshot_loop(&format!("e-{name}"), argv)?;
            }
            return Ok(());
        }
        let csv = self.work.join("e.csv");
        let hyperfine = |_: &Bench| {
            let mut command = Command::new("hyperfine");
            command.args(["-N", "--style", "basic", "--warmup", "2"]);
            command
                .args(["--runs", &runs.to_string(), "--export-csv"])
                .arg(&csv);
            for (name, argv) in &commands {
                command.args(["-n", name, &argv.join(" ")]);
            }
            command
        };
        if self.attempt("e-hyperfine", Duration::from_secs(600), hyperfine)? {
            // command,mean,stddev,median,... in seconds
            for line in std::fs::read_to_string(&csv)?.lines().skip(1) {
                let fields: Vec<&str> = line.split(',').collect();
                if let (Some(name), Some(Ok(median))) =
                    (fields.first(), fields.get(3).map(|m| m.parse::<f64>()))
                {
                    self.results
                        .oneshot
                        .entry(format!("e-{name}"))
                        .or_default()
                        .push(median);
                }
            }
        }
        Ok(())
    }

    /// Times `argv` BENCH_ONESHOT_RUNS times after 2 untimed runs, as one-shot row `id`;
    /// a failed run tries the whole loop once more after the broker is back.
    fn oneshot_loop(&mut self, id: &str, argv: &[String]) -> Result<()> {
        self.retried(id, id, |bench| {
            let mut times = Vec::new();
            for i in 0..bench.settings.oneshot_runs + 2 {
                let mut command = Command::new(&argv[0]);
                command.args(&argv[1..]);
                let took = process::timed(&mut command, ONESHOT_LIMIT)?;
                if i >= 2 {
                    times.push(took.as_secs_f64());
                }
            }
            bench.results.oneshot.insert(id.into(), times);
            Ok(())
        })?;
        Ok(())
    }

    /// (g) the one-shot clients' peak RSS (GNU time %M, largest of 3 runs).
    pub(super) fn oneshot_rss(&mut self) -> Result<()> {
        let commands = self.oneshot_commands();
        for (who, argv) in commands.iter().filter(|(who, _)| *who != "ours-direct") {
            for i in 1..=3 {
                let stem = format!("g-{who}-{i}");
                let rss = self.work.join(format!("{stem}.rss"));
                let time = |_: &Bench| {
                    let mut time = Command::new("/usr/bin/time");
                    time.args(["-f", "%M", "-o"]).arg(&rss).args(argv);
                    time
                };
                if self.attempt(&stem, ONESHOT_LIMIT, time)? {
                    self.rss_file(&format!("oneshot-{who}"), &rss);
                }
            }
        }
        Ok(())
    }
}
