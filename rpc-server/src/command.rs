//! Serving a command ([`CommandHandler`]): each request runs the command once, directly (never
//! through a shell), with the request body on its stdin; its stdout is the reply body.
//!
//! - Exit status 0 is a reply. A non-zero status or death by a signal is an `exec-failed`
//!   error reply, past the time limit an `exec-timeout` one, more stdout than the reply limit
//!   a `too-large` one; their messages give the status and the last line of stderr, printable
//!   and bounded.
//! - The command runs in a process group of its own; when it ends (or is ended), whatever it
//!   left running in that group is killed too, so no request leaves processes behind. The
//!   reply is due when the command exits: what is left on its pipes is collected for at most
//!   [`LINGER`], so a process that escaped the group and holds a pipe open cannot delay it.
//! - In a server that called [`contain`] (the `rpc-server` binary does), the server is the
//!   child subreaper of everything its commands start: a process whose parent exits (one
//!   that left the group with `setsid`, a daemon) becomes the server's child, and is killed
//!   when the next command ends ([`end_orphans`]); [`end_all`] ends every command in hand and
//!   all they started (a second signal, an unclean stop). A guardian process ([`guard`])
//!   kills the process groups of the commands in hand if the server dies, so even a server
//!   killed by SIGKILL leaves no command running (what left its command's group is not
//!   reached then). [`contain`] also makes the server non-dumpable: its `/proc` files
//!   (environment, memory) are closed to its commands.
//! - stdin, stdout and stderr are served by one `poll` loop, non-blocking: a command that never
//!   reads its stdin, or writes more than a pipe holds, cannot deadlock the server.
//! - Its stderr goes to the server's log (target [`COMMAND_LOG`]), bounded per request.
//! - Its environment is the server's, without the broker credentials (`AMQP_URI`,
//!   `AMQP_PASSWORD`, `AMQP_PASSWORD_FILE`), plus the request's [`ENV_CORRELATION_ID`],
//!   [`ENV_CONTENT_TYPE`] and the trace context of the server's span ([`ENV_TRACEPARENT`],
//!   [`ENV_TRACESTATE`]): same trace as the request's `traceparent` (a new one when it has
//!   none, or a malformed one), the server's span as the parent.
//!
//! ```no_run
//! use rpc_server::command::{CommandHandler, CommandOptions};
//! use rpc_server::ServerOptions;
//! use std::sync::Arc;
//!
//! let upper = CommandHandler::new(CommandOptions::new("tr", ["a-z", "A-Z"]))?;
//! let options = ServerOptions { queue: "upper".into(), ..ServerOptions::default() };
//! let (_stop, shutdown) = crossbeam_channel::bounded(1);
//! rpc_server::serve(&options, Arc::new(upper), shutdown)?;
//! # Ok::<(), rpc_server::Error>(())
//! ```

use crate::error::Error;
use crate::handler::{Handler, Reply, Request};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rpc_client::wire::{self, ErrorCode};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Log target of the commands' stderr lines.
pub const COMMAND_LOG: &str = "rpc_server::command";

/// The request's `correlation_id`.
pub const ENV_CORRELATION_ID: &str = "RPC_CORRELATION_ID";
/// The request's `content_type`.
pub const ENV_CONTENT_TYPE: &str = "RPC_CONTENT_TYPE";
/// The `traceparent` (W3C trace context) of the server's span of the request, under the name
/// OpenTelemetry uses for environment variables: the request's trace, the server's span id;
/// never a request's header as received.
pub const ENV_TRACEPARENT: &str = "TRACEPARENT";
/// The request's `tracestate` header (W3C trace context), when valid and with a valid
/// `traceparent`.
pub const ENV_TRACESTATE: &str = "TRACESTATE";

/// Environment variables of the server the command does not get: they hold broker
/// credentials (see `rpc_client::cli::BrokerArgs`).
pub(crate) const HIDDEN_ENV: &[&str] = &["AMQP_URI", "AMQP_PASSWORD", "AMQP_PASSWORD_FILE"];

