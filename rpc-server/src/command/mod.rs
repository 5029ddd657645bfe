//! Serving a command ([`CommandHandler`]): each request runs the command once, directly (never
//! through a shell), with the request body on its stdin; its stdout is the reply body.
//!
//! - Exit status 0 is a reply. A non-zero status or death by a signal is an `exec-failed`
//!   error reply, past the time limit an `exec-timeout` one, more stdout than the reply limit
//!   a `too-large` one; at the caller's deadline ([`Request::deadline`]), when earlier than
//!   the time limit, the command is killed the same way and nothing is sent; their messages give the status and the last line of stderr, printable
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
//!   killed by SIGKILL leaves no command running, and every process with the server's
//!   [`INSTANCE_ENV`] in its environment: what left its command's group (unless it left
//!   that environment or its user too). [`contain`] also makes the server non-dumpable: its
//!   `/proc` files (environment, memory) are closed to its commands.
//! - stdin, stdout and stderr are served by one `poll` loop, non-blocking: a command that never
//!   reads its stdin, or writes more than a pipe holds, cannot deadlock the server.
//! - Its stderr goes to the server's log (target [`COMMAND_LOG`]), bounded per request.
//! - Its environment is the server's, without the broker credentials (`AMQP_URI`,
//!   `AMQP_PASSWORD`, `AMQP_PASSWORD_FILE`), plus [`INSTANCE_ENV`] in a contained server, the
//!   request's [`ENV_CORRELATION_ID`],
//!   [`ENV_CONTENT_TYPE`], its time left ([`ENV_TIMEOUT_MS`]) and, when the request is traced,
//!   the trace context of the server's span ([`ENV_TRACEPARENT`], [`ENV_TRACESTATE`]): same
//!   trace as the request's `traceparent`, the server's span as the parent. A request without
//!   one (or with a malformed one) sets neither, unless the server starts traces (`--trace`).
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
//!
//! The parts, in `child/` (shared with [`crate::stream`]): the program, its command line and environment (`program`); the processes,
//! their groups, reaping, orphans and the unclean stop (`process`, [`contain`], [`end_orphans`],
//! [`end_all`]); the guardian process (`guardian`, [`guard`]); the `poll` loop over a run's
//! pipes with its size and time bounds (`pipes`); stderr to the log (`stderr`).

pub use crate::child::guardian::{guard, GUARDIAN_ENV, INSTANCE_ENV};
pub use crate::child::process::{contain, end_all, end_orphans};
pub use crate::child::{
    COMMAND_LOG, ENV_CONTENT_TYPE, ENV_CORRELATION_ID, ENV_TIMEOUT_MS, ENV_TRACEPARENT,
    ENV_TRACESTATE, LINGER,
};

