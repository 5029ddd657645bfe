//! Whether a kept program waits for its next request ([`Watch`]), from `/proc`: a reply is
//! sent, and a request written, only once the program and every process it started in its
//! group are blocked in a system call, at least one of them waiting for input (a `read` or
//! `readv` of its stdin, or `poll`, `select` or `epoll`, as an event loop waits), and its
//! stdout pipe is then empty. A line it writes after its reply, or at start, before it waits
//! again, is then found in the pipe: it was not an answer to anybody.
//!
//! A look takes, per process, the link count of `/proc/PID/task` (its thread count plus 2,
//! one `statx`), for the processes the program started `/proc/PID/stat` (state and group),
//! and per thread `/proc/PID/task/TID/syscall` (`running`, or the system call it is blocked in
//! and its arguments) and `.../children`; the files are kept open and read again from their
//! start, one `pread` each: three system calls for a program of one thread. Processes it finds
//! outside the program's group (`setsid`, a daemon) are listed in [`Watch::escaped`], for the
//! caller to end.

use nix::libc;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Processes of one program looked at, at most (a fork bomb does not make a look unbounded).
const MAX_PROCESSES: usize = 64;

/// What a look at a kept program found.
#[derive(Debug)]
pub(crate) enum Look {
    /// Every thread is blocked in a system call, at least one waiting for input.
    Waiting,
    /// A thread runs, or none waits for input yet.
    Busy,
    /// The program exited (it is a zombie, or gone).
    Gone,
    /// `/proc` cannot tell: why.
    Unknown(io::Error),
}

/// The `/proc` files of a kept program's processes, kept open between looks.
pub(crate) struct Watch {
    root: u32,
    processes: Vec<Process>,
    /// Processes outside the program's group that the last look found.
    pub(crate) escaped: Vec<u32>,
    text: Vec<u8>,
}

struct Process {
    pid: u32,
    /// `/proc/PID/task`.
    task_dir: File,
    /// `/proc/PID/stat`, for a process other than the program: its group may change.
    stat: Option<File>,
    tasks: Vec<Task>,
    seen: bool,
}

/// What the threads of a process do.
enum Threads {
    /// One runs (or is stopped outside a system call).
    Running,
    /// Each is blocked in a system call; whether one waits for input.
    Blocked { input: bool },
    /// None is left (a zombie).
    Exited,
}

/// What one thread does, from its `syscall` file.
#[derive(Debug, PartialEq, Eq)]
enum Thread {
    Running,
    /// Blocked in system call `.0`, whose first argument is `.1`.
    In(i64, u64),
    /// It exited (`-1 0x0 0x0`).
    Dead,
}

struct Task {
    syscall: File,
    children: File,
}

impl Watch {
    /// The watch of program `root` (its pid, which is its group's id).
    pub(crate) fn new(root: u32) -> Watch {
        Watch {
            root,
            processes: Vec::new(),
            escaped: Vec::new(),
            text: Vec::with_capacity(1024),
        }
    }

    /// Looks at the program and the processes it started.
    pub(crate) fn look(&mut self) -> Look {
        self.escaped.clear();
        for process in &mut self.processes {
            process.seen = false;
        }
        let mut stack = vec![self.root];
        let mut waiting = false;
        let mut looked = 0;
        while let Some(pid) = stack.pop() {
            looked += 1;
            if looked > MAX_PROCESSES {
                return Look::Busy;
            }
            let root = pid == self.root;
            let index = match self.process(pid, root) {
                Ok(index) => index,
                Err(_) if !root => continue,
                Err(err) if gone(&err) => return Look::Gone,
                Err(err) => return Look::Unknown(err),
            };
            if !root {
                match self.stat(index) {
                    None | Some((b'Z' | b'X', _)) => continue,
                    Some((_, group)) if group != self.root => {
                        self.escaped.push(pid);
                        continue;
                    }
                    Some(_) => {}
                }
            }
            match self.threads(index, &mut stack) {
                Ok(Threads::Blocked { input }) => waiting |= input,
                Ok(Threads::Running) => return Look::Busy,
                Ok(Threads::Exited) if root => return Look::Gone,
                Err(err) if root && !gone(&err) => return Look::Unknown(err),
                Err(_) if root => return Look::Gone,
                Ok(Threads::Exited) | Err(_) => {}
            }
        }
        self.processes.retain(|process| process.seen);
        if waiting {
            Look::Waiting
        } else {
            Look::Busy
        }
    }