/// Once the command has exited, how long what is left on its pipes is still collected (a
/// process that escaped its group, a `setsid` child, may hold them open).
pub const LINGER: Duration = Duration::from_millis(150);

/// How long [`end_orphans`] keeps killing what each killed process leaves behind.
const ORPHANS_BOUND: Duration = Duration::from_millis(200);

/// Default for `--exec-timeout`.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// Default for `--max-request-bytes`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// stderr lines logged per request; the rest are counted.
const LOGGED_STDERR_LINES: usize = 20;

/// Bytes of one stderr line kept (for the log and the error message); the rest is dropped.
const STDERR_LINE_BYTES: usize = 1024;

/// Environment values from a request longer than this are not passed on.
const MAX_ENV_VALUE: usize = 4096;

/// How long past `--exec-timeout` a run may take, to kill and reap the command.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(6);

/// What command to run and within which limits.
#[derive(Debug, Clone)]
pub struct CommandOptions {
    /// The program: a path, or a name looked up in `PATH` once, when the handler is made.
    pub program: OsString,
    /// Its arguments, passed as they are.
    pub args: Vec<OsString>,
    /// Longest a run may take; past it the command's process group is killed.
    pub exec_timeout: Duration,
    /// Largest request body passed to the command; larger ones get a `too-large` error reply.
    pub max_request_bytes: usize,
    /// Most stdout bytes taken as the reply; a command writing more is killed and the request
    /// gets a `too-large` error reply.
    pub max_reply_bytes: usize,
    /// The replies' `content_type`; `None` uses the request's.
    pub reply_content_type: Option<String>,
}

impl CommandOptions {
    /// `program` with `args` and the default limits.
    pub fn new<I, S>(program: impl Into<OsString>, args: I) -> CommandOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        CommandOptions {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
            exec_timeout: DEFAULT_EXEC_TIMEOUT,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_reply_bytes: crate::options::DEFAULT_MAX_REPLY_BYTES,
            reply_content_type: None,
        }
    }
}

/// Runs a command per request (see the module documentation).
#[derive(Debug, Clone)]
pub struct CommandHandler {
    options: CommandOptions,
    /// The program found when the handler was made.
    path: PathBuf,
    /// The program as given, for argv\[0\] and messages.
    shown: String,
}

impl CommandHandler {
    /// A handler for `options`; fails if the program cannot be found or is not executable.
    pub fn new(options: CommandOptions) -> Result<CommandHandler, Error> {
        let path = find_program(&options.program).map_err(Error::Config)?;
        let shown = wire::printable(&options.program.to_string_lossy());
        Ok(CommandHandler {
            options,
            path,
            shown,
        })
    }

    /// The command line, for logs, each word quoted as a shell would need it.
    pub fn describe_command(&self) -> String {
        let mut line = quoted(&self.shown);
        for arg in &self.options.args {
            line.push(' ');
            line.push_str(&quoted(&wire::printable(&arg.to_string_lossy())));
        }
        line
    }

