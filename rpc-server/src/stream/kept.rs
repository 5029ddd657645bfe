//! One program kept running ([`KeptProgram`]): started once in a process group of its own, a command
//! in hand for the server's subreaper and guardian (see `crate::command::contain`) for as
//! long as it lives; requests go to its stdin a line at a time and the next line on its
//! stdout is the answer. Its three pipes are non-blocking and served by one `poll` loop on
//! the worker's thread during a request, as a run of `-- CMD` is; a request costs nine system
//! calls when all goes well: a read that finds nothing unsolicited on its stdout and a
//! `waitpid` that finds it alive (between requests), the write of the request straight to its
//! stdin, and a `poll` that waits for the answer before the read that takes it; then
//! [`KeptProgram::settle`]: the `pread`s of one look in `/proc` (three for a program of one process
//! and one thread) and a read that finds its stdout empty.

use super::watch::{Look, Watch};
use crate::child::pipes::{self, describe_status, poll3, set_nonblocking, wait3};
use crate::child::process::{self, InHand};
use crate::child::program;
use crate::child::stderr::StderrLog;
use crate::child::COMMAND_LOG;
use crate::child::{ENV_CONTENT_TYPE, ENV_CORRELATION_ID, ENV_TRACEPARENT, ENV_TRACESTATE};
use rpc_client::wire;
use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How one request to a kept program ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The line it answered with, without its `\n`.
    Line(Vec<u8>),
    /// Its stdout closed, or it exited, before a whole line; the status if it was reaped.
    Exited(Option<ExitStatus>),
    /// No whole line by the deadline.
    TimedOut,
    /// A line longer than the limit.
    TooLarge,
    /// A whole line before the whole request was written: out of step.
    Early,
    /// The server could not serve its pipes.
    Lost(io::Error),
}

/// Bytes one read of a program's stdout takes at most.
const READ_CHUNK: usize = 64 * 1024;

/// What a kept program did between two requests.
#[derive(Debug)]
pub(crate) enum Idle {
    /// Nothing: it waits for a request.
    Ready,
    /// It exited (or closed its stdout).
    Exited(Option<ExitStatus>),
    /// It wrote this many bytes nobody asked for: its stream is out of step.
    Unsolicited(usize),
}

/// Whether the program settled: waits for its next request, with nothing more written.
#[derive(Debug)]
pub(crate) enum Settle {
    /// It waits for input, and its stdout holds nothing.
    Waiting,
    /// It wrote this many bytes nobody asked for (still in `pending`).
    Wrote(usize),
    /// It exited; the status if it was reaped.
    Exited(Option<ExitStatus>),
    /// It did not wait for input by the time given.
    Busy,
    /// `/proc` cannot tell (logged once): only what is in the pipe is seen.
    Unknown,
}

/// Set once the server logged that `/proc` cannot tell when a program waits.
static BLIND_LOGGED: AtomicBool = AtomicBool::new(false);

/// A program kept running. Dropping it kills its process group and reaps it.
pub(crate) struct KeptProgram {
    child: Child,
    /// Its pid, which is its process group's id.
    pub(crate) pid: u32,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// Read from stdout, not yet taken as an answer.
    pending: Vec<u8>,
    /// What a read of its stdout goes into first (allocated once: a buffer on the stack would
    /// be zeroed for each read).
    buffer: Box<[u8]>,
    /// Requests it answered.
    pub(crate) answered: u64,
    /// The id of the first request it was given (`json`).
    pub(crate) first_id: Option<u64>,
    /// Its processes in `/proc`; `None` once `/proc` could not tell.
    watch: Option<Watch>,
    /// Whether it was seen waiting for input since it started.
    pub(crate) settled: bool,
    /// Until dropped (after the reap), it is a command in hand.
    _in_hand: InHand,
}

