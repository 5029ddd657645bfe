//! One running command's pipes, served by one `poll` loop on the calling thread ([`Run`]):
//! the request body to stdin, stdout (at most the reply limit) and stderr (to the log), until
//! the command exits or its time is up; and the non-blocking stdin write and stdout read that
//! it and a kept program share ([`write_stdin`], [`read_stdout`]).

use super::process::{self, end_orphans, kill_group};
use super::stderr::StderrLog;
use super::LINGER;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, ppoll, PollFd, PollFlags, PollTimeout};
use nix::sys::time::TimeSpec;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, ExitStatus};
use std::time::{Duration, Instant};

/// How a run ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The command exited (or was killed by someone else) with this status.
    Exited(ExitStatus),
    /// Its time was up: killed.
    TimedOut,
    /// It wrote more than the reply limit: killed.
    TooMuchOutput,
    /// Its pipes or its status could not be read: killed.
    Lost(io::Error),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(status) => f.write_str(&describe_status(*status)),
            Ended::TimedOut => f.write_str("timed out, killed"),
            Ended::TooMuchOutput => f.write_str("too much output, killed"),
            Ended::Lost(err) => write!(f, "lost: {err}"),
        }
    }
}

/// "exited with status 3", "was killed by signal 9 (SIGKILL)".
pub(crate) fn describe_status(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(signal) => {
            let name = nix::sys::signal::Signal::try_from(signal)
                .map(|s| format!(" ({})", s.as_str()))
                .unwrap_or_default();
            format!("was killed by signal {signal}{name}")
        }
        None => format!("ended: {status}"),
    }
}

/// One running command, its pipes served by one `poll` loop on the calling thread: a command
/// that never reads its stdin, or writes more than a pipe holds, cannot block it, and no
/// thread is started per request (a process per request costs enough).
pub(crate) struct Run<'a> {
    child: &'a mut Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    /// Bytes of the body written to stdin so far.
    written: usize,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// What the command wrote to stdout.
    pub(crate) output: Vec<u8>,
    /// Its stderr, to the log.
    pub(crate) errors: StderrLog,
}

/// Which pipes `poll` found ready (or closed).
#[derive(Debug, Default)]
struct Ready {
    stdin: bool,
    stdout: bool,
    stderr: bool,
}