    /// The index of process `pid` in `processes`, its files opened if new (its `stat` unless
    /// it is the program).
    fn process(&mut self, pid: u32, root: bool) -> io::Result<usize> {
        if let Some(index) = self.processes.iter().position(|p| p.pid == pid) {
            if let Some(process) = self.processes.get_mut(index) {
                process.seen = true;
            }
            return Ok(index);
        }
        let task_dir = File::open(format!("/proc/{pid}/task"))?;
        let stat = if root {
            None
        } else {
            Some(File::open(format!("/proc/{pid}/stat"))?)
        };
        self.processes.push(Process {
            pid,
            task_dir,
            stat,
            tasks: Vec::new(),
            seen: true,
        });
        Ok(self.processes.len() - 1)
    }

    /// State and process group of process `index`, from its `stat`.
    fn stat(&mut self, index: usize) -> Option<(u8, u32)> {
        let stat = self.processes.get(index)?.stat.as_ref()?;
        read_all(stat, &mut self.text).ok()?;
        // "pid (comm) state ppid pgrp ...": comm may hold anything.
        let at = self.text.iter().rposition(|b| *b == b')')?;
        let mut fields = self.text.get(at + 2..)?.split(|b| *b == b' ');
        let state = *fields.next()?.first()?;
        let group = u32::try_from(decimal(fields.nth(1)?)?).ok()?;
        Some((state, group))
    }

    /// What the threads of process `index` do (listed again when their count changed); their
    /// children go onto `stack`.
    fn threads(&mut self, index: usize, stack: &mut Vec<u32>) -> io::Result<Threads> {
        let Some(process) = self.processes.get_mut(index) else {
            return Ok(Threads::Running);
        };
        // The link count of `/proc/PID/task` is its thread count plus 2: one `statx`, where
        // `stat` (which also has the count) takes three times as long.
        let threads = process.task_dir.metadata()?.nlink().saturating_sub(2);
        if u64::try_from(process.tasks.len()).ok() != Some(threads) {
            process.tasks = list_tasks(process.pid)?;
        }
        let mut input = false;
        let mut live = 0;
        let mut ended = false;
        for task in &process.tasks {
            // A thread that ended meanwhile makes its files fail with ESRCH.
            let state = match read_all(&task.syscall, &mut self.text) {
                Ok(()) => thread(&self.text),
                Err(err) if gone(&err) => {
                    ended = true;
                    break;
                }
                Err(err) => return Err(err),
            };
            match state {
                Thread::Running => return Ok(Threads::Running),
                Thread::Dead => continue,
                Thread::In(number, first) => input |= waits_for_input(number, first),
            }
            match read_all(&task.children, &mut self.text) {
                Ok(()) => {}
                Err(err) if gone(&err) => {
                    ended = true;
                    break;
                }
                Err(err) => return Err(err),
            }
            live += 1;
            let pids = self.text.split(|b| *b == b' ').filter_map(decimal);
            stack.extend(pids.filter_map(|pid| u32::try_from(pid).ok()));
        }
        if ended {
            // A thread that ended: listed again at the next look.
            process.tasks.clear();
            return Ok(Threads::Running);
        }
        if live == 0 {
            return Ok(Threads::Exited);
        }
        Ok(Threads::Blocked { input })
    }
}

/// Opens the `syscall` and `children` files of each thread of process `pid`.
fn list_tasks(pid: u32) -> io::Result<Vec<Task>> {
    let mut tasks = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path();
        let syscall = match File::open(path.join("syscall")) {
            Ok(file) => file,
            // A thread that ended meanwhile.
            Err(err) if gone(&err) => continue,
            Err(err) => return Err(err),
        };
        let children = match File::open(path.join("children")) {
            Ok(file) => file,
            Err(_) if path.exists() => {
                // A kernel without CONFIG_PROC_CHILDREN: what the program started (the reader
                // of its stdin, maybe) cannot be seen.
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "no /proc/PID/task/TID/children in this kernel",
                ));
            }
            Err(_) => continue,
        };
        tasks.push(Task { syscall, children });
    }
    Ok(tasks)
}

/// Whether `err` says the process is gone.
fn gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
}

