//! `cargo xtask bench`: every benchmark in one run on one broker, printed as one markdown
//! table (also saved to target/bench/bench.md), each row with its ratio to an anchor row:
//!
//! - (a) echo floor: `cargo bench --bench echo_floor` (bare amiquip echo), 1 and
//!   `BENCH_DEPTHS` in flight; a`K`-confirm the same echo with `--confirm` (replies published
//!   with publisher confirms, each request acked after its reply's confirm: one confirmed
//!   publish per call, as rpc-client's requests have, and rpc-server `--confirm-replies`)
//! - (b) the tutorial's Python pika client, sequential calls/s (scripts/interop/bench_pika.py)
//! - (c) rpc-client bench, 1 in flight, exclusive and direct reply-to   (vs a, a-confirm, b)
//! - (d) rpc-client bench, 8 and 64 in flight, exclusive and direct     (vs a, a-confirm)
//! - (e) one-shot wall time: rpc-client 30 vs the tutorial client rpc_client.py 30 (median)
//! - (f) fib(n) + decimal: `cargo bench --bench fib` vs gmpy2 (best of runs)
//! - (g) peak RSS (VmHWM / GNU time %M) of rpc-server idle and after serving, of clients
//! - (h) the cost of a process per request: rpc-server serving `-- cat` (which echoes the
//!   body 30, a valid decimal reply) vs the Fibonacci server, 1 and 8 in flight, and
//!   `--workers 2 -- cat`
//! - (m) the cost of the metrics endpoint: rpc-server `--metrics-addr 127.0.0.1:0` with
//!   /metrics fetched once a second vs the same server without, 1 and 64 in flight
//! - (i) instructions per call under callgrind (load-independent): rpc-server vs the raw
//!   amiquip echo server, rpc-client vs the raw amiquip client with confirms, `--metrics-addr`
//!   on vs off, trace context on vs off; 1 and 64 in flight ([`instructions`])
//! - (s) a program kept per worker (`--protocol lines`): a Python echo handler kept vs the
//!   Fibonacci server and vs the same handler per request; `cat` kept; workers 1, 2, 4
//!
//! The calls/s rows are data ([`rows`]); the bench starts each phase's release rpc-servers
//! (on queues `bench-<run>-<server>`, as processes of its own), runs the phase's rows
//! `BENCH_REPEAT` times in turn, anchor and compared rows alternating, and keeps each row's
//! best run (the machine may be busy with other work). A measurement that fails (say, the
//! broker restarted under it) is retried once after the broker answers again; the run fails
//! if a row could not be measured. Servers and queues are removed however the run ends
//! (Ctrl-C included); raw outputs and server logs stay in target/bench/`run-<id>` after a
//! failure. Settings: see [`settings`].

mod instructions;
mod measure;
mod oneshot;
mod process;
mod results;
mod rows;
mod settings;
mod table;
#[cfg(test)]
mod table_tests;

pub use process::interrupted;

use anyhow::{bail, Context as _, Result};
use results::Results;
use rpc_client::testing::Admin;
use rpc_client::BrokerOptions;
use settings::Settings;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const OUT_DIR: &str = "target/bench";
const PEERS: &str = "scripts/interop";

pub fn msg(text: &str) {
    eprintln!("xtask bench: {text}");
}

/// Queues of the run, deleted when dropped (after the servers that consume them).
struct Queues {
    brokers: Vec<BrokerOptions>,
    names: Vec<String>,
}

impl Drop for Queues {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let deleted = Admin::connect_to(&self.brokers)
            .and_then(|mut admin| self.names.iter().try_for_each(|q| admin.delete(q)));
        if let Err(err) = deleted {
            let names = self.names.join(" ");
            msg(&format!(
                "could not delete queues {names} ({err}); delete them by hand"
            ));
        }
    }
}

/// A run in progress. Field order is drop order: servers stop before their queues go.
pub struct Bench {
    servers: Vec<(String, process::Server)>,
    queues: Queues,
    settings: Settings,
    brokers: Vec<BrokerOptions>,
    /// Raw outputs and server logs of this run.
    work: PathBuf,
    /// The run's queue names start with this.
    queue: String,
    bin_dir: PathBuf,
    python: PathBuf,
    /// `/usr/bin/time -f %M -o`, if GNU time works here.
    gnu_time: bool,
    hyperfine: bool,
    results: Results,
}