/// Makes the pipes in `fds` (a child's stdin, stdout, stderr) non-blocking, for a `poll` loop:
/// a command run per request and a kept program alike.
pub(crate) fn set_nonblocking(fds: [Option<BorrowedFd<'_>>; 3]) -> io::Result<()> {
    for fd in fds.into_iter().flatten() {
        let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    Ok(())
}

impl<'a> Run<'a> {
    /// Takes the pipes of `child` and makes them non-blocking.
    pub(crate) fn new(child: &'a mut Child) -> io::Result<Run<'a>> {
        let pid = child.id();
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let fds = [
            stdin.as_ref().map(AsFd::as_fd),
            stdout.as_ref().map(AsFd::as_fd),
            stderr.as_ref().map(AsFd::as_fd),
        ];
        set_nonblocking(fds)?;
        Ok(Run {
            child,
            pid,
            stdin,
            written: 0,
            stdout,
            stderr,
            output: Vec::new(),
            errors: StderrLog::new(pid),
        })
    }

    /// Feeds `body` to stdin and reads stdout (at most `limit` bytes) and stderr until both are
    /// closed and the command has exited, until `deadline`; kills the group when the deadline
    /// passes or stdout overflows. Once the command has exited, whatever it left in its group
    /// is killed, so that a background child holding a pipe open does not keep the reply
    /// waiting.
    pub(crate) fn wait(&mut self, body: &[u8], limit: usize, deadline: Instant) -> Ended {
        if body.is_empty() {
            self.stdin = None;
        }
        // How often to look for the exit while the pipes are open: soon at first, then every
        // 50 ms at most. A command that exits closes its pipes, which wakes `poll` at once.
        let mut slice = Duration::from_millis(1);
        let mut exited: Option<(ExitStatus, Instant)> = None;
        while self.stdout.is_some() || self.stderr.is_some() {
            let now = Instant::now();
            if let Some((status, lingered)) = exited {
                if now >= lingered {
                    // Something outside the group holds a pipe: the reply does not wait.
                    log::debug!("[{}] pipes still open {LINGER:?} after the exit", self.pid);
                    self.stdin = None;
                    self.stdout = None;
                    self.stderr = None;
                    return Ended::Exited(status);
                }
            }
            let remaining = deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                return self.kill(Ended::TimedOut);
            }
            let timeout = match exited {
                Some((_, lingered)) => remaining.min(lingered.saturating_duration_since(now)),
                None => slice.min(remaining),
            };
            let ready = match self.poll(timeout) {
                Ok(ready) => ready,
                Err(err) => return self.kill(Ended::Lost(err)),
            };
            if let Err(ended) = self.serve(&ready, body, limit) {
                return self.kill(ended);
            }
            if exited.is_none() && !(ready.stdin || ready.stdout || ready.stderr) {
                match self.child.try_wait() {
                    Ok(Some(status)) => {
                        // Leftovers of the group, or orphans, may hold the pipes open: they
                        // go now, and what is left on the pipes is read for a short moment.
                        kill_group(self.pid);
                        end_orphans();
                        exited = Some((status, Instant::now() + LINGER));
                    }
                    Ok(None) => slice = (slice * 2).min(Duration::from_millis(50)),
                    Err(err) => return self.kill(Ended::Lost(err)),
                }
            }
        }
        self.stdin = None;
        match exited {
            Some((status, _)) => Ended::Exited(status),
            None => self.reap(deadline),
        }
    }

    /// Writes to and reads from the pipes `ready` names: `Err` with how the run ends if
    /// stdout overflows `limit` or cannot be read.
    fn serve(&mut self, ready: &Ready, body: &[u8], limit: usize) -> Result<(), Ended> {
        if ready.stdin {
            self.write_stdin(body);
        }
        if ready.stdout {
            match self.read_stdout(limit) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::FileTooLarge => {
                    return Err(Ended::TooMuchOutput)
                }
                Err(err) => return Err(Ended::Lost(err)),
            }
        }
        if ready.stderr {
            self.errors.drain(&mut self.stderr);
        }
        Ok(())
    }

    /// Both pipes are closed: the command is exiting, normally within microseconds. Waits for
    /// it until `deadline`.
    fn reap(&mut self, deadline: Instant) -> Ended {
        let mut pause = Duration::from_micros(50);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ended::Exited(status),
                Ok(None) if Instant::now() >= deadline => return self.kill(Ended::TimedOut),
                Ok(None) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(5));
                }
                Err(err) => return self.kill(Ended::Lost(err)),
            }
        }
    }

    /// Waits up to `timeout` (rounded up to whole milliseconds) for a pipe to be ready.
    fn poll(&self, timeout: Duration) -> io::Result<Ready> {
        let [stdin, stdout, stderr] = poll3(
            [
                self.stdin.as_ref().map(AsFd::as_fd),
                self.stdout.as_ref().map(AsFd::as_fd),
                self.stderr.as_ref().map(AsFd::as_fd),
            ],
            timeout,
        )?;
        Ok(Ready {
            stdin,
            stdout,
            stderr,
        })
    }

    /// Writes what the pipe takes of the rest of `body` ([`write_stdin`]); closes stdin when
    /// all is written (a command closing its end need not read its stdin).
    fn write_stdin(&mut self, body: &[u8]) {
        self.written += write_stdin(
            &mut self.stdin,
            body.get(self.written..).unwrap_or_default(),
        );
        if self.written >= body.len() {
            self.stdin = None;
        }
    }

    /// Reads what stdout holds ([`read_stdout`]); an error of kind `FileTooLarge` past `limit`
    /// bytes.
    fn read_stdout(&mut self, limit: usize) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        read_stdout(&mut self.stdout, &mut chunk, &mut self.output, limit)?;
        if self.output.len() > limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "too much output",
            ));
        }
        Ok(())
    }

    /// Kills the command's group and reaps the command; `why` is how the run ended.
    fn kill(&mut self, why: Ended) -> Ended {
        // A group's id is not reused while a member of it lives, reaped leader or not.
        if let Err(err) = process::end(self.child) {
            log::warn!("cannot reap a killed command: {err}");
        }
        why
    }
}

