//! What the process-level tests (`faults.rs`, `cluster.rs`) share: `rpc-server` processes,
//! the expected answers, a poison-tolerant lock.
// Each test binary uses a different part of this module.
#![allow(dead_code)]

use rpc_client::testing;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Locks `mutex`, also after a panic in another caller thread (the test reports that).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// fib(n) in decimal, computed once per n. (The same code as the server's: this checks that
/// each caller receives its own answer intact; the arithmetic is tested in tests/rpc.rs.)
pub fn expected(n: u64) -> Arc<String> {
    static CACHE: OnceLock<Mutex<HashMap<u64, Arc<String>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(value) = lock(cache).get(&n) {
        return Arc::clone(value);
    }
    let value = Arc::new(rpc_server::fib::fib_decimal(n));
    lock(cache).insert(n, Arc::clone(&value));
    value
}

/// Environment variables the binary reads; cleared so only what a test passes applies.
const INHERITED: [&str; 9] = [
    "AMQP_URI",
    "AMQP_HOST",
    "AMQP_PORT",
    "AMQP_VHOST",
    "AMQP_USER",
    "AMQP_PASSWORD",
    "AMQP_TLS_CA",
    "RPC_QUEUE",
    "RUST_LOG",
];

/// An `rpc-server` process, killed (SIGKILL) and reaped on drop if it still runs.
pub struct ServerProc {
    /// Its `--name`.
    pub name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl ServerProc {
    /// Starts `rpc-server --queue QUEUE --name NAME ARGS...` with `env` (passwords belong there,
    /// not in ARGS, which `ps` shows), its stderr in `<log_dir>/<name>.log`.
    pub fn spawn(
        log_dir: &Path,
        name: &str,
        queue: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> ServerProc {
        let log = log_dir.join(format!("{name}.log"));
        let stderr = File::create(&log).expect("create the server log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rpc-server"));
        command.args(["--queue", queue, "--name", name]).args(args);
        for variable in INHERITED {
            command.env_remove(variable);
        }
        let child = command
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn rpc-server");
        ServerProc {
            name: name.to_string(),
            child,
            log,
            status: None,
        }
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait rpc-server");
        }
        self.status
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Sends SIGKILL.
    pub fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL rpc-server");
    }

    /// Waits up to `within` for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let _ = testing::wait_until(&format!("{} to exit", self.name), within, || {
            Ok(self.exited().is_some())
        });
        self.exited()
    }

    /// SIGTERM, then up to `within` for the exit. How long it took, or a failure message
    /// (with the log's tail) unless it exited 0.
    pub fn stop(&mut self, within: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        if let Some(status) = self.exited() {
            return Err(format!("{} had already exited: {status}", self.name));
        }
        self.sigterm();
        match self.wait_exit(within) {
            Some(status) if status.success() => Ok(started.elapsed()),
            Some(status) => Err(format!(
                "{} exited with {status} after SIGTERM\n{}",
                self.name,
                self.log_tail(15)
            )),
            None => Err(format!(
                "{} still runs {within:?} after SIGTERM\n{}",
                self.name,
                self.log_tail(15)
            )),
        }
    }

    /// Everything it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Its log lines that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    }

    /// How many of its log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_lines(needle).len()
    }

    /// The last `lines` lines of its log, indented, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n    ");
        format!("  last lines of {}:\n    {tail}", self.log.display())
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