/// Runs the bench (see the module docs); `quick`: the smoke run.
pub fn run(brokers: &[BrokerOptions], quick: bool) -> Result<()> {
    let settings = Settings::from_env(quick)?;
    process::catch_signals()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::env::set_current_dir(&root).with_context(|| root.display().to_string())?;
    let started = Instant::now();
    let id = uuid::Uuid::new_v4();
    let work = PathBuf::from(format!("{OUT_DIR}/run-{id}"));
    std::fs::create_dir_all(work.join("servers")).context("creating the run directory")?;
    let bin_dir = PathBuf::from(std::env::var("RPC_BIN_DIR").unwrap_or("target/release".into()));
    let mut bench = Bench {
        servers: Vec::new(),
        queues: Queues {
            brokers: brokers.to_vec(),
            names: Vec::new(),
        },
        brokers: brokers.to_vec(),
        work: work.clone(),
        queue: format!("bench-{id}"),
        bin_dir,
        python: PathBuf::from("target/py-venv/bin/python"),
        gnu_time: false,
        hyperfine: false,
        results: Results::default(),
        settings,
    };
    let mode = if bench.settings.quick {
        "quick smoke"
    } else {
        "full"
    };
    msg(&format!(
        "run {id} ({mode}), raw outputs in {}",
        work.display()
    ));
    bench.results.info.mode = mode.into();
    let outcome = bench.all(started);
    drop(bench); // servers stopped, queues deleted
    match outcome {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&work);
            Ok(())
        }
        Err(err) => {
            msg(&format!(
                "raw outputs and server logs kept in {}",
                work.display()
            ));
            Err(err)
        }
    }
}

impl Bench {
    fn all(&mut self, started: Instant) -> Result<()> {
        self.prepare()?;
        for phase in rows::phases(&self.settings) {
            if self.settings.want(phase.groups) {
                self.phase(&phase)?;
            }
        }
        if self.settings.want("f") {
            self.fib()?;
        }
        if self.settings.want("i") {
            self.instructions()?;
        }
        let r = &mut self.results;
        r.info.date = utc_now()?;
        r.info.elapsed_secs = started.elapsed().as_secs();
        let report = table::render(r, &self.settings);
        let path = Path::new(OUT_DIR).join("bench.md");
        std::fs::write(&path, &report).with_context(|| path.display().to_string())?;
        print!("{report}");
        msg(&format!(
            "table saved to {} ({} s)",
            path.display(),
            r.info.elapsed_secs
        ));
        if !r.failed.is_empty() {
            bail!("some rows could not be measured: {}", r.failed.join(" "));
        }
        Ok(())
    }

    /// The broker, the Python venv, the tools, the build, and the header facts.
    fn prepare(&mut self) -> Result<()> {
        self.script("scripts/broker.sh", &[], Duration::from_secs(600))?;
        let reqs = [
            format!("{PEERS}/requirements.txt"),
            format!("{PEERS}/requirements-bench.txt"),
        ];
        self.lib_sh("ensure_venv", &reqs)?;
        let time = ["/usr/bin/time", "-f", "%M", "-o", "/dev/null", "true"];
        self.gnu_time = self.tool(&time, "time");
        if !self.gnu_time {
            msg("warning: GNU time (/usr/bin/time) missing: client RSS rows will read n/a");
        }
        self.hyperfine = self.tool(&["hyperfine", "--version"], "hyperfine");
        if self.settings.want("i") && !self.tool(&["valgrind", "--version"], "valgrind") {
            bail!("rows i need valgrind (apt-get install valgrind)");
        }
        if !self.hyperfine {
            msg("hyperfine not available: timing one-shot runs with a loop");
        }
        msg("building (cargo build --release; cargo bench --workspace --no-run for echo_floor and fib)");
        let builds = [
            vec!["build", "--release"],
            [&WORKSPACE_BENCH[..], &["--no-run"]].concat(),
        ];
        for (i, build) in builds.iter().enumerate() {
            let mut cargo = cargo();
            cargo.args(build);
            let (out, err) = (
                self.work.join(format!("build-{i}.out")),
                self.work.join("build.log"),
            );
            process::run(&mut cargo, &out, &err, measure::BUILD_LIMIT).context("build failed")?;
        }
        self.describe()
    }