/// Writes what a child's non-blocking `stdin` takes of `data`: how many bytes, 0 when the pipe
/// is full. A pipe the child closed (or that fails) is dropped: the child gets no more. For a
/// command's body ([`Run`]) and a kept program's requests.
pub(crate) fn write_stdin(stdin: &mut Option<ChildStdin>, data: &[u8]) -> usize {
    let Some(pipe) = stdin.as_mut() else {
        return 0;
    };
    match pipe.write(data) {
        Ok(written) => written,
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            0
        }
        Err(_) => {
            *stdin = None;
            0
        }
    }
}

/// Reads what a child's non-blocking `stdout` holds into `into` through `chunk`, until a read
/// leaves the pipe empty (one shorter than `chunk`: no read that finds nothing) or `into` is
/// over `limit` bytes; `true` when stdout is closed (then dropped). For a command's output
/// ([`Run`]) and a kept program's replies.
pub(crate) fn read_stdout(
    stdout: &mut Option<ChildStdout>,
    chunk: &mut [u8],
    into: &mut Vec<u8>,
    limit: usize,
) -> io::Result<bool> {
    let Some(pipe) = stdout.as_mut() else {
        return Ok(true);
    };
    while into.len() <= limit {
        match pipe.read(chunk) {
            Ok(0) => {
                *stdout = None;
                return Ok(true);
            }
            Ok(read) => {
                into.extend_from_slice(chunk.get(..read).unwrap_or_default());
                if read < chunk.len() {
                    return Ok(false);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(false)
}

/// Waits up to `timeout` (rounded up to whole milliseconds) for one of `fds` to be ready
/// (writable for the first, readable for the others, or closed).
pub(crate) fn poll3(fds: [Option<BorrowedFd<'_>>; 3], timeout: Duration) -> io::Result<[bool; 3]> {
    wait3(fds, timeout, false)
}

/// [`poll3`], to the nanosecond (`ppoll`) if `precise`.
pub(crate) fn wait3(
    fds: [Option<BorrowedFd<'_>>; 3],
    timeout: Duration,
    precise: bool,
) -> io::Result<[bool; 3]> {
    let events = [PollFlags::POLLOUT, PollFlags::POLLIN, PollFlags::POLLIN];
    let mut polled = Vec::with_capacity(3);
    let mut slots = [None; 3];
    for (index, fd) in fds.into_iter().enumerate() {
        if let Some(fd) = fd {
            slots[index] = Some(polled.len());
            polled.push(PollFd::new(fd, events[index]));
        }
    }
    let millis = u16::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
    let polled_now = if precise {
        ppoll(&mut polled, Some(TimeSpec::from_duration(timeout)), None)
    } else {
        poll(&mut polled, PollTimeout::from(millis))
    };
    match polled_now {
        Ok(_) => {}
        Err(Errno::EINTR) => return Ok([false; 3]),
        Err(err) => return Err(err.into()),
    }
    let ready = |slot: Option<usize>| {
        slot.and_then(|i| polled.get(i))
            .and_then(PollFd::revents)
            .is_some_and(|events| !events.is_empty())
    };
    Ok([ready(slots[0]), ready(slots[1]), ready(slots[2])])
}