impl KeptProgram {
    /// Starts `path` (argv\[0\] `program`) with `args`: piped, in a group of its own, with the
    /// server's environment less the broker credentials and the per-request variables of
    /// `-- CMD`.
    pub(crate) fn start(
        path: &Path,
        program: &OsString,
        args: &[OsString],
    ) -> io::Result<KeptProgram> {
        let mut command = program::piped(path, program, args);
        for name in [
            ENV_CORRELATION_ID,
            ENV_CONTENT_TYPE,
            ENV_TRACEPARENT,
            ENV_TRACESTATE,
        ] {
            command.env_remove(name);
        }
        let (mut child, in_hand) = process::spawn(&mut command)?;
        let pid = child.id();
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let kept = KeptProgram {
            child,
            pid,
            stdin,
            stdout,
            stderr,
            pending: Vec::new(),
            buffer: vec![0; READ_CHUNK].into_boxed_slice(),
            answered: 0,
            first_id: None,
            watch: Some(Watch::new(pid)),
            settled: false,
            _in_hand: in_hand,
        };
        let fds = [
            kept.stdin.as_ref().map(AsFd::as_fd),
            kept.stdout.as_ref().map(AsFd::as_fd),
            kept.stderr.as_ref().map(AsFd::as_fd),
        ];
        set_nonblocking(fds)?;
        Ok(kept)
    }

    /// What it did since the last request: one non-blocking read and a `waitpid`.
    pub(crate) fn idle_check(&mut self) -> Idle {
        if !self.pending.is_empty() {
            return Idle::Unsolicited(self.pending.len());
        }
        // One chunk at most: a program that floods its stdout cannot keep this reading.
        match self.read_stdout(0) {
            Ok(true) => return Idle::Exited(self.child.try_wait().ok().flatten()),
            Ok(false) if !self.pending.is_empty() => return Idle::Unsolicited(self.pending.len()),
            Ok(false) => {}
            Err(_) => return Idle::Exited(None),
        }
        match self.child.try_wait() {
            Ok(None) => Idle::Ready,
            Ok(Some(status)) => Idle::Exited(Some(status)),
            Err(_) => Idle::Exited(None),
        }
    }

    /// Waits until `until` for the program to settle: every process of its group blocked, one
    /// waiting for input (see `super::watch`), then nothing in its stdout. Output meanwhile
    /// ends the wait at once; its stderr goes to `errors`. Processes found outside its group
    /// are killed. Usually one look: the program is back in its `read` by the time the
    /// server has read its reply; else a few yields, then waits from 25 µs up.
    pub(crate) fn settle(&mut self, until: Instant, errors: &mut StderrLog) -> Settle {
        let mut round = 0u32;
        loop {
            if !self.pending.is_empty() {
                return Settle::Wrote(self.pending.len());
            }
            let Some(watch) = self.watch.as_mut() else {
                return Settle::Unknown;
            };
            let look = watch.look();
            self.end_escaped();
            match look {
                Look::Waiting | Look::Gone => {
                    // All it wrote before blocking (or exiting) is in the pipe by now.
                    let closed = self.read_stdout(0).unwrap_or(true);
                    if !self.pending.is_empty() {
                        return Settle::Wrote(self.pending.len());
                    }
                    if closed || matches!(look, Look::Gone) {
                        return Settle::Exited(self.wind_down(errors));
                    }
                    self.settled = true;
                    return Settle::Waiting;
                }
                Look::Unknown(err) => {
                    if !BLIND_LOGGED.swap(true, Ordering::Relaxed) {
                        log::warn!(
                            target: COMMAND_LOG,
                            "[{}] /proc cannot tell when this program waits for input ({err}): \
                             only output already in its pipe is caught before a request is \
                             written (rpc-server/README.md, Serving a long-running program)",
                            self.pid
                        );
                    }
                    self.watch = None;
                    return Settle::Unknown;
                }
                Look::Busy => {}
            }
            let now = Instant::now();
            if now >= until {
                return Settle::Busy;
            }
            round += 1;
            if round <= 3 {
                std::thread::yield_now();
                continue;
            }
            let pause = Duration::from_micros(25 << (round - 4).min(8)).min(until - now);
            let fds = [
                None,
                self.stdout.as_ref().map(AsFd::as_fd),
                self.stderr.as_ref().map(AsFd::as_fd),
            ];
            let Ok(ready) = wait3(fds, pause, true) else {
                return Settle::Exited(None);
            };
            if ready[2] {
                errors.drain(&mut self.stderr);
            }
            if ready[1] && self.read_stdout(0).unwrap_or(true) && self.pending.is_empty() {
                return Settle::Exited(self.wind_down(errors));
            }
        }
    }