use crate::child::pipes::{describe_status, Ended, Run};
use crate::child::process::{end_orphans as end_orphaned, kill_group};
use crate::child::program::{find_program, quoted};
use crate::child::stderr::StderrLog;
use crate::child::{
    check_size, end_of_run, millis, process, program, reply, reply_content_type, KILL_GRACE,
};
use crate::error::Error;
use crate::handler::{Handler, Reply, Request};
use rpc_client::wire::{self, ErrorCode};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// Default for `--exec-timeout`.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// Default for `--max-request-bytes`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

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

    /// Runs the command for `request`: its stdout, or the error reply.
    fn run(&self, request: &Request<'_>) -> Result<Vec<u8>, Reply> {
        let limits = &self.options;
        check_size(request, limits.max_request_bytes)?;
        let started = Instant::now();
        let deadline = end_of_run(request, limits.exec_timeout, started);
        let mut command = program::command(&self.path, &limits.program, &limits.args, request);
        command.env(ENV_TIMEOUT_MS, millis(deadline - started).to_string());
        // `_in_hand` is kept until the end: every way out of this function reaps the command.
        let (mut child, _in_hand) = process::spawn(&mut command).map_err(|err| {
            // Refused because the server is exiting: its request goes back to the queue.
            process::park_if_ending();
            log::error!("cannot run {}: {err}", self.shown);
            Reply::refuse(
                ErrorCode::ExecFailed,
                &format!("the server cannot run its command: {err}"),
            )
        })?;
        let pid = child.id();
        let (ended, output, mut errors) = serve_pipes(&mut child, request.body, limits, deadline)?;
        // Whatever the command left running in its group goes with it, and whatever left the
        // group (the command's group is gone, so any orphan is one).
        kill_group(pid);
        end_orphaned();
        let stderr = errors.finish();
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
                output.len(),
                took.as_secs_f64() * 1e3
            ),
            error,
            took,
        );
        self.outcome(ended, output, &stderr)
    }

    /// The reply to a run that ended as `ended`, with `output` on its stdout and `stderr` (":
    /// " and the last line, or nothing) on its stderr.
    fn outcome(&self, ended: Ended, output: Vec<u8>, stderr: &str) -> Result<Vec<u8>, Reply> {
        let limits = &self.options;
        match ended {
            Ended::Exited(status) if status.success() => Ok(output),
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

/// Serves the pipes of `child` (see [`Run::wait`]) with `body` for its stdin, within `limits`
/// and until `deadline`: how it ended, its stdout and its stderr (to finish). `Err` if
/// the pipes cannot be served (the command is killed and reaped then). Never returns once
/// [`end_all`] killed the command (see [`process::park_if_ending`]).
fn serve_pipes(
    child: &mut Child,
    body: &[u8],
    limits: &CommandOptions,
    deadline: Instant,
) -> Result<(Ended, Vec<u8>, StderrLog), Reply> {
    let mut run = match Run::new(child) {
        Ok(run) => run,
        Err(err) => {
            let _ = process::end(child);
            return Err(Reply::refuse(
                ErrorCode::ExecFailed,
                &format!("the server cannot serve its command's pipes: {err}"),
            ));
        }
    };
    let ended = run.wait(body, limits.max_reply_bytes, deadline);
    process::park_if_ending();
    Ok((ended, std::mem::take(&mut run.output), run.errors))
}

impl Handler for CommandHandler {
    fn handle(&self, request: &Request<'_>) -> Reply {
        let content_type = reply_content_type(&self.options.reply_content_type, request);
        reply(self.run(request).map(|body| (body, content_type)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_client::{Headers, Properties};

    fn handler(program: &str, args: &[&str]) -> CommandHandler {
        let mut options = CommandOptions::new(program, args.iter().copied());
        options.exec_timeout = Duration::from_secs(2);
        options.max_reply_bytes = 1 << 20;
        CommandHandler::new(options).expect("command found")
    }

    fn call(handler: &CommandHandler, body: &[u8]) -> Reply {
        let properties = Properties::default()
            .with_correlation_id("id-1")
            .with_content_type("text/plain");
        handler.handle(&Request {
            body,
            properties: &properties,
            trace: None,
            deadline: None,
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
    fn the_caller_deadline_ends_the_command_and_the_command_sees_it() {
        // exec timeout 2 s, the caller's deadline in 0.5 s: killed at 0.5 s.
        let started = Instant::now();
        let deadline = started + Duration::from_millis(500);
        let properties = Properties::default();
        let request = |body: &'static [u8]| Request {
            body,
            properties: &properties,
            trace: None,
            deadline: Some(deadline),
        };
        let reply = handler("sh", &["-c", "sleep 30"]).handle(&request(b""));
        assert_eq!(reply.error, Some(ErrorCode::ExecTimeout));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // The time left when it starts: the earlier of the two bounds.
        let script = "echo $RPC_TIMEOUT_MS";
        let deadline = Instant::now() + Duration::from_millis(1500);
        let reply = handler("sh", &["-c", script]).handle(&Request {
            deadline: Some(deadline),
            ..request(b"")
        });
        let ms: u64 = message(&reply).trim().parse().expect("a number");
        assert!((1000..=1500).contains(&ms), "{ms}");
        let reply = call(&handler("sh", &["-c", script]), b"");
        let ms: u64 = message(&reply).trim().parse().expect("a number");
        assert!((1500..=2000).contains(&ms), "{ms}");
    }

    #[test]
    fn floods_and_unread_stdin_do_not_deadlock() {
        let mut options = CommandOptions::new("yes", Vec::<String>::new());
        options.max_reply_bytes = 100_000;
        let reply = CommandHandler::new(options).expect("yes").handle(&Request {
            trace: None,
            body: b"",
            properties: &Properties::default(),
            deadline: None,
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
        let mut headers = Headers::new();
        headers.insert("traceparent", "00-abc-def-01");
        headers.insert("tracestate", "a=1");
        let properties = Properties::default()
            .with_correlation_id("id-7")
            .with_headers(headers);
        let script = "echo \"$RPC_CORRELATION_ID|$RPC_CONTENT_TYPE|${TRACEPARENT-unset}|\
                      ${TRACESTATE-unset}|${AMQP_PASSWORD-unset}\"";
        // The malformed traceparent counts as absent (its tracestate with it): the request is
        // not traced, so the command gets no TRACEPARENT, never the header as received ...
        let untraced = crate::server::workers::server_span(&properties, false);
        assert_eq!(untraced, None);
        let reply = handler("sh", &["-c", script]).handle(&Request {
            body: b"",
            properties: &properties,
            trace: None,
            deadline: None,
        });
        assert_eq!(message(&reply), "id-7||unset|unset|unset\n");
        // ... and with --trace, the server's span of a new trace.
        let trace = crate::server::workers::server_span(&properties, true).expect("a new trace");
        let reply = handler("sh", &["-c", script]).handle(&Request {
            body: b"",
            properties: &properties,
            trace: Some(&trace),
            deadline: None,
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
            trace: None,
            body: b"12345",
            properties: &Properties::default(),
            deadline: None,
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
