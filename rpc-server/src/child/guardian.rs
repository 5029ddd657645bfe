//! The guardian of a [`contain`](crate::command::contain)ed server's commands: a process of its own,
//! told of each command as it starts and is reaped, that kills the process groups of the
//! commands in hand when the server dies, however it dies, and every process that carries
//! the server's [`INSTANCE_ENV`] in its environment (what left a command's group).

use super::kill::{kill_group, kill_process};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Set (to `1`) in the environment of the guardian process: `rpc-server`'s `main` runs
/// [`guard`] when it finds it.
pub const GUARDIAN_ENV: &str = "RPC_SERVER_INTERNAL_GUARDIAN";

/// In the environment of every command and kept program of a [`contain`](crate::command::contain)ed
/// server: a random id of the server, by which its guardian finds, in `/proc/PID/environ`,
/// the processes they started once the server is gone.
pub const INSTANCE_ENV: &str = "RPC_SERVER_INSTANCE";

/// The server's id for the guardian (not [`INSTANCE_ENV`]: the guardian is not its own prey).
const GUARDIAN_INSTANCE_ENV: &str = "RPC_SERVER_INTERNAL_INSTANCE";

/// How long the guardian goes on looking for processes with the server's id: the first
/// look misses a command the server was spawning as it died (it gets its environment at
/// `exec`).
const MARKED_AT_LEAST: Duration = Duration::from_millis(50);

/// How long the guardian goes on killing processes with the server's id, at most.
const MARKED_BOUND: Duration = Duration::from_secs(1);

/// This server's id ([`INSTANCE_ENV`]), once its guardian started.
static INSTANCE: OnceLock<String> = OnceLock::new();

/// The guardian's pid (0: none), which is no orphan.
static GUARDIAN_PID: AtomicU32 = AtomicU32::new(0);

/// The pipe to the guardian's stdin.
static GUARDIAN: Mutex<Option<ChildStdin>> = Mutex::new(None);

fn guardian_pipe() -> std::sync::MutexGuard<'static, Option<ChildStdin>> {
    GUARDIAN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts this process's own executable as its guardian ([`guard`]), with nothing of the
/// server's environment.
pub(crate) fn start() -> std::io::Result<()> {
    let instance = INSTANCE.get_or_init(|| {
        // 128 random bits from the standard library's randomly keyed hasher (not for secrets:
        // the id is no secret, only unique).
        let random = || {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        format!("{:016x}{:016x}", random(), random())
    });
    let guardian = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .arg0("rpc-server (guardian)")
            // Nothing of the server's environment (its password) in a /proc file its
            // commands can read.
            .env_clear()
            .env(GUARDIAN_ENV, "1")
            .env(GUARDIAN_INSTANCE_ENV, instance)
            // Its one line in the server's log format.
            .env(
                "RPC_LOG_FORMAT",
                if rpc_client::cli::is_json() {
                    "json"
                } else {
                    "text"
                },
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Away from the terminal's signals, which are the server's to handle.
            .process_group(0)
            .spawn()
    })?;
    GUARDIAN_PID.store(guardian.id(), Ordering::SeqCst);
    *guardian_pipe() = guardian.stdin;
    Ok(())
}

/// This server's id for its commands' environment ([`INSTANCE_ENV`]), once its guardian
/// started.
pub(crate) fn instance() -> Option<&'static str> {
    INSTANCE.get().map(String::as_str)
}

/// The guardian's pid, 0 if there is none.
pub(crate) fn pid() -> u32 {
    GUARDIAN_PID.load(Ordering::Relaxed)
}

/// Tells the guardian that command `pid` started (`+`) or was reaped (`-`). A guardian that
/// is gone is logged once and forgotten.
pub(crate) fn tell(what: char, pid: u32) {
    let mut pipe = guardian_pipe();
    let Some(stdin) = pipe.as_mut() else { return };
    if let Err(err) = stdin.write_all(format!("{what}{pid}\n").as_bytes()) {
        log::warn!(
            "the guardian process is gone ({err}): a server killed now leaves its commands running"
        );
        *pipe = None;
    }
}

/// The guardian of a [`contain`](crate::command::contain)ed server's commands, run in a process of its
/// own: reads `+PID` (a command started) and `-PID` (it was reaped) lines on stdin, a pipe
/// from the server; at its end (the server exited or died: the kernel closes the pipe) kills
/// the process groups of the commands still in hand, then every process with the server's
/// [`INSTANCE_ENV`] in its environment (`end_marked`), and exits. A process apart because a
/// process cannot act after its own SIGKILL; a parent-death signal would need `fork` (and an
/// `unsafe` hook) instead of `posix_spawn` for every command, which costs about a millisecond
/// per request.
pub fn guard() -> ! {
    use std::io::BufRead;
    let mut in_hand = std::collections::HashSet::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (what, pid) = line.split_at(line.len().min(1));
        match (what, pid.parse::<u32>()) {
            ("+", Ok(pid)) => {
                in_hand.insert(pid);
            }
            ("-", Ok(pid)) => {
                in_hand.remove(&pid);
            }
            _ => {}
        }
    }
    for pid in &in_hand {
        kill_group(*pid);
        kill_process(*pid);
    }
    let (marked, left) = match std::env::var(GUARDIAN_INSTANCE_ENV) {
        Ok(instance) if !instance.is_empty() => end_marked(&format!("{INSTANCE_ENV}={instance}")),
        _ => (0, 0),
    };
    let mut said = Vec::new();
    if !in_hand.is_empty() || marked > 0 {
        said.push((
            log::Level::Warn,
            format!(
                "the server is gone; killed its {} command(s) in hand and {marked} process(es) \
                 with its {INSTANCE_ENV}",
                in_hand.len()
            ),
        ));
    }
    if left > 0 {
        said.push((
            log::Level::Error,
            format!("{left} process(es) with the server's {INSTANCE_ENV} outlived its guardian"),
        ));
    }
    if !said.is_empty() {
        rpc_client::cli::set_format(rpc_client::cli::format_from_args(std::env::args_os()));
        for (level, line) in said {
            rpc_client::cli::stderr_line(level, "rpc-server (guardian)", &line);
        }
    }
    std::process::exit(0)
}

/// Kills (with the group each leads) every process whose environment holds `entry`
/// (`NAME=VALUE`), looking again and again (what they fork meanwhile has it too) for at least
/// [`MARKED_AT_LEAST`], until a look finds none or [`MARKED_BOUND`] passes. Returns how many
/// it killed, and how many it found at its last look.
fn end_marked(entry: &str) -> (usize, usize) {
    let started = Instant::now();
    let mut killed = std::collections::HashSet::new();
    loop {
        let found = marked(entry.as_bytes());
        if found.is_empty() && started.elapsed() >= MARKED_AT_LEAST {
            return (killed.len(), 0);
        }
        if started.elapsed() >= MARKED_BOUND {
            return (killed.len(), found.len());
        }
        for pid in found {
            kill_group(pid);
            kill_process(pid);
            killed.insert(pid);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The processes (but this one) whose `/proc/PID/environ` holds `entry` (`NAME=VALUE`) as
/// it was at their start: those it can read, of its own user and not made undumpable (a
/// set-user-ID program), or any with `CAP_SYS_PTRACE`. An exited process's reads empty.
fn marked(entry: &[u8]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|byte| *byte == 0).any(|var| var == entry))
        })
        .collect()
}
