//! Serving a program that stays up ([`StreamHandler`], `rpc-server --protocol lines|json --
//! CMD`): each worker starts the program once and keeps it; requests go to its stdin one at a
//! time, a line each, and the next line on its stdout is the reply (`codec` has the two
//! framings). An interpreter's start-up, caches and connections are paid once, not per
//! request.
//!
//! Every guarantee of `-- CMD` run per request ([`crate::command`]) holds for a process that
//! stays up:
//!
//! - a program that exits or crashes with a request in hand: that request gets `exec-failed`
//!   with the exit status and the last line of its stderr; past `--exec-timeout` its process
//!   group is killed and the request gets `exec-timeout` (at the caller's deadline, when
//!   earlier, the same, but nothing is sent and no backoff follows: the program did not
//!   fail); a reply over `--max-reply-bytes` is
//!   `too-large`, and a line that is not a reply of the protocol (garbage, a wrong id, a
//!   second line nobody asked for) is a protocol error (`exec-failed`). In each case the
//!   program is ended (its stream is out of step) and started again for the next request,
//!   after a pause of 0.1 s doubling with each failure in a row up to 10 s, ±25% (`Backoff`),
//!   reset by a reply: a program that dies at start every time is logged and never spins;
//! - a reply is sent only once the program waits for its next request with nothing more on
//!   its stdout (`watch`, from `/proc`), and its first request is written only then: a second
//!   line for one request fails it with `lines` (nothing tells which is the answer), output at
//!   start fails the request unwritten; either way the program is started again;
//! - a program that exits with status 0 with a request in hand, unanswered, did not crash: the
//!   request goes to a fresh program, once; so does a `json` request answered with an earlier
//!   request's id (a late line of another request's);
//! - its process group, the server's subreaper and guardian cover it as a command in hand for
//!   as long as it lives; what escapes its group is ended after each request;
//! - its stderr goes to the log, the first 20 lines per request;
//! - `--max-requests-per-process N` retires a program after N replies (for handlers that
//!   leak): its stdin is closed and it is given [`CLOSE_GRACE`] to exit, in the background,
//!   as many at once as there are workers; one retired beyond that is killed at once;
//! - [`Handler::close`] (after a clean stop) closes every program's stdin, gives them a bounded
//!   moment to exit, then ends their groups.

mod codec;
mod kept;
mod watch;