    fn command(&self, request: &Request<'_>) -> std::process::Command {
        let mut command = std::process::Command::new(&self.path);
        command
            .arg0(&self.options.program)
            .args(&self.options.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        for name in HIDDEN_ENV {
            command.env_remove(name);
        }
        let properties = request.properties;
        let traceparent = request.trace.traceparent();
        let values = [
            (ENV_CORRELATION_ID, properties.correlation_id().as_deref()),
            (ENV_CONTENT_TYPE, properties.content_type().as_deref()),
            (ENV_TRACEPARENT, Some(traceparent.as_str())),
            (ENV_TRACESTATE, request.trace.state.as_deref()),
        ];
        for (name, value) in values {
            match value {
                Some(value) if value.len() <= MAX_ENV_VALUE && !value.contains('\0') => {
                    command.env(name, value);
                }
                Some(_) => {
                    log::warn!("not passing {name}: over {MAX_ENV_VALUE} bytes or with a NUL");
                    command.env_remove(name);
                }
                None => {
                    command.env_remove(name);
                }
            }
        }
        command
    }

    fn run(&self, request: &Request<'_>) -> Result<Vec<u8>, Reply> {
        let limits = &self.options;
        if request.body.len() > limits.max_request_bytes {
            return Err(Reply::refuse(
                ErrorCode::TooLarge,
                &format!(
                    "the request body is {} bytes, above this server's limit of {} bytes",
                    request.body.len(),
                    limits.max_request_bytes
                ),
            ));
        }
        let started = Instant::now();
        let deadline = started + limits.exec_timeout;
        let spawned = {
            // No scan for orphans may see the child before it is known to be in hand.
            let _spawning = SPAWNING.read().unwrap_or_else(PoisonError::into_inner);
            let spawned = self.command(request).spawn();
            if let Ok(child) = &spawned {
                in_hand().push(child.id());
                tell_guardian('+', child.id());
            }
            spawned
        };
        let mut child = spawned.map_err(|err| {
            log::error!("cannot run {}: {err}", self.shown);
            Reply::refuse(
                ErrorCode::ExecFailed,
                &format!("the server cannot run its command: {err}"),
            )
        })?;
        let pid = child.id();
        // Declared after `child`: dropped first, once the command is reaped (every way out of
        // this function reaps it).
        let _in_hand = InHand(pid);
        let mut run = match Run::new(&mut child) {
            Ok(run) => run,
            Err(err) => {
                kill_group(pid);
                let _ = child.kill();
                let _ = child.wait();
                return Err(Reply::refuse(
                    ErrorCode::ExecFailed,
                    &format!("the server cannot serve its command's pipes: {err}"),
                ));
            }
        };
        let ended = run.wait(request.body, limits.max_reply_bytes, deadline);
        if ENDING.load(Ordering::SeqCst) {
            // `end_all` killed the command: the process is exiting, and its requests go back
            // to the queue unanswered, as after any crash (not with an exec-failed reply).
            loop {
                std::thread::park();
            }
        }
        // Whatever the command left running in its group goes with it, and whatever left the
        // group (the command's group is gone, so any orphan is one).
        kill_group(pid);
        end_orphans();
        let stderr = run.errors.finish();
        let stderr = stderr.map_or_else(String::new, |line| format!(": {line}"));
        let took = started.elapsed();
        let error = match ended {
            Ended::Exited(status) if status.success() => None,
            Ended::Exited(_) | Ended::Lost(_) => Some(ErrorCode::ExecFailed),
            Ended::TimedOut => Some(ErrorCode::ExecTimeout),
            Ended::TooMuchOutput => Some(ErrorCode::TooLarge),
        };
        request.log(
            format_args!(
                " [.] {}: {}, {} bytes in, {} bytes out, {:.1} ms",
                self.shown,
                ended,
                request.body.len(),
                run.output.len(),
                took.as_secs_f64() * 1e3
            ),
            error,
            took,
        );
        match ended {
            Ended::Exited(status) if status.success() => Ok(std::mem::take(&mut run.output)),
            Ended::Exited(status) => Err(Reply::refuse(
                ErrorCode::ExecFailed,
                &format!("the command {}{stderr}", describe_status(status)),
            )),
            Ended::TimedOut => Err(Reply::refuse(
                ErrorCode::ExecTimeout,
                &format!(
                    "the command did not finish within {}s and was killed{stderr}",
                    limits.exec_timeout.as_secs_f64()
                ),
            )),
            Ended::TooMuchOutput => Err(Reply::refuse(
                ErrorCode::TooLarge,
                &format!(
                    "the command wrote more than this server's reply limit of {} bytes and was \
                     killed",
                    limits.max_reply_bytes
                ),
            )),
            Ended::Lost(err) => Err(Reply::refuse(
                ErrorCode::ExecFailed,
                &format!("the server lost track of its command: {err}"),
            )),
        }
    }
}

impl Handler for CommandHandler {
    fn handle(&self, request: &Request<'_>) -> Reply {
        let content_type = self
            .options
            .reply_content_type
            .clone()
            .or_else(|| request.properties.content_type().clone());
        match self.run(request) {
            Ok(body) => Reply::answer(body).with_content_type(content_type),
            Err(refusal) => {
                log::warn!(
                    "refusing request: {}",
                    String::from_utf8_lossy(&refusal.body)
                );
                refusal
            }
        }
    }

