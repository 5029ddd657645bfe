//! The processes a server's commands run in: each spawned in a process group of its own and
//! known as *in hand* until it is reaped; killing a group; and, in a [`contain`]ed server, the
//! subreaper's work: ending the orphans commands leave ([`end_orphans`]) and everything at an
//! unclean stop ([`end_all`]). What a guardian process does if the server dies is in
//! [`super::guardian`].
//!
//! For any way of running a program for requests: [`spawn`] a process in hand, [`kill_group`]
//! and [`end`] it (kill and reap), [`end_orphans`] after each, and stop for good when
//! [`ending`] says the server is exiting.

use super::guardian;
pub(crate) use super::kill::{kill_group, kill_process};
use crate::error::Error;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// How long [`end_orphans`] keeps killing what each killed process leaves behind.
const ORPHANS_BOUND: Duration = Duration::from_millis(200);

/// Whether [`contain`] made this process the subreaper of its commands' processes.
static CONTAINED: AtomicBool = AtomicBool::new(false);

/// Set by [`end_all`]: the process is exiting.
static ENDING: AtomicBool = AtomicBool::new(false);

/// The commands in hand (their pids, which are their groups' ids), until each is reaped.
static IN_HAND: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Held (read) while a command is spawned and recorded in [`IN_HAND`], and (write) while
/// orphans are looked for: a child not in hand is then an orphan for sure.
static SPAWNING: RwLock<()> = RwLock::new(());

fn in_hand() -> std::sync::MutexGuard<'static, Vec<u32>> {
    IN_HAND.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A command's process in hand, until dropped: kept out of the orphan scans, and known to
/// the guardian. Drop it once the process is reaped (a group's id is not reused while a
/// member of it lives, reaped leader or not).
pub(crate) struct InHand(u32);

impl Drop for InHand {
    fn drop(&mut self) {
        let mut pids = in_hand();
        if let Some(index) = pids.iter().position(|pid| *pid == self.0) {
            pids.swap_remove(index);
        }
        drop(pids);
        guardian::tell('-', self.0);
    }
}

/// Spawns `command` in a process group of its own (its pid is the group's id), in hand:
/// known to [`end_orphans`], [`end_all`] and the guardian until the [`InHand`] is dropped,
/// which must be after the child is reaped (no scan for orphans sees it before it is
/// recorded). Refused once [`end_all`] was called. For a run of
/// [`CommandHandler`](crate::command::CommandHandler) and for the programs `crate::stream` keeps
/// running.
pub(crate) fn spawn(command: &mut std::process::Command) -> io::Result<(Child, InHand)> {
    let _spawning = SPAWNING.read().unwrap_or_else(PoisonError::into_inner);
    if ending() {
        return Err(io::Error::other("the server is exiting"));
    }
    let child = command.process_group(0).spawn()?;
    let pid = child.id();
    in_hand().push(pid);
    guardian::tell('+', pid);
    Ok((child, InHand(pid)))
}

/// Kills `child`'s process group and `child`, and reaps it.
pub(crate) fn end(child: &mut Child) -> io::Result<ExitStatus> {
    kill_group(child.id());
    let _ = child.kill();
    child.wait()
}

/// Whether [`end_all`] was called: the process is exiting, and a command that ended was
/// killed by it (its request must go back to the queue unanswered: see [`park_if_ending`]).
pub(crate) fn ending() -> bool {
    ENDING.load(Ordering::SeqCst)
}

/// Never returns once [`end_all`] was called: the process is exiting, and the request of a
/// command it killed goes back to the queue unanswered, as after any crash (not with an
/// `exec-failed` reply).
pub(crate) fn park_if_ending() {
    if ending() {
        loop {
            std::thread::park();
        }
    }
}

/// Makes this process the keeper of whatever its commands start, for a server that serves a
/// command (the `rpc-server` binary calls it before serving). Only for a binary whose `main`
/// runs [`guard`](crate::command::guard) when [`GUARDIAN_ENV`](crate::command::GUARDIAN_ENV) is set: it starts
/// its own executable as the guardian.
///
/// - a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process whose parent exits, such as
///   one that left its command's group with `setsid`, becomes a child of this process
///   instead of init's, so [`end_orphans`] and [`end_all`] can find it and end it;
/// - not dumpable (`PR_SET_DUMPABLE` 0): other processes of the same user, its commands
///   among them, can no longer read its `/proc/PID/environ` (where `AMQP_PASSWORD` is) or
///   its memory, nor attach a debugger; it also dumps no core. Its command line stays
///   readable by every user (`ps`), so a password has no place there;
/// - the parent of a guardian process ([`guard`](crate::command::guard)): told of each command as it
///   starts and ends, it kills the process groups of the commands in hand when the server
///   dies, however it dies (SIGKILL, the OOM killer), and the processes with the server's id
///   in their environment ([`INSTANCE_ENV`](crate::command::INSTANCE_ENV), which every command gets).
///
/// Linux only; an error names the setting the kernel refused, or why the guardian could not
/// start.
pub fn contain() -> Result<(), Error> {
    nix::sys::prctl::set_dumpable(false)
        .map_err(|err| Error::Config(format!("cannot make the server non-dumpable: {err}")))?;
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|err| Error::Config(format!("cannot make the server a subreaper: {err}")))?;
    guardian::start()
        .map_err(|err| Error::Config(format!("cannot start the guardian process: {err}")))?;
    CONTAINED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Ends the orphans of a [`contain`]ed server: processes its commands started whose parent