use crate::child::pipes::describe_status;
use crate::child::process;
use crate::child::program::{find_program, quoted};
use crate::child::stderr::StderrLog;
use crate::child::{reply_content_type, KILL_GRACE};
use crate::command::CommandOptions;
use crate::error::Error;
use crate::handler::{Handler, Reply, Request};
use codec::{Answer, Bad};
use kept::{Idle, KeptProgram, Outcome, Settle};
use rpc_client::amqp::Reconnect;
use rpc_client::wire::{self, ErrorCode};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a command is served (`--protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Protocol {
    /// A process per request: the body on stdin, stdout the reply ([`crate::command`]).
    #[default]
    Exec,
    /// One process per worker; the body as one line in, the next line out the reply.
    Lines,
    /// One process per worker; one JSON object per line each way.
    Json,
}

/// How long a program whose stdin was closed (at a stop, or to recycle it) has to exit before
/// its group is killed.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Longest pause before starting a program again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How long after its reply a program has to wait for its next request; past it, the reply
/// is sent and the program ended (it may still write).
const SETTLE_MAX: Duration = Duration::from_secs(1);

/// A reply body and content type, or the error reply.
type Served = Result<(Vec<u8>, Option<String>), Reply>;

/// A request to try once more on a fresh program: the failure was not its own. Why.
struct Again(String);

/// Ends the slot's program (`why` it is ended); one that never answered counts as a failed
/// start, for the backoff.
fn end_program(slot: &mut Slot, why: &str) {
    if slot.kept.take().map_or(0, |kept| kept.answered) == 0 {
        slot.backoff.failed(why);
    }
}

/// The caller's deadline passed with the slot's request in hand: its program is ended (out
/// of step, as after a hang) and started again for the next request, with no pause: it did
/// not fail. The error reply is never sent (see [`crate::server::workers::Done::abandoned`]).
fn abandoned(slot: &mut Slot) -> Served {
    let pid = slot.kept.take().map_or(0, |kept| kept.pid);
    log::info!(
        target: crate::child::COMMAND_LOG,
        "worker {} (pid {pid}): the caller's deadline passed with the request in hand; the \
         program was ended, and is started again for the next request",
        slot.index
    );
    Err(Reply::refuse(
        ErrorCode::ExecTimeout,
        "the caller's deadline passed",
    ))
}

/// The time from now to `deadline` (none once past).
fn time_left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Whether `line` is a `json` reply to an earlier request than `id` of the slot's program.
fn earlier_reply(slot: &Slot, got: Option<u64>, id: u64) -> bool {
    let Some(first) = slot.kept.as_ref().and_then(|kept| kept.first_id) else {
        return false;
    };
    got.is_some_and(|got| (first..id).contains(&got))
}

/// What program to keep and how.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The program, its arguments and limits (`exec_timeout` bounds each request).
    pub command: CommandOptions,
    /// [`Protocol::Lines`] or [`Protocol::Json`].
    pub protocol: Protocol,
    /// Programs kept at most: one per worker.
    pub processes: usize,
    /// Replies after which a program is retired and started afresh; `None` keeps it.
    pub max_requests_per_process: Option<u64>,
}

/// The pause before the next start of a failing program: 0.1 s after the first failure in a
/// row, doubling up to 10 s, each ±25% at random (`rpc_client::amqp::Reconnect`, the
/// connections' backoff: programs that fail together do not restart together); a reply
/// resets it.
#[derive(Debug, Clone)]
struct Backoff {
    reconnect: Reconnect,
    not_before: Option<Instant>,
    last: String,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            reconnect: Reconnect::new(None, MAX_BACKOFF),
            not_before: None,
            last: String::new(),
        }
    }
}

impl Backoff {
    fn failed(&mut self, why: &str) -> Duration {
        // Never None: no limit on the failures in a row.
        let pause = self.reconnect.failed().unwrap_or(MAX_BACKOFF);
        self.not_before = Some(Instant::now() + pause);
        self.last = why.to_string();
        pause
    }

    /// Failures in a row so far.
    fn failures(&self) -> u32 {
        self.reconnect.failures()
    }

    fn succeeded(&mut self) {
        self.reconnect.succeeded();
        self.not_before = None;
    }
}

/// A worker's place: its program, if running, and its backoff.
struct Slot {
    index: usize,
    kept: Option<KeptProgram>,
    backoff: Backoff,
}

/// Serves requests with programs kept running (see the module documentation).
pub struct StreamHandler {
    options: StreamOptions,
    path: PathBuf,
    shown: String,
    command_line: String,
    /// The free slots; a request takes one and gives it back.
    slots: Mutex<FreeSlots>,
    free: Condvar,
    /// Programs being retired in the background: one thread each, at most one per worker.
    retiring: Mutex<Vec<JoinHandle<()>>>,
    /// The id of the next request (`json`).
    next_id: AtomicU64,
}

impl std::fmt::Debug for StreamHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHandler")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The free slots, and how many requests wait for one (only then is a slot given back
/// signalled: a `notify_one` is a system call even when nobody waits).
struct FreeSlots {
    slots: Vec<Slot>,
    waiting: usize,
}

/// A slot taken by one request, given back when dropped.
struct SlotInUse<'a> {
    handler: &'a StreamHandler,
    slot: Option<Slot>,
}

impl Drop for SlotInUse<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut free = lock(&self.handler.slots);
            free.slots.push(slot);
            let waiting = free.waiting > 0;
            drop(free);
            if waiting {
                self.handler.free.notify_one();
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StreamHandler {
    /// A handler for `options`; fails if the program cannot be found or is not executable,
    /// or the protocol is [`Protocol::Exec`]. No program starts before the first request.
    pub fn new(options: StreamOptions) -> Result<StreamHandler, Error> {
        if options.protocol == Protocol::Exec {
            return Err(Error::Config(
                "a StreamHandler serves --protocol lines or json".into(),
            ));
        }
        let path = find_program(&options.command.program).map_err(Error::Config)?;
        let shown = wire::printable(&options.command.program.to_string_lossy());
        let mut command_line = quoted(&shown);
        for arg in &options.command.args {
            command_line.push(' ');
            command_line.push_str(&quoted(&wire::printable(&arg.to_string_lossy())));
        }
        let slots = (0..options.processes.max(1))
            .rev()
            .map(|index| Slot {
                index,
                kept: None,
                backoff: Backoff::default(),
            })
            .collect();
        Ok(StreamHandler {
            options,
            path,
            shown,
            command_line,
            slots: Mutex::new(FreeSlots { slots, waiting: 0 }),
            free: Condvar::new(),
            retiring: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
        })
    }

    fn protocol_name(&self) -> &'static str {
        match self.options.protocol {
            Protocol::Json => "json",
            _ => "lines",
        }
    }

    /// A free slot, waiting for one until `deadline`.
    fn take(&self, deadline: Instant) -> Option<SlotInUse<'_>> {
        let mut free = lock(&self.slots);
        loop {
            if let Some(slot) = free.slots.pop() {
                return Some(SlotInUse {
                    handler: self,
                    slot: Some(slot),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            free.waiting += 1;
            free = self
                .free
                .wait_timeout(free, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            free.waiting -= 1;
        }
    }

    /// The reply body and content type, or the error reply.
    fn serve(&self, request: &Request<'_>) -> Result<(Vec<u8>, Option<String>), Reply> {
        let limits = &self.options.command;
        crate::child::check_size(request, limits.max_request_bytes)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let deadline = crate::child::end_of_run(request, limits.exec_timeout, started);
        let protocol = self.options.protocol;
        let frame = codec::encode(protocol, id, request, deadline - started)
            .map_err(|why| Reply::refuse(ErrorCode::BadRequest, &why))?;
        let Some(mut taken) = self.take(deadline) else {
            return Err(Reply::refuse(
                ErrorCode::ExecTimeout,
                "no program was free for the request within the exec timeout",
            ));
        };
        let Some(slot) = taken.slot.as_mut() else {
            return Err(Reply::refuse(ErrorCode::Internal, "no slot"));
        };
        let result = match self.exchange(slot, frame, id, deadline, request, false) {
            Ok(result) => result,
            // Not this request's failure: once more, on a fresh program, with its frame made
            // again (the first one was freed once written).
            Err(Again(why)) => match codec::encode(protocol, id, request, time_left(deadline)) {
                Ok(frame) => self
                    .exchange(slot, frame, id, deadline, request, true)
                    .unwrap_or_else(|Again(why)| Err(Reply::refuse(ErrorCode::ExecFailed, &why))),
                Err(_) => Err(Reply::refuse(ErrorCode::ExecFailed, &why)),
            },
        };
        drop(taken);
        // As after any command: what left its group is ended.
        process::end_orphans();
        let took = started.elapsed();
        let (outcome, bytes_out) = match &result {
            Ok((body, _)) => ("answered".to_string(), body.len()),
            Err(reply) => (format!("{}", reply.error.unwrap_or(ErrorCode::Internal)), 0),
        };
        request.log(
            format_args!(
                " [.] {} ({}): {outcome}, {} bytes in, {bytes_out} bytes out, {:.1} ms",
                self.shown,
                self.protocol_name(),
                request.body.len(),
                took.as_secs_f64() * 1e3
            ),
            result.as_ref().err().and_then(|reply| reply.error),
            took,
        );
        result
    }

    /// Makes sure `slot` has a program ready for a request (started after its backoff, if
    /// due before `deadline`), or the error reply.
    fn restart_if_needed(&self, slot: &mut Slot, deadline: Instant) -> Result<(), Reply> {
        if let Some(kept) = slot.kept.as_mut() {
            let why = match kept.idle_check() {
                Idle::Ready => return Ok(()),
                Idle::Exited(status) => format!(
                    "exited while idle ({}) after {} request(s)",
                    status.map_or_else(|| "stdout closed".into(), describe_status),
                    kept.answered
                ),
                Idle::Unsolicited(bytes) => {
                    format!("wrote {bytes} bytes nobody asked for (out of step)")
                }
            };
            end_program(slot, &why);
            log::warn!(
                target: crate::child::COMMAND_LOG,
                "worker {}: the program {why}; starting it again",
                slot.index
            );
        }
        if let Some(not_before) = slot.backoff.not_before {
            let now = Instant::now();
            if not_before > now {
                if not_before >= deadline {
                    return Err(Reply::refuse(
                        ErrorCode::ExecFailed,
                        &format!(
                            "the program failed {} time(s) in a row and is not started again \
                             for {:.1}s (last: {})",
                            slot.backoff.failures(),
                            (not_before - now).as_secs_f64(),
                            slot.backoff.last
                        ),
                    ));
                }
                // A pause on purpose: the program keeps failing.
                std::thread::sleep(not_before - now);
            }
        }
        let options = &self.options.command;
        match KeptProgram::start(&self.path, &options.program, &options.args) {
            Ok(kept) => {
                log::info!(
                    target: crate::child::COMMAND_LOG,
                    "worker {}: started `{}` (pid {}, --protocol {})",
                    slot.index,
                    self.command_line,
                    kept.pid,
                    self.protocol_name()
                );
                slot.kept = Some(kept);
                Ok(())
            }
            Err(err) => {
                let why = format!("the server cannot start its program: {err}");
                self.failed(slot, ErrorCode::ExecFailed, why)
            }
        }
    }

    /// Sends request `id` (`frame`) to the slot's program and turns what comes back into the
    /// reply body and content type, or the error reply; [`Again`] when the request is to go
    /// to a fresh program instead (not on the `last_try`).
    fn exchange(
        &self,
        slot: &mut Slot,
        frame: Vec<u8>,
        id: u64,
        deadline: Instant,
        request: &Request<'_>,
        last_try: bool,
    ) -> Result<Served, Again> {
        if let Err(reply) = self.restart_if_needed(slot, deadline) {
            return Ok(Err(reply));
        }
        let Some(pid) = slot.kept.as_ref().map(|kept| kept.pid) else {
            return Ok(Err(Reply::refuse(ErrorCode::Internal, "no program")));
        };
        let mut errors = StderrLog::new(pid);
        if let Err(reply) = self.first_settle(slot, deadline, &mut errors) {
            return Ok(Err(reply));
        }
        let Some(kept) = slot.kept.as_mut() else {
            return Ok(Err(Reply::refuse(ErrorCode::Internal, "no program")));
        };
        let limits = &self.options.command;
        let limit = codec::line_limit(self.options.protocol, limits.max_reply_bytes);
        kept.first_id.get_or_insert(id);
        let outcome = kept.exchange(frame, deadline, limit, &mut errors);
        // `end_all` killed the program: the process is exiting, and the request goes back to
        // the queue unanswered, as after any crash.
        process::park_if_ending();
        let line = match outcome {
            Outcome::Line(line) => line,
            Outcome::TimedOut if request.abandoned() => return Ok(abandoned(slot)),
            outcome => return self.unanswered(slot, outcome, &mut errors, last_try),
        };
        // Not sent before the program waits for its next request with nothing more written.
        let settle = kept.settle(Instant::now() + SETTLE_MAX, &mut errors);
        errors.finish();
        self.answer(slot, line, settle, id, request, last_try)
    }

    /// Before a program's first request: waits for it to wait for input with nothing written
    /// (a banner, a `ready` line would be taken as the first reply). Else the error reply, the
    /// request not written, and the program is started again after the backoff.
    fn first_settle(
        &self,
        slot: &mut Slot,
        deadline: Instant,
        errors: &mut StderrLog,
    ) -> Result<(), Reply> {
        let Some(kept) = slot.kept.as_mut().filter(|kept| !kept.settled) else {
            return Ok(());
        };
        let (code, why) = match kept.settle(deadline, errors) {
            Settle::Waiting | Settle::Unknown => return Ok(()),
            Settle::Wrote(bytes) => (
                ErrorCode::ExecFailed,
                format!(
                    "the program wrote {bytes} bytes before any request (\"{}\"): a --protocol \
                     {} program writes nothing but its replies on stdout (its stderr goes to \
                     the log); it was restarted",
                    kept.unsolicited(),
                    self.protocol_name()
                ),
            ),
            Settle::Exited(status) => {
                let how = status.map_or_else(|| "closed its stdout".into(), describe_status);
                let stderr = errors
                    .finish()
                    .map_or_else(String::new, |line| format!(": {line}"));
                let why = format!("the program {how} before answering its first request{stderr}");
                (ErrorCode::ExecFailed, why)
            }
            Settle::Busy => (
                ErrorCode::ExecTimeout,
                format!(
                    "the program did not wait for its first request (blocked reading its \
                     stdin, or in poll, select or epoll) within the exec timeout ({}s) and was \
                     killed",
                    self.options.command.exec_timeout.as_secs_f64()
                ),
            ),
        };
        self.failed(slot, code, why)
    }

    /// The reply to a request that got no line: the error reply, or [`Again`] when the
    /// program exited with status 0 (not a crash: it quit between requests, or does after
    /// each one).
    fn unanswered(
        &self,
        slot: &mut Slot,
        outcome: Outcome,
        errors: &mut StderrLog,
        last_try: bool,
    ) -> Result<Served, Again> {
        let limits = &self.options.command;
        let stderr = errors
            .finish()
            .map_or_else(String::new, |line| format!(": {line}"));
        let answered = slot.kept.as_ref().map_or(0, |kept| kept.answered);
        let why = match outcome {
            Outcome::Line(_) => return Ok(Err(Reply::refuse(ErrorCode::Internal, "a line"))),
            Outcome::Exited(Some(status)) if status.success() && !last_try => {
                let why =
                    format!("the program exited with status 0 with a request in hand{stderr}");
                end_program(slot, &why);
                log::info!(
                    target: crate::child::COMMAND_LOG,
                    "worker {}: {why}, unanswered: the request goes to a fresh program",
                    slot.index
                );
                return Err(Again(why));
            }
            Outcome::Exited(status) => {
                let how = status.map_or_else(|| "closed its stdout".into(), describe_status);
                let when = if answered == 0 {
                    "before answering its first request"
                } else {
                    "with a request in hand"
                };
                format!("the program {how} {when}{stderr}")
            }
            Outcome::TimedOut => {
                let why = format!(
                    "the program did not answer within {}s and was killed{stderr}",
                    limits.exec_timeout.as_secs_f64()
                );
                return Ok(self.failed(slot, ErrorCode::ExecTimeout, why));
            }
            Outcome::TooLarge => return Ok(self.too_large(slot)),
            Outcome::Early => "protocol error: the program answered before reading the whole \
                               request; it was restarted"
                .into(),
            Outcome::Lost(err) => format!("the server lost track of its program: {err}"),
        };
        Ok(self.failed(slot, ErrorCode::ExecFailed, why))
    }

    /// The reply for the program's `line` to request `id`, given how the program settled
    /// after it.
    fn answer(
        &self,
        slot: &mut Slot,
        line: Vec<u8>,
        settle: Settle,
        id: u64,
        request: &Request<'_>,
        last_try: bool,
    ) -> Result<Served, Again> {
        let limits = &self.options.command;
        let protocol = self.options.protocol;
        if let (Settle::Wrote(bytes), Protocol::Lines) = (&settle, protocol) {
            // Two lines for one request: neither can be told to be the answer.
            let shown = slot
                .kept
                .as_ref()
                .map(KeptProgram::unsolicited)
                .unwrap_or_default();
            let why = format!(
                "protocol error: the program wrote {bytes} more bytes (\"{shown}\") after its \
                 reply line, before waiting for the next request (--protocol lines takes one \
                 line per request); it was restarted"
            );
            return Ok(self.failed(slot, ErrorCode::ExecFailed, why));
        }
        let answer = match codec::decode(protocol, id, line, limits.max_reply_bytes) {
            Ok(answer) => answer,
            Err(Bad::TooLarge(_)) => return Ok(self.too_large(slot)),
            Err(Bad::Protocol(what)) => {
                let why = format!("protocol error: the program wrote {what}; it was restarted");
                return Ok(self.failed(slot, ErrorCode::ExecFailed, why));
            }
            Err(Bad::OtherId(what, got)) => {
                let why = format!("protocol error: the program wrote {what}; it was restarted");
                if !last_try && earlier_reply(slot, got, id) {
                    // Another request's late reply: this one is not at fault.
                    slot.kept = None;
                    log::warn!(
                        target: crate::child::COMMAND_LOG,
                        "worker {}: {why}, an earlier request's: the request goes to a fresh \
                         program",
                        slot.index
                    );
                    return Err(Again(why));
                }
                return Ok(self.failed(slot, ErrorCode::ExecFailed, why));
            }
        };
        if let Some(kept) = slot.kept.as_mut() {
            kept.answered += 1;
        }
        slot.backoff.succeeded();
        self.after_reply(slot, settle);
        let reply_type = reply_content_type(&limits.reply_content_type, request);
        Ok(match answer {
            Answer::Body { body, content_type } => Ok((body, content_type.or(reply_type))),
            Answer::Error(message) => Err(Reply::refuse(ErrorCode::ExecFailed, &message)),
        })
    }

    /// Keeps the slot's program after a reply if it settled, else ends it.
    fn after_reply(&self, slot: &mut Slot, settle: Settle) {
        let clean = matches!(settle, Settle::Exited(Some(status)) if status.success());
        let why = match settle {
            Settle::Waiting | Settle::Unknown => return self.maybe_recycle(slot),
            Settle::Wrote(bytes) => {
                let shown = slot
                    .kept
                    .as_ref()
                    .map(KeptProgram::unsolicited)
                    .unwrap_or_default();
                format!("wrote {bytes} bytes after its reply (\"{shown}\"), nobody asked for")
            }
            Settle::Exited(status) => format!(
                "{} after its reply",
                status.map_or_else(|| "closed its stdout".into(), describe_status)
            ),
            Settle::Busy => format!(
                "did not wait for its next request within {}s of its reply (it may write more)",
                SETTLE_MAX.as_secs_f64()
            ),
        };
        let pid = slot.kept.as_ref().map_or(0, |kept| kept.pid);
        slot.kept = None;
        // Exiting after each reply is a way to serve; the rest is worth a warning.
        let level = if clean {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        log::log!(
            target: crate::child::COMMAND_LOG,
            level,
            "worker {} (pid {pid}): the program {}; started again for the next request",
            slot.index,
            wire::printable(&why)
        );
    }

    fn too_large(&self, slot: &mut Slot) -> Result<(Vec<u8>, Option<String>), Reply> {
        let why = format!(
            "the program's reply is over this server's reply limit of {} bytes; it was \
             restarted",
            self.options.command.max_reply_bytes
        );
        self.failed(slot, ErrorCode::TooLarge, why)
    }

    /// Ends the slot's program after a failure, counts the failure, and answers `why` with
    /// `code`.
    fn failed<T>(&self, slot: &mut Slot, code: ErrorCode, why: String) -> Result<T, Reply> {
        let answered = slot.kept.as_ref().map_or(0, |kept| kept.answered);
        let pid = slot.kept.as_ref().map_or(0, |kept| kept.pid);
        // Killed with its group and reaped.
        slot.kept = None;
        let pause = slot.backoff.failed(&why);
        let at_start = if answered == 0 && slot.backoff.failures() > 1 {
            ", it keeps failing before its first reply"
        } else {
            ""
        };
        log::warn!(
            target: crate::child::COMMAND_LOG,
            "worker {} (pid {pid}): {}; {} failure(s) in a row{at_start}; next start in {:.1}s \
             at the earliest",
            slot.index,
            wire::printable(&why),
            slot.backoff.failures(),
            pause.as_secs_f64()
        );
        Err(Reply::refuse(code, &why))
    }

    /// Retires the slot's program once it has answered its quota: in the background, given
    /// [`CLOSE_GRACE`] to exit after its stdin is closed; or killed at once when as many
    /// programs as there are workers are being closed already, so that programs slow to exit
    /// (or deaf to their stdin's end) cannot pile up under load.
    fn maybe_recycle(&self, slot: &mut Slot) {
        let Some(max) = self.options.max_requests_per_process else {
            return;
        };
        if slot.kept.as_ref().is_none_or(|kept| kept.answered < max) {
            return;
        }
        let Some(kept) = slot.kept.take() else { return };
        let mut retiring = lock(&self.retiring);
        retiring.retain(|thread| !thread.is_finished());
        if retiring.len() >= self.options.processes.max(1) {
            let closing = retiring.len();
            drop(retiring);
            log::info!(
                target: crate::child::COMMAND_LOG,
                "worker {}: retiring its program (pid {}) after {max} request(s): killed at \
                 once, {closing} retired program(s) still closing",
                slot.index,
                kept.pid
            );
            // Its group is killed and it is reaped.
            drop(kept);
            return;
        }
        log::info!(
            target: crate::child::COMMAND_LOG,
            "worker {}: retiring its program (pid {}) after {max} request(s)",
            slot.index,
            kept.pid
        );
        let deadline = Instant::now() + CLOSE_GRACE;
        // Should the thread not start, the program is dropped with it: killed.
        let spawned = std::thread::Builder::new()
            .name("retire".into())
            .spawn(move || kept.close(deadline));
        match spawned {
            Ok(thread) => retiring.push(thread),
            Err(err) => log::warn!("cannot start a thread to retire a program ({err}): killed"),
        }
    }
}

impl Handler for StreamHandler {
    fn handle(&self, request: &Request<'_>) -> Reply {
        crate::child::reply(self.serve(request))
    }

    fn time_limit(&self) -> Option<Duration> {
        Some(self.options.command.exec_timeout + KILL_GRACE)
    }

    fn describe(&self) -> String {
        format!(
            "the program `{}` kept running (--protocol {}, up to {} at once), exec timeout {}s",
            self.command_line,
            self.protocol_name(),
            self.options.processes.max(1),
            self.options.command.exec_timeout.as_secs_f64()
        )
    }

    /// Closes the stdin of every program not in use, waits up to `within` for them to exit,
    /// then kills their groups; waits for the programs being retired too.
    fn close(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let kept: Vec<KeptProgram> = lock(&self.slots)
            .slots
            .iter_mut()
            .filter_map(|slot| slot.kept.take())
            .collect();
        let closing: Vec<JoinHandle<()>> = kept
            .into_iter()
            .filter_map(|kept| {
                std::thread::Builder::new()
                    .name("close".into())
                    .spawn(move || kept.close(deadline))
                    .ok()
            })
            .collect();
        let retiring = std::mem::take(&mut *lock(&self.retiring));
        for thread in closing.into_iter().chain(retiring) {
            // Each ends by the deadline (its program killed then).
            let _ = thread.join();
        }
    }
}

impl Drop for StreamHandler {
    fn drop(&mut self) {
        self.close(CLOSE_GRACE);
    }
}
