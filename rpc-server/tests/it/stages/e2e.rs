//! End to end through the scripts (scripts/test.sh's e2e stage, and again in its 4.x stage):
//! `start-servers.sh` on a fresh queue (ready once the broker counts its consumers), the
//! rpc-client binary against the rpc-server binaries, `stop-servers.sh` (no consumer left).
//! Results, exit codes and logs of the binaries are checked by the other tests
//! (rpc-client/tests/client/, rpc-server/tests/it/{binary.rs,rpc/}). And
//! [`refusals_on_4x`]: RabbitMQ 4.3's defaults, against `scripts/rabbitmq4.sh`'s node.
//!
//! The scripts use `target/release/` (run these tests with `--release`) and its xtask, which
//! the calling script builds first (`XTASK_BUILT=1` here: no cargo inside cargo test).

use super::proc::{self, Output};
use super::{repo_root, rpc_server_bin};
use crate::common::rpc_client_bin;
use rpc_client::testing::{self, QueueGuard};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// `scripts/start-servers.sh` and `stop-servers.sh` with their run directory
/// `target/run/<queue>`; the servers are stopped on drop (a failing test leaves none).
struct Scripts {
    run_dir: PathBuf,
    started: bool,
}

impl Scripts {
    fn new(queue: &str) -> Scripts {
        let root = repo_root();
        assert!(
            root.join("target/release/xtask").exists(),
            "no target/release/xtask: run `cargo build --release` first"
        );
        Scripts {
            run_dir: root.join("target/run").join(queue),
            started: false,
        }
    }

    fn script(&self, name: &str, args: &[&str]) -> Output {
        let mut command = Command::new(repo_root().join("scripts").join(name));
        command
            .args(args)
            .env("RPC_RUN_DIR", &self.run_dir)
            .env("XTASK_BUILT", "1")
            .env_remove("RPC_URIS");
        proc::run(command, b"", Duration::from_secs(120))
    }

    /// `start-servers.sh N -- ARGS`: must succeed.
    fn start(&mut self, count: usize, args: &[&str]) {
        self.started = true;
        let count = count.to_string();
        let all = [&[count.as_str(), "--"][..], args].concat();
        let out = self.script("start-servers.sh", &all);
        assert!(
            out.exited(0),
            "start-servers.sh failed:\n{}",
            out.describe()
        );
    }

    /// `stop-servers.sh`: must succeed.
    fn stop(&mut self) {
        self.started = false;
        let out = self.script("stop-servers.sh", &[]);
        assert!(out.exited(0), "stop-servers.sh failed:\n{}", out.describe());
    }
}

impl Drop for Scripts {
    fn drop(&mut self) {
        if self.started {
            let out = self.script("stop-servers.sh", &[]);
            if !out.exited(0) {
                eprintln!("stop-servers.sh failed:\n{}", out.describe());
            }
        }
    }
}

/// rpc-client ARGS (stdin closed), within 60 s.
fn client(args: &[&str]) -> Output {
    let mut command = Command::new(rpc_client_bin());
    command.args(args);
    proc::run(command, b"", Duration::from_secs(60))
}

#[test]
#[ignore = "run by scripts/test.sh after cargo build --release"]
fn scripts() {
    let guard = QueueGuard::new("rpc-e2e");
    let queue = guard.name();
    let mut scripts = Scripts::new(queue);
    scripts.start(2, &["--queue", queue]);
    let out = client(&["--timeout", "10", "--queue", queue, "10", "20", "30"]);
    assert!(
        out.exited(0) && out.out() == "55\n6765\n832040",
        "rpc-client 10 20 30 (want 55 6765 832040):\n{}",
        out.describe()
    );
    println!("e2e: ok: rpc-client --queue {queue} 10 20 30 -> 55 6765 832040");
    scripts.stop();
    let within = Duration::from_secs(10);
    if let Err(err) = testing::wait_for_consumers(&[testing::broker()], queue, 0, within) {
        panic!("consumers left on {queue} after stop-servers.sh: {err}");
    }
    println!("e2e: ok: no consumer left on {queue} after stop-servers.sh");
    let _ = std::fs::remove_dir_all(&scripts.run_dir);
}

/// On 4.x with 4.3's defaults: --transient stops at once with exit 4 and the broker's
/// reason; a reply over --max-reply-bytes is an error reply (exit 5), not a publish the
/// broker refuses.
#[test]
#[ignore = "run by scripts/test.sh's 4.x stage against scripts/rabbitmq4.sh's node"]
fn refusals_on_4x() {
    let guard = QueueGuard::new("rpc-4x");
    let queue = guard.name();
    let transient = QueueGuard::on(vec![testing::broker()], "rpc-4x-transient");
    let mut command = Command::new(rpc_server_bin());
    command.args(["--queue", transient.name(), "--transient"]);
    let out = proc::run(command, b"", Duration::from_secs(60));
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        out.exited(4) && text.contains("transient_nonexcl_queues") && text.contains("not retrying"),
        "rpc-server --transient on 4.x (want exit 4, the broker's reason, not retrying):\n{}",
        out.describe()
    );
    let reason = text.rsplit("not retrying: ").next().unwrap_or("").trim();
    println!(
        "4.x: ok: rpc-server --transient exits 4: {}",
        proc::printable(reason)
    );

    let mut scripts = Scripts::new(queue);
    scripts.start(1, &["--queue", queue, "--max-reply-bytes", "5"]);
    let out = client(&["--queue", queue, "--timeout", "10", "30"]);
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        out.exited(5) && text.contains("too-large"),
        "a reply over --max-reply-bytes (want exit 5, too-large):\n{}",
        out.describe()
    );
    println!(
        "4.x: ok: a reply over --max-reply-bytes is an error reply: {}",
        proc::printable(text.trim())
    );
    scripts.stop();
    let _ = std::fs::remove_dir_all(&scripts.run_dir);
}