    fn time_limit(&self) -> Option<Duration> {
        Some(self.options.exec_timeout + KILL_GRACE)
    }

    fn describe(&self) -> String {
        format!(
            "the command `{}`, exec timeout {}s",
            self.describe_command(),
            self.options.exec_timeout.as_secs_f64()
        )
    }
}

/// How a run ended.
#[derive(Debug)]
enum Ended {
    Exited(ExitStatus),
    TimedOut,
    TooMuchOutput,
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

/// One running command, its pipes served by one `poll` loop on the calling thread: a command
/// that never reads its stdin, or writes more than a pipe holds, cannot block it, and no
/// thread is started per request (a process per request costs enough).
struct Run<'a> {
    child: &'a mut Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    /// Bytes of the body written to stdin so far.
    written: usize,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// What the command wrote to stdout.
    output: Vec<u8>,
    errors: StderrLog,
}

/// Which pipes `poll` found ready (or closed).
#[derive(Debug, Default)]
struct Ready {
    stdin: bool,
    stdout: bool,
    stderr: bool,
}

impl<'a> Run<'a> {
    /// Takes the pipes of `child` and makes them non-blocking.
    fn new(child: &'a mut Child) -> io::Result<Run<'a>> {
        let pid = child.id();
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let fds = [
            stdin.as_ref().map(AsFd::as_fd),
            stdout.as_ref().map(AsFd::as_fd),
            stderr.as_ref().map(AsFd::as_fd),
        ];
        for fd in fds.into_iter().flatten() {
            let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
            fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        }
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
    fn wait(&mut self, body: &[u8], limit: usize, deadline: Instant) -> Ended {
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
            if ready.stdin {
                self.write_stdin(body);
            }
            if ready.stdout {
                match self.read_stdout(limit) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::FileTooLarge => {
                        return self.kill(Ended::TooMuchOutput)
                    }
                    Err(err) => return self.kill(Ended::Lost(err)),
                }
            }
            if ready.stderr {
                self.read_stderr();
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
        if let Some((status, _)) = exited {
            return Ended::Exited(status);
        }
        // Both pipes are closed: the command is exiting, normally within microseconds.
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
        let pipes = [
            (self.stdin.as_ref().map(AsFd::as_fd), PollFlags::POLLOUT),
            (self.stdout.as_ref().map(AsFd::as_fd), PollFlags::POLLIN),
            (self.stderr.as_ref().map(AsFd::as_fd), PollFlags::POLLIN),
        ];
        let mut fds = Vec::with_capacity(3);
        let mut slots = [None; 3];
        for (slot, (fd, events)) in slots.iter_mut().zip(pipes) {
            if let Some(fd) = fd {
                *slot = Some(fds.len());
                fds.push(PollFd::new(fd, events));
            }
        }
        let millis = u16::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Ready::default()),
            Err(err) => return Err(err.into()),
        }
        // Readable, writable, or closed (POLLHUP, POLLERR): the read or write says which.
        let ready = |slot: Option<usize>| {
            slot.and_then(|i| fds.get(i))
                .and_then(PollFd::revents)
                .is_some_and(|events| !events.is_empty())
        };
        Ok(Ready {
            stdin: ready(slots[0]),
            stdout: ready(slots[1]),
            stderr: ready(slots[2]),
        })
    }