    /// Machine, software and broker lines of the header.
    fn describe(&mut self) -> Result<()> {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let field = |text: &str, key: &str| {
            let line = text.lines().find(|l| l.starts_with(key))?;
            Some(line.split_once(':')?.1.trim().to_string())
        };
        let cpuinfo = read("/proc/cpuinfo");
        let model = field(&cpuinfo, "model name").unwrap_or("unknown CPU".into());
        let mem_kb: f64 = field(&read("/proc/meminfo"), "MemTotal")
            .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let kernel = read("/proc/sys/kernel/osrelease");
        let info = &mut self.results.info;
        info.machine = format!(
            "{cores} cores (nproc), {model}, {:.1} GiB RAM, Linux {}",
            mem_kb / 1_048_576.0,
            kernel.trim()
        );
        let broker = crate::broker::version(&self.brokers)
            .unwrap_or_else(|err| format!("unknown ({err:#})"));
        let rustc = output(Command::new("rustc").arg("--version"))?;
        let python = output(Command::new(&self.python).args(["-c", PY_VERSIONS]))?;
        info.software = format!("{broker}; {}; {}", rustc.trim(), python.trim());
        info.broker = self.brokers[0].display_uri();
        msg(&format!("machine: {}", info.machine));
        msg(&format!("software: {}", info.software));
        Ok(())
    }

    /// Is `command` working here? Full runs install `package` with apt if it is not.
    fn tool(&self, command: &[&str], package: &str) -> bool {
        let works = || {
            Command::new(command[0])
                .args(&command[1..])
                .output()
                .is_ok_and(|out| out.status.success())
        };
        works()
            || (!self.settings.quick && self.lib_sh("apt_install", &[package]).is_ok() && works())
    }

    /// Runs a function of scripts/lib.sh (OS work: apt, the venv) with `args`.
    fn lib_sh(&self, function: &str, args: &[impl AsRef<str>]) -> Result<()> {
        let mut bash = Command::new("bash");
        bash.args([
            "-c",
            &format!(". scripts/lib.sh && {function} \"$@\""),
            "xtask-bench",
        ]);
        bash.args(args.iter().map(AsRef::as_ref));
        self.interactive(&mut bash, Duration::from_secs(900))
            .with_context(|| format!("scripts/lib.sh {function}"))
    }

    /// Runs a script of scripts/ with `args`.
    fn script(&self, path: &str, args: &[&str], limit: Duration) -> Result<()> {
        self.interactive(Command::new(path).args(args), limit)
            .with_context(|| path.to_string())
    }

    /// Runs `command` with its output on ours (a script's messages), within `limit`.
    fn interactive(&self, command: &mut Command, limit: Duration) -> Result<()> {
        // The scripts run target/release/xtask: `cargo xtask` built it already.
        command.env("XTASK_BUILT", "1");
        process::run_attached(command, limit)
    }
}

const PY_VERSIONS: &str = "import sys, pika, gmpy2
print(f\"Python {sys.version.split()[0]}, pika {pika.__version__}, gmpy2 {gmpy2.version()} ({gmpy2.mp_version()})\")";

/// `cargo bench` over the whole workspace, as `cargo test --workspace` builds: selecting one
/// package (`-p`) resolves the dependencies' features for it alone, and rebuilt a third copy
/// of libc, OpenSSL and amiquip in CI's run (67 s of its bench stage).
const WORKSPACE_BENCH: [&str; 4] = [
    "bench",
    "--workspace",
    "--features",
    "rpc-client/test-support",
];

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()))
}

/// The stdout of `command`, which must succeed.
fn output(command: &mut Command) -> Result<String> {
    let out = command.output().with_context(|| format!("{command:?}"))?;
    if !out.status.success() {
        bail!("{command:?}: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// "YYYY-MM-DD HH:MM UTC".
fn utc_now() -> Result<String> {
    Ok(
        output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))?
            .trim()
            .to_string(),
    )
}