/// has exited (a `setsid` child left behind, a daemon). Each is killed with its process group,
/// then what it leaves is killed in turn, for at most `ORPHANS_BOUND`; orphans that exited
/// by themselves are reaped. The command handler calls it each time a command ends. Does
/// nothing in a process that did not call [`contain`].
pub fn end_orphans() {
    if !CONTAINED.load(Ordering::Relaxed) {
        return;
    }
    // An orphan is given to the subreaper's first live thread: the main thread, which lives
    // as long as the process.
    let main = main_thread();
    // Without the lock first: it waits for any spawn in progress on another worker (about a
    // millisecond), and there is nearly never an orphan. A child not known yet may be one
    // being spawned: the lock tells.
    let guardian = guardian::pid();
    let mut candidates = children(Some(main));
    candidates.retain(|pid| *pid != guardian);
    if !candidates.is_empty() {
        let in_hand = in_hand();
        candidates.retain(|pid| !in_hand.contains(pid));
    }
    if candidates.is_empty() {
        return;
    }
    let _spawning = SPAWNING.write().unwrap_or_else(PoisonError::into_inner);
    let ended = end_children(Some(main), true, Instant::now() + ORPHANS_BOUND);
    if ended > 0 {
        log::info!("ended {ended} processes left running by commands outside their group");
    }
}

/// Ends every command in hand with its process group and, in a [`contain`]ed server,
/// everything its commands started, within about `within`: for a process about to exit (a
/// second signal, an unclean stop). Once it has been called no command starts, and a handler
/// whose command it killed never returns (its request must not be answered with the kill).
pub fn end_all(within: Duration) {
    ENDING.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + within;
    // Keeps any command from starting from now on (the process is about to exit).
    let spawning = loop {
        match SPAWNING.try_write() {
            Ok(guard) => break Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => break Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(std::sync::TryLockError::WouldBlock) => break None,
        }
    };
    for pid in in_hand().iter() {
        // Killed and reaped here: the guardian must not kill their groups' ids once the
        // server is gone, when the ids may name other groups.
        guardian::tell('-', *pid);
        kill_group(*pid);
        kill_process(*pid);
    }
    if CONTAINED.load(Ordering::Relaxed) {
        let ended = end_children(None, false, deadline);
        if ended > 0 {
            log::info!("ended {ended} processes of the commands in hand");
        }
    }
    std::mem::forget(spawning);
}

/// Kills (with their groups) and reaps the children of thread `thread` (all threads if
/// `None`), except the commands in hand if `spare_in_hand`, again and again as the killed ones
/// leave theirs, until there are none or `deadline` passes. Returns how many it killed.
fn end_children(thread: Option<nix::unistd::Pid>, spare_in_hand: bool, deadline: Instant) -> usize {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut killed = std::collections::HashSet::new();
    let mut pause = Duration::from_micros(200);
    loop {
        let mut children = children(thread);
        let guardian = guardian::pid();
        children.retain(|pid| *pid != guardian);
        if spare_in_hand {
            let in_hand = in_hand();
            children.retain(|pid| !in_hand.contains(pid));
        }
        if children.is_empty() {
            return killed.len();
        }
        for pid in children {
            let Ok(raw) = i32::try_from(pid) else {
                continue;
            };
            // Reaps it if it has exited; else kills it, with the group it leads (its id is its
            // own pid). One leading no group is not harmed by that: a group's id is always
            // the pid of the process that made it.
            let status = waitpid(nix::unistd::Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG));
            if let Ok(WaitStatus::StillAlive) = status {
                kill_group(pid);
                kill_process(pid);
                killed.insert(pid);
            }
        }
        if Instant::now() >= deadline {
            log::warn!("processes left by commands are still there after being killed");
            return killed.len();
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// This process's main thread (its id is the process's).
fn main_thread() -> nix::unistd::Pid {
    static MAIN: OnceLock<nix::unistd::Pid> = OnceLock::new();
    *MAIN.get_or_init(nix::unistd::getpid)
}

/// The children of the main thread, from its `/proc/self/task/TID/children` kept open: read
/// again from its start, it lists them anew (one `pread` when there are none, where opening it
/// each time took five system calls after each request). `None` if it cannot be read.
fn main_children() -> Option<Vec<u32>> {
    static FILE: OnceLock<Option<std::fs::File>> = OnceLock::new();
    let file = FILE
        .get_or_init(|| {
            std::fs::File::open(format!("/proc/self/task/{}/children", main_thread())).ok()
        })
        .as_ref()?;
    let mut text = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let offset = u64::try_from(text.len()).ok()?;
        match file.read_at(&mut chunk, offset).ok()? {
            0 => break,
            read => text.extend_from_slice(chunk.get(..read)?),
        }
    }
    Some(
        String::from_utf8_lossy(&text)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .collect(),
    )
}

/// The children of thread `thread` of this process (of all its threads if `None`), from
/// `/proc/self/task/TID/children`, or from a scan of `/proc` where the kernel does not list
/// them.
fn children(thread: Option<nix::unistd::Pid>) -> Vec<u32> {
    let listed = |tid: &str| -> Option<Vec<u32>> {
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/children")).ok()?;
        Some(
            text.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect(),
        )
    };
    let found = match thread {
        Some(tid) if tid == main_thread() => main_children(),
        Some(tid) => listed(&tid.to_string()),
        None => std::fs::read_dir("/proc/self/task").ok().and_then(|tasks| {
            let mut all = Vec::new();
            for task in tasks {
                all.extend(listed(&task.ok()?.file_name().to_string_lossy())?);
            }
            Some(all)
        }),
    };
    found.unwrap_or_else(|| {
        let parent = std::process::id().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
                let after_comm = stat.rsplit_once(") ")?.1;
                (after_comm.split(' ').nth(1) == Some(parent.as_str())).then_some(pid)
            })
            .collect()
    })
}