/// Reads `file` from its start into `text`. A read shorter than asked for is the end: a
/// `/proc` file fills the buffer while it has more (one `pread` where a file holds less).
fn read_all(file: &File, text: &mut Vec<u8>) -> io::Result<()> {
    const CHUNK: usize = 1024;
    text.clear();
    loop {
        let start = text.len();
        text.resize(start + CHUNK, 0);
        let offset = u64::try_from(start).unwrap_or(u64::MAX);
        let read = file.read_at(text.get_mut(start..).unwrap_or_default(), offset)?;
        text.truncate(start + read);
        if read < CHUNK {
            return Ok(());
        }
    }
}

/// The decimal number `digits` (an ASCII line end after it is allowed), if it is one.
fn decimal(digits: &[u8]) -> Option<u64> {
    let digits = digits.strip_suffix(b"\n").unwrap_or(digits);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |number, byte| {
        let digit = byte.checked_sub(b'0').filter(|digit| *digit < 10)?;
        number.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// What a thread does, from its `syscall` file: `running`; "NR ARG1 ... SP PC" when blocked
/// in system call NR ("0 0x0 0x7ffd... ..."); "-1 SP PC" outside one (stopped: taken as
/// running), "-1 0x0 0x0" once it exited.
fn thread(text: &[u8]) -> Thread {
    let mut fields = text.split(|b| b.is_ascii_whitespace());
    let Some(number) = fields.next().and_then(decimal) else {
        if text.starts_with(b"-1 0x0 0x0") {
            return Thread::Dead;
        }
        return Thread::Running;
    };
    let first = fields
        .next()
        .and_then(|field| field.strip_prefix(b"0x"))
        .and_then(|hex| std::str::from_utf8(hex).ok())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok());
    match (i64::try_from(number), first) {
        (Ok(number), Some(first)) => Thread::In(number, first),
        _ => Thread::Running,
    }
}

/// Whether system call `number` with first argument `first` waits for input: a read of
/// stdin, or a wait for events on file descriptors.
fn waits_for_input(number: i64, first: u64) -> bool {
    if number == libc::SYS_read || number == libc::SYS_readv {
        return first == 0;
    }
    #[cfg(target_arch = "x86_64")]
    if [libc::SYS_poll, libc::SYS_select, libc::SYS_epoll_wait].contains(&number) {
        return true;
    }
    [
        libc::SYS_ppoll,
        libc::SYS_pselect6,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
    ]
    .contains(&number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Looks until `wanted` holds (10 s at most); the last look.
    fn until(watch: &mut Watch, wanted: fn(&Look, &Watch) -> bool) -> Look {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let look = watch.look();
            if wanted(&look, watch) || Instant::now() > deadline {
                return look;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn proc_text_is_read() {
        let read = b"0 0x0 0x55d0 0x2000 0x7fd0 0x0 0x0 0x7fff 0x7fd0\n";
        assert_eq!(thread(read), Thread::In(0, 0));
        assert_eq!(
            thread(b"281 0xd 0x7ffe8fe875f0 0x400\n"),
            Thread::In(281, 13)
        );
        assert_eq!(thread(b"running\n"), Thread::Running);
        assert_eq!(thread(b"-1 0x7ffe 0x7fd0\n"), Thread::Running);
        assert_eq!(thread(b"-1 0x0 0x0\n"), Thread::Dead);
        assert_eq!(decimal(b"23285\n"), Some(23285));
        for bad in [&b""[..], b"\n", b"12a", b"-1", b"99999999999999999999999"] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_reader_of_stdin_waits_a_sleeper_does_not_and_escapes_are_listed() {
        // The reader is the shell's child, `cat`; the shell waits for it.
        let mut shell = Command::new("sh")
            .args(["-c", "setsid sleep 30 & cat; :"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("sh");
        let mut watch = Watch::new(shell.id());
        let look = until(&mut watch, |look, watch| {
            matches!(look, Look::Waiting) && watch.escaped.len() == 1
        });
        assert!(matches!(look, Look::Waiting), "{look:?}");
        assert_eq!(watch.escaped.len(), 1, "the setsid sleep");
        for pid in watch.escaped.clone() {
            crate::child::process::kill_process(pid);
        }
        drop(shell.stdin.take());
        let look = until(&mut watch, |look, _| matches!(look, Look::Gone));
        assert!(matches!(look, Look::Gone), "{look:?}");
        let _ = shell.wait();

        let mut sleeper = Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("sleep");
        // Running, then in `nanosleep`: never waiting for input.
        let mut watch = Watch::new(sleeper.id());
        for _ in 0..50 {
            let look = watch.look();
            assert!(matches!(look, Look::Busy), "{look:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }
}
