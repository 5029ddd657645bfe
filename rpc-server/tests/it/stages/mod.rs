//! The assertions of scripts/test.sh's stages that need more than `cargo test` sets up: the
//! scripts do the OS work (certificates, nodes, the Python venv, Prometheus) and then run one
//! module of these ignored tests, telling them where things are through the environment:
//!
//! - [`tls`] (`scripts/tls-test.sh`): amqps:// against a node with a TLS listener;
//! - [`interop`] (`scripts/interop.sh`): our binaries against the tutorial's Python peers;
//! - [`metrics`] (`scripts/metrics-test.sh`): `--metrics-addr` with a real Prometheus;
//! - [`e2e`] (scripts/test.sh): `start-servers.sh`, the client, `stop-servers.sh`; and the
//!   refusals of RabbitMQ 4.3's defaults (the 4.x stage).
//!
//! ```text
//! cargo test --release -p rpc-server --test it stages::MODULE -- --ignored --nocapture --test-threads=1
//! ```
//!
//! Every child process runs with a deadline ([`proc`]); what a failing child printed is shown.
//! The broker is `AMQP_URI`'s (default the local one), each check on queues of its own.

mod e2e;
mod interop;
mod metrics;
mod proc;
mod tls;

use proc::Bg;
use rpc_client::testing::{self, Admin};
use rpc_client::BrokerOptions;
use std::path::PathBuf;
use std::time::Duration;

/// The checks of a stage: each named, printed as it passes or fails (with why), counted; the
/// test asserts at the end that none failed.
pub struct Tally {
    area: &'static str,
    passed: usize,
    failed: Vec<String>,
}

impl Tally {
    pub fn new(area: &'static str) -> Tally {
        Tally {
            area,
            passed: 0,
            failed: Vec::new(),
        }
    }

    pub fn pass(&mut self, name: &str) {
        println!("{}: ok   {name}", self.area);
        self.passed += 1;
    }

    /// A failed check: `name`, and `why` (child output and logs) printed below it.
    pub fn fail(&mut self, name: &str, why: &str) {
        println!("{}: FAIL {name}\n{why}", self.area);
        self.failed.push(name.to_string());
    }

    /// [`Tally::pass`] if `ok`, else [`Tally::fail`] with `why()`.
    pub fn check(&mut self, ok: bool, name: &str, why: impl FnOnce() -> String) {
        if ok {
            self.pass(name);
        } else {
            self.fail(name, &why());
        }
    }

    /// Prints "AREA: N passed, M failed" and fails the test if any check failed.
    pub fn finish(self) {
        println!(
            "{}: {} passed, {} failed",
            self.area,
            self.passed,
            self.failed.len()
        );
        assert!(
            self.failed.is_empty(),
            "{} failed: {}",
            self.area,
            self.failed.join("; ")
        );
    }
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The `rpc-server` binary.
pub fn rpc_server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rpc-server")
}

/// The environment variable `name`, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Waits up to `within` until `queue` on `broker` has exactly `consumers` consumers while
/// `process` runs: `Err` with what was seen (and the process' stderr) if it exits first or
/// the deadline passes.
pub fn await_consumers(
    broker: &BrokerOptions,
    queue: &str,
    consumers: u32,
    within: Duration,
    process: &mut Bg,
) -> Result<(), String> {
    let mut admin: Option<Admin> = None;
    let mut last = String::from("nothing yet");
    let mut gone = None;
    let waited = testing::wait_until(
        &format!("{consumers} consumer(s) on '{queue}'"),
        within,
        || {
            if let Some(status) = process.exited() {
                gone = Some(status);
                return Ok(true);
            }
            let a = match admin.as_mut() {
                Some(a) => a,
                None => match Admin::connect_to(std::slice::from_ref(broker)) {
                    Ok(a) => admin.insert(a),
                    Err(err) => {
                        last = format!("cannot connect: {err}");
                        return Ok(false);
                    }
                },
            };
            match a.queue_state(queue) {
                Ok(Some((_, count))) if count == consumers => return Ok(true),
                Ok(Some((_, count))) => last = format!("{count} consumer(s)"),
                Ok(None) => last = "no such queue".into(),
                Err(err) => {
                    last = format!("error: {err}");
                    admin = None;
                }
            }
            Ok(false)
        },
    );
    match (waited, gone) {
        (_, Some(status)) => Err(format!(
            "{} exited ({status}) before consuming '{queue}'\n{}",
            process.name,
            process.describe()
        )),
        (Ok(()), None) => Ok(()),
        (Err(err), None) => Err(format!("{err} (last seen: {last})\n{}", process.describe())),
    }
}