    /// Kills the processes the last look found outside the program's group.
    fn end_escaped(&mut self) {
        let Some(watch) = self.watch.as_mut() else {
            return;
        };
        if watch.escaped.is_empty() {
            return;
        }
        for pid in &watch.escaped {
            process::kill_group(*pid);
            process::kill_process(*pid);
        }
        log::info!(
            target: COMMAND_LOG,
            "[{}] ended {} process(es) it started outside its group",
            self.pid,
            watch.escaped.len()
        );
        watch.escaped.clear();
    }

    /// The start of what it wrote that nobody asked for, printable, for a message.
    pub(crate) fn unsolicited(&self) -> String {
        let shown = self.pending.get(..60).unwrap_or(self.pending.as_slice());
        let line = shown.split(|b| *b == b'\n').next().unwrap_or_default();
        wire::printable(&String::from_utf8_lossy(line))
    }

    /// Writes `frame` to its stdin and reads its stdout until a whole line (at most `limit`
    /// bytes with its `\n`), its exit, or `deadline`; its stderr goes to `errors`. The frame
    /// is written at once, without a `poll`: the pipe is empty between requests (it holds 64
    /// KiB), so only a larger frame, or a program slow to read, waits for room. The frame is
    /// freed once written, before the answer comes (a large request's memory is not held twice).
    pub(crate) fn exchange(
        &mut self,
        mut frame: Vec<u8>,
        deadline: Instant,
        limit: usize,
        errors: &mut StderrLog,
    ) -> Outcome {
        let mut written = self.write_stdin(&frame);
        let mut scanned = 0;
        // How long to wait before looking for an exit that closed no pipe (a child of the
        // program may hold them): soon at first, then every 50 ms at most.
        let mut slice = Duration::from_millis(1);
        loop {
            if written == frame.len() && written > 0 {
                // Written: `written < frame.len()` stays false.
                frame = Vec::new();
            }
            if let Some(end) = self.pending[scanned..].iter().position(|b| *b == b'\n') {
                let end = scanned + end;
                if written < frame.len() {
                    return Outcome::Early;
                }
                // Usually the whole of `pending`: taken without a copy.
                let rest = self.pending.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.pending, rest);
                line.pop();
                return Outcome::Line(line);
            }
            scanned = self.pending.len();
            if self.pending.len() > limit {
                return Outcome::TooLarge;
            }
            if self.stdout.is_none() {
                return Outcome::Exited(self.wind_down(errors));
            }
            let now = Instant::now();
            if now >= deadline {
                return Outcome::TimedOut;
            }
            let wants_stdin = written < frame.len() && self.stdin.is_some();
            let ready = match poll3(
                [
                    self.stdin.as_ref().filter(|_| wants_stdin).map(AsFd::as_fd),
                    self.stdout.as_ref().map(AsFd::as_fd),
                    self.stderr.as_ref().map(AsFd::as_fd),
                ],
                slice.min(deadline - now),
            ) {
                Ok(ready) => ready,
                Err(err) => return Outcome::Lost(err),
            };
            if ready[0] {
                written += self.write_stdin(frame.get(written..).unwrap_or_default());
            }
            if ready[2] {
                errors.drain(&mut self.stderr);
            }
            if ready[1] {
                if let Err(err) = self.read_stdout(limit.saturating_add(1)) {
                    return Outcome::Lost(err);
                }
            }
            if ready == [false; 3] {
                match self.child.try_wait() {
                    Ok(Some(status)) => {
                        self.wind_down(errors);
                        return Outcome::Exited(Some(status));
                    }
                    Ok(None) => slice = (slice * 2).min(Duration::from_millis(50)),
                    Err(err) => return Outcome::Lost(err),
                }
            }
        }
    }

    /// Once its stdout closed: collects the rest of its stderr and its exit status, for at
    /// most [`crate::child::LINGER`] (what it left in its group may hold the pipe).
    fn wind_down(&mut self, errors: &mut StderrLog) -> Option<ExitStatus> {
        let until = Instant::now() + crate::child::LINGER;
        let mut pause = Duration::from_micros(100);
        loop {
            if self.stderr.is_some() {
                let now = Instant::now();
                let wait = pause.min(until.saturating_duration_since(now));
                if let Ok([_, _, true]) =
                    poll3([None, None, self.stderr.as_ref().map(AsFd::as_fd)], wait)
                {
                    errors.drain(&mut self.stderr);
                }
            }
            match self.child.try_wait() {
                Ok(Some(status)) if self.stderr.is_none() => return Some(status),
                Ok(Some(status)) if Instant::now() >= until => return Some(status),
                Ok(None) if Instant::now() >= until => return None,
                Err(_) => return None,
                _ => {}
            }
            if self.stderr.is_none() {
                std::thread::sleep(pause);
            }
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Writes what the pipe takes of `rest` ([`pipes::write_stdin`]); a program that closed
    /// its stdin gets no more.
    fn write_stdin(&mut self, rest: &[u8]) -> usize {
        pipes::write_stdin(&mut self.stdin, rest)
    }

    /// Reads what its stdout holds into `pending`, until a read leaves the pipe empty (one
    /// shorter than [`READ_CHUNK`]: no read that finds nothing) or `pending` is over `limit`
    /// bytes; `true` when stdout is closed.
    fn read_stdout(&mut self, limit: usize) -> io::Result<bool> {
        pipes::read_stdout(&mut self.stdout, &mut self.buffer, &mut self.pending, limit)
    }

    /// Closes its stdin and waits until `deadline` for it to exit (its stdout is read and
    /// dropped, its stderr logged), then kills its group and reaps it.
    pub(crate) fn close(mut self, deadline: Instant) {
        self.stdin = None;
        let mut errors = StderrLog::new(self.pid);
        let mut dropped = 0;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) => {}
                Err(_) => break None,
            }
            let now = Instant::now();
            if now >= deadline {
                break None;
            }
            let wait = (deadline - now).min(Duration::from_millis(10));
            let fds = [
                None,
                self.stdout.as_ref().map(AsFd::as_fd),
                self.stderr.as_ref().map(AsFd::as_fd),
            ];
            if fds.iter().all(Option::is_none) {
                std::thread::sleep(wait);
                continue;
            }
            let Ok(ready) = poll3(fds, wait) else {
                break None;
            };
            if ready[1] {
                // A chunk per round: a flood cannot hold this past the deadline.
                let _ = self.read_stdout(0);
                dropped += self.pending.len();
                self.pending.clear();
            }
            if ready[2] {
                errors.drain(&mut self.stderr);
            }
        };
        errors.finish();
        match status {
            Some(status) => log::debug!(
                target: COMMAND_LOG,
                "[{}] {} after {} request(s), its stdin closed ({dropped} bytes of output dropped)",
                self.pid,
                describe_status(status),
                self.answered
            ),
            None => log::warn!(
                target: COMMAND_LOG,
                "[{}] still running after its stdin was closed: killed",
                self.pid
            ),
        }
        // Drop kills whatever is left in its group and reaps it.
    }
}

impl Drop for KeptProgram {
    fn drop(&mut self) {
        // A group's id is not reused while a member of it lives, reaped leader or not.
        process::kill_group(self.pid);
        let _ = self.child.kill();
        if let Err(err) = self.child.wait() {
            log::debug!("cannot reap a kept program: {err}");
        }
        // Then `_in_hand` goes: no longer a command in hand.
    }
}
