//! The guardian of a [`contain`](super::contain)ed server's commands: a process of its own,
//! told of each command as it starts and is reaped, that kills the process groups of the
//! commands in hand when the server dies, however it dies.

use super::process::{kill_group, kill_process};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

/// Set (to `1`) in the environment of the guardian process: `rpc-server`'s `main` runs
/// [`guard`] when it finds it.
pub const GUARDIAN_ENV: &str = "RPC_SERVER_INTERNAL_GUARDIAN";

/// The guardian's pid (0: none), which is no orphan.
static GUARDIAN_PID: AtomicU32 = AtomicU32::new(0);

/// The pipe to the guardian's stdin.
static GUARDIAN: Mutex<Option<ChildStdin>> = Mutex::new(None);

fn guardian_pipe() -> std::sync::MutexGuard<'static, Option<ChildStdin>> {
    GUARDIAN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Starts this process's own executable as its guardian ([`guard`]), with nothing of the
/// server's environment.
pub(super) fn start() -> std::io::Result<()> {
    let guardian = std::env::current_exe().and_then(|exe| {
        std::process::Command::new(exe)
            .arg0("rpc-server (guardian)")
            // Nothing of the server's environment (its password) in a /proc file its
            // commands can read.
            .env_clear()
            .env(GUARDIAN_ENV, "1")
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

/// The guardian's pid, 0 if there is none.
pub(super) fn pid() -> u32 {
    GUARDIAN_PID.load(Ordering::Relaxed)
}

/// Tells the guardian that command `pid` started (`+`) or was reaped (`-`). A guardian that
/// is gone is logged once and forgotten.
pub(super) fn tell(what: char, pid: u32) {
    let mut pipe = guardian_pipe();
    let Some(stdin) = pipe.as_mut() else { return };
    if let Err(err) = stdin.write_all(format!("{what}{pid}\n").as_bytes()) {
        log::warn!(
            "the guardian process is gone ({err}): a server killed now leaves its commands running"
        );
        *pipe = None;
    }
}

/// The guardian of a [`contain`](super::contain)ed server's commands, run in a process of its
/// own: reads `+PID` (a command started) and `-PID` (it was reaped) lines on stdin, a pipe
/// from the server; at its end (the server exited or died: the kernel closes the pipe) kills
/// the process groups of the commands still in hand, and exits. A process apart because a
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
    if !in_hand.is_empty() {
        rpc_client::cli::set_format(rpc_client::cli::format_from_args(std::env::args_os()));
        rpc_client::cli::stderr_line(
            log::Level::Warn,
            "rpc-server (guardian)",
            &format!(
                "the server is gone; killed its {} command(s) in hand",
                in_hand.len()
            ),
        );
    }
    std::process::exit(0)
}