    /// Writes what the pipe takes of the rest of `body`; closes stdin when all is written, or
    /// when the command closed its end (it need not read its stdin).
    fn write_stdin(&mut self, body: &[u8]) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        match stdin.write(body.get(self.written..).unwrap_or_default()) {
            Ok(written) => {
                self.written += written;
                if self.written >= body.len() {
                    self.stdin = None;
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => self.stdin = None,
        }
    }

    /// Reads what stdout holds; an error of kind `FileTooLarge` past `limit` bytes.
    fn read_stdout(&mut self, limit: usize) -> io::Result<()> {
        let Some(stdout) = self.stdout.as_mut() else {
            return Ok(());
        };
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match stdout.read(&mut chunk) {
                Ok(0) => {
                    self.stdout = None;
                    return Ok(());
                }
                Ok(read) => {
                    if self.output.len() + read > limit {
                        return Err(io::Error::new(
                            io::ErrorKind::FileTooLarge,
                            "too much output",
                        ));
                    }
                    self.output.extend_from_slice(&chunk[..read]);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Reads what stderr holds into the log.
    fn read_stderr(&mut self) {
        let Some(stderr) = self.stderr.as_mut() else {
            return;
        };
        let mut chunk = [0u8; 8192];
        loop {
            match stderr.read(&mut chunk) {
                Ok(0) => break,
                Ok(read) => self.errors.feed(&chunk[..read]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.stderr = None;
    }

    /// Kills the command's group and reaps the command; `why` is how the run ended.
    fn kill(&mut self, why: Ended) -> Ended {
        // A group's id is not reused while a member of it lives, reaped leader or not.
        kill_group(self.pid);
        let _ = self.child.kill();
        if let Err(err) = self.child.wait() {
            log::warn!("cannot reap a killed command: {err}");
        }
        why
    }
}

/// The command's stderr, a line at a time: the first [`LOGGED_STDERR_LINES`] go to the log,
/// the last non-empty one is kept for the error reply.
pub(crate) struct StderrLog {
    pid: u32,
    line: Vec<u8>,
    last: Option<Vec<u8>>,
    lines: usize,
}

impl StderrLog {
    pub(crate) fn new(pid: u32) -> StderrLog {
        StderrLog {
            pid,
            line: Vec::new(),
            last: None,
            lines: 0,
        }
    }

    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.end_line();
            } else if self.line.len() < STDERR_LINE_BYTES {
                self.line.push(byte);
            }
        }
    }

    fn end_line(&mut self) {
        if self.line.iter().all(u8::is_ascii_whitespace) {
            self.line.clear();
            return;
        }
        self.lines += 1;
        if self.lines <= LOGGED_STDERR_LINES {
            log::warn!(target: COMMAND_LOG, "[{}] {}", self.pid, shown(&self.line));
        }
        self.last = Some(std::mem::take(&mut self.line));
    }

    /// The last non-empty line, printable, once the command is done.
    pub(crate) fn finish(&mut self) -> Option<String> {
        self.end_line();
        if self.lines > LOGGED_STDERR_LINES {
            log::warn!(
                target: COMMAND_LOG,
                "[{}] … {} more stderr lines not logged",
                self.pid,
                self.lines - LOGGED_STDERR_LINES
            );
        }
        self.last.as_deref().map(shown)
    }
}

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

/// A command in hand, until dropped.
pub(crate) struct InHand(u32);

impl Drop for InHand {
    fn drop(&mut self) {
        let mut pids = in_hand();
        if let Some(index) = pids.iter().position(|pid| *pid == self.0) {
            pids.swap_remove(index);
        }
        drop(pids);
        tell_guardian('-', self.0);
    }
}

/// Spawns `command` (piped, in a process group of its own) as a command in hand, as a run of
/// [`CommandHandler`] does: known to [`end_orphans`], [`end_all`] and the guardian until the
/// [`InHand`] is dropped, which must be after the child is reaped. For the programs that
/// `crate::stream` keeps running.
pub(crate) fn spawn_in_hand(command: &mut std::process::Command) -> io::Result<(Child, InHand)> {
    let _spawning = SPAWNING.read().unwrap_or_else(PoisonError::into_inner);
    if ENDING.load(Ordering::SeqCst) {
        return Err(io::Error::other("the server is exiting"));
    }
    let child = command.spawn()?;
    in_hand().push(child.id());
    tell_guardian('+', child.id());
    let pid = child.id();
    Ok((child, InHand(pid)))
}

/// Whether [`end_all`] was called: the process is exiting, and a command that ended was
/// killed by it (its request must go back to the queue unanswered).
pub(crate) fn ending() -> bool {
    ENDING.load(Ordering::SeqCst)
}

/// Makes this process the keeper of whatever its commands start, for a server that serves a
/// command (the `rpc-server` binary calls it before serving). Only for a binary whose `main`
/// runs [`guard`] when [`GUARDIAN_ENV`] is set: it starts its own executable as the guardian.
///
/// - a child subreaper (`PR_SET_CHILD_SUBREAPER`): a process whose parent exits, such as
///   one that left its command's group with `setsid`, becomes a child of this process
///   instead of init's, so [`end_orphans`] and [`end_all`] can find it and end it;
/// - not dumpable (`PR_SET_DUMPABLE` 0): other processes of the same user, its commands
///   among them, can no longer read its `/proc/PID/environ` (where `AMQP_PASSWORD` is) or
///   its memory, nor attach a debugger; it also dumps no core. Its command line stays
///   readable by every user (`ps`), so a password has no place there;
/// - the parent of a guardian process ([`guard`]): told of each command as it starts and
///   ends, it kills the process groups of the commands in hand when the server dies, however
///   it dies (SIGKILL, the OOM killer).
///
/// Linux only; an error names the setting the kernel refused, or why the guardian could not
/// start.
pub fn contain() -> Result<(), Error> {
    nix::sys::prctl::set_dumpable(false)
        .map_err(|err| Error::Config(format!("cannot make the server non-dumpable: {err}")))?;
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|err| Error::Config(format!("cannot make the server a subreaper: {err}")))?;
    let guardian = std::env::current_exe()
        .and_then(|exe| {
            std::process::Command::new(exe)
                .arg0("rpc-server (guardian)")
                // Nothing of the server's environment (its password) in a /proc file its
                // commands can read.
                .env_clear()
                .env(GUARDIAN_ENV, "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                // Away from the terminal's signals, which are the server's to handle.
                .process_group(0)
                .spawn()
        })
        .map_err(|err| Error::Config(format!("cannot start the guardian process: {err}")))?;
    GUARDIAN_PID.store(guardian.id(), Ordering::SeqCst);
    *guardian_pipe() = guardian.stdin;
    CONTAINED.store(true, Ordering::SeqCst);
    Ok(())
}

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

/// Tells the guardian that command `pid` started (`+`) or was reaped (`-`). A guardian that
/// is gone is logged once and forgotten.
fn tell_guardian(what: char, pid: u32) {
    let mut pipe = guardian_pipe();
    let Some(stdin) = pipe.as_mut() else { return };
    if let Err(err) = stdin.write_all(format!("{what}{pid}\n").as_bytes()) {
        log::warn!(
            "the guardian process is gone ({err}): a server killed now leaves its commands running"
        );
        *pipe = None;
    }
}

/// The guardian of a [`contain`]ed server's commands, run in a process of its own: reads
/// `+PID` (a command started) and `-PID` (it was reaped) lines on stdin, a pipe from the
/// server; at its end (the server exited or died: the kernel closes the pipe) kills the process
/// groups of the commands still in hand, and exits. A process apart because a process cannot
/// act after its own SIGKILL; a parent-death signal would need `fork` (and an `unsafe` hook)
/// instead of `posix_spawn` for every command, which costs about a millisecond per request.
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
        eprintln!(
            "rpc-server (guardian): the server is gone; killed its {} command(s) in hand",
            in_hand.len()
        );
    }
    std::process::exit(0)
}

/// Ends the orphans of a [`contain`]ed server: processes its commands started whose parent
/// has exited (a `setsid` child left behind, a daemon). Each is killed with its process group,
/// then what it leaves is killed in turn, for at most [`ORPHANS_BOUND`]; orphans that exited
/// by themselves are reaped. The command handler calls it each time a command ends. Does
/// nothing in a process that did not call [`contain`].
pub fn end_orphans() {
    if !CONTAINED.load(Ordering::Relaxed) {
        return;
    }
    // An orphan is given to the subreaper's first live thread: the main thread, which lives
    // as long as the process.
    let main = nix::unistd::getpid();
    // Without the lock first: it waits for any spawn in progress on another worker (about a
    // millisecond), and there is nearly never an orphan. A child not known yet may be one
    // being spawned: the lock tells.
    let guardian = GUARDIAN_PID.load(Ordering::Relaxed);
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
        tell_guardian('-', *pid);
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
        let guardian = GUARDIAN_PID.load(Ordering::Relaxed);
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

/// Sends SIGKILL to process `pid`, if it is still there.
pub(crate) fn kill_process(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills process group `pid` (the command and whatever it started), if it is still there.
pub(crate) fn kill_group(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn shown(line: &[u8]) -> String {
    wire::printable(String::from_utf8_lossy(line).trim_end())
}

/// `word` as it would be typed in a shell: as is when it is plain, else in single quotes.
pub(crate) fn quoted(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
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

/// Finds `program` as a shell would (a path if it has a `/`, else the first executable file of
/// that name in `PATH`) and checks it can be run.
pub(crate) fn find_program(program: &OsStr) -> Result<PathBuf, String> {
    let shown = wire::printable(&program.to_string_lossy());
    if program.is_empty() {
        return Err("the command after -- is empty".into());
    }
    let path = Path::new(program);
    if program.as_encoded_bytes().contains(&b'/') {
        return match executable(path) {
            Ok(()) => Ok(path.to_path_buf()),
            Err(why) => Err(format!("cannot run the command '{shown}': {why}")),
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join(path))
        .find(|candidate| executable(candidate).is_ok())
        .ok_or_else(|| format!("cannot run the command '{shown}': not found in PATH"))
}

fn executable(path: &Path) -> Result<(), String> {
    let metadata = std::fs::metadata(path).map_err(|err| err.to_string())?;
    if !metadata.is_file() {
        return Err("not a file".into());
    }
    if metadata.permissions().mode() & 0o111 == 0 {
        return Err("not executable".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use amiquip::{AmqpProperties, AmqpValue, FieldTable};
    use rpc_client::TraceContext;

    fn handler(program: &str, args: &[&str]) -> CommandHandler {
        let mut options = CommandOptions::new(program, args.iter().copied());
        options.exec_timeout = Duration::from_secs(2);
        options.max_reply_bytes = 1 << 20;
        CommandHandler::new(options).expect("command found")
    }

    fn call(handler: &CommandHandler, body: &[u8]) -> Reply {
        let properties = AmqpProperties::default()
            .with_correlation_id("id-1".into())
            .with_content_type("text/plain".into());
        handler.handle(&Request {
            body,
            properties: &properties,
            trace: &TraceContext::new_trace(),
        })
    }

    fn message(reply: &Reply) -> String {
        String::from_utf8_lossy(&reply.body).into_owned()
    }

    #[test]
    fn stdout_is_the_reply_with_the_request_content_type() {
        let reply = call(&handler("tr", &["a-z", "A-Z"]), b"hello");
        assert_eq!(reply.error, None, "{}", message(&reply));
        assert_eq!(reply.body, b"HELLO");
        assert_eq!(reply.content_type.as_deref(), Some("text/plain"));
    }

    #[test]
    fn failures_give_status_and_last_stderr_line() {
        let script = "echo first >&2; echo 'last words' >&2; exit 3";
        let reply = call(&handler("sh", &["-c", script]), b"");
        assert_eq!(reply.error, Some(ErrorCode::ExecFailed));
        assert_eq!(
            message(&reply),
            "the command exited with status 3: last words"
        );
        let reply = call(&handler("sh", &["-c", "kill -9 $$"]), b"");
        assert_eq!(reply.error, Some(ErrorCode::ExecFailed));
        assert!(
            message(&reply).contains("signal 9 (SIGKILL)"),
            "{}",
            message(&reply)
        );
    }

    #[test]
    fn hanging_commands_and_their_children_are_killed() {
        let started = Instant::now();
        // The background sleep holds stdout open too: killing the group ends both.
        let reply = call(&handler("sh", &["-c", "sleep 30 & sleep 30"]), b"x");
        assert_eq!(
            reply.error,
            Some(ErrorCode::ExecTimeout),
            "{}",
            message(&reply)
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn floods_and_unread_stdin_do_not_deadlock() {
        let mut options = CommandOptions::new("yes", Vec::<String>::new());
        options.max_reply_bytes = 100_000;
        let reply = CommandHandler::new(options).expect("yes").handle(&Request {
            trace: &TraceContext::new_trace(),
            body: b"",
            properties: &AmqpProperties::default(),
        });
        assert_eq!(
            reply.error,
            Some(ErrorCode::TooLarge),
            "{}",
            message(&reply)
        );
        // 4 MiB to a command that never reads it, more than any pipe holds.
        let reply = call(&handler("true", &[]), &vec![b'x'; 4 << 20]);
        assert_eq!(reply.error, None, "{}", message(&reply));
        assert!(reply.body.is_empty());
        // And a large body through, both ways (the test handlers' limit is 1 MiB).
        let body = vec![b'y'; 1 << 20];
        let reply = call(&handler("cat", &[]), &body);
        assert!(
            reply.error.is_none() && reply.body == body,
            "cat changed the body"
        );
    }

    #[test]
    fn environment_carries_the_request_and_hides_credentials() {
        let mut headers = FieldTable::new();
        headers.insert(
            "traceparent".into(),
            AmqpValue::LongString("00-abc-def-01".into()),
        );
        headers.insert("tracestate".into(), AmqpValue::LongString("a=1".into()));
        let properties = AmqpProperties::default()
            .with_correlation_id("id-7".into())
            .with_headers(headers);
        let script = "echo \"$RPC_CORRELATION_ID|$RPC_CONTENT_TYPE|$TRACEPARENT|\
                      ${TRACESTATE-unset}|${AMQP_PASSWORD-unset}\"";
        // The malformed traceparent counts as absent (its tracestate with it): the command
        // gets the server's span of a new trace, never the header as received.
        let trace = crate::workers::server_span(&properties);
        let reply = handler("sh", &["-c", script]).handle(&Request {
            body: b"",
            properties: &properties,
            trace: &trace,
        });
        assert_eq!(
            message(&reply),
            format!("id-7||{}|unset|unset\n", trace.traceparent())
        );
    }

    #[test]
    fn command_lines_are_logged_as_typed() {
        let handler = handler("sh", &["-c", "sleep 2; it's"]);
        assert_eq!(handler.describe_command(), "sh -c 'sleep 2; it'\\''s'");
    }

    #[test]
    fn oversized_requests_and_missing_programs_are_refused() {
        let mut options = CommandOptions::new("cat", Vec::<String>::new());
        options.max_request_bytes = 4;
        let reply = CommandHandler::new(options).expect("cat").handle(&Request {
            trace: &TraceContext::new_trace(),
            body: b"12345",
            properties: &AmqpProperties::default(),
        });
        assert_eq!(reply.error, Some(ErrorCode::TooLarge));
        let missing = CommandHandler::new(CommandOptions::new("no-such-program-x", ["a"]));
        assert!(matches!(missing, Err(Error::Config(m)) if m.contains("not found in PATH")));
        let file = std::env::temp_dir().join(format!("rpc-server-not-exec-{}", std::process::id()));
        std::fs::write(&file, "#!/bin/sh\n").expect("temp file");
        let not_exec = CommandHandler::new(CommandOptions::new(&file, ["a"]));
        let _ = std::fs::remove_file(&file);
        assert!(matches!(not_exec, Err(Error::Config(m)) if m.contains("not executable")));
    }
}
