//! The harness of the process-level tests, shared by every module of this binary (used most by
//! the fault run, [`crate::faults`], and the cluster test, [`crate::cluster`]):
//!
//! - [`load`]: calls and how they ended, the phases of a fault, the tally and the results
//!   table, the checks and notes of a run;
//! - [`caller`]: a reconnecting caller (the library's client, or an `rpc-client` process per
//!   call); [`callers`]: threads of them calling back to back;
//! - [`broker`]: broker control, `rabbitmqctl` and `scripts/cluster.sh` run one way (with a
//!   deadline, their exit status checked), a stopped broker application or cluster node
//!   started again on drop;
//! - [`server`]: `rpc-server` processes ([`server::ServerProc`]), started and stopped;
//! - [`served`]: one serving a command or a kept program on its own queue, and its calls;
//! - [`http`]: GET from the `--metrics-addr` endpoint;
//! - [`proxy`]: a TCP proxy that stalls the link (at a given AMQP method) or trickles it;
//! - [`raw`]: a publisher writing AMQP frames by hand, for messages no library sends;
//! - here: the expected answers, a poison-tolerant lock, log directories.

pub mod broker;
pub mod caller;
pub mod callers;
pub mod http;
pub mod load;
pub mod proxy;
pub mod raw;
pub mod served;
pub mod server;

use std::collections::HashMap;

/// A string header of a message as amiquip delivered it (the tests read deliveries raw).
pub fn raw_header<'a>(properties: &'a amiquip::AmqpProperties, name: &str) -> Option<&'a str> {
    match properties.headers().as_ref()?.get(name)? {
        amiquip::AmqpValue::LongString(s) => Some(s),
        _ => None,
    }
}
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

/// Locks `mutex`, also after a panic in another caller thread (the test reports that).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// fib(n) in decimal, computed once per n. (The same code as the server's: this checks that
/// each caller receives its own answer intact; the arithmetic is tested in [`crate::rpc`].)
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

/// `target/tmp/<name>/`, where the servers of a test keep their logs.
pub fn log_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// [`log_dir`], emptied (the logs of the last run are kept until the next one).
pub fn fresh_log_dir(name: &str) -> PathBuf {
    let dir = log_dir(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the log directory");
    dir
}

/// `d` in seconds, for messages.
pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The `rpc-client` binary, built next to `rpc-server` (by `cargo test` of the workspace, or
/// here if it is missing).
pub fn rpc_client_bin() -> PathBuf {
    let server = Path::new(env!("CARGO_BIN_EXE_rpc-server"));
    let client = server.with_file_name("rpc-client");
    if !client.exists() {
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build.args(["build", "-q", "-p", "rpc-client", "--bin", "rpc-client"]);
        if server.parent().and_then(Path::file_name) == Some("release".as_ref()) {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p rpc-client failed");
    }
    client
}

/// Digits no other process has in its arguments, to mark the processes a test's commands start
/// (`sleep 3600.<marker>`, a program's `$0`) and find them in `/proc` ([`marked`]).
pub fn marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}{nanos:09}", std::process::id())
}

/// The processes of this host with `marker` in their arguments and for which `keep(pid, args)`
/// holds, as "PID: ARGS".
pub fn marked(marker: &str, keep: impl Fn(u32, &[String]) -> bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|byte| *byte == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect();
            (args.iter().any(|arg| arg.contains(marker)) && keep(pid, &args))
                .then(|| format!("{pid}: {}", args.join(" ")))
        })
        .collect()
}
