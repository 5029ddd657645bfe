//! The child-process toolkit that [`crate::command`] (a process per request) and
//! [`crate::stream`] (a program kept per worker) share: processes in hand, each in a process
//! group of its own, killed, reaped, and the subreaper's orphans (`process`, `kill`); the
//! guardian process that ends them if the server dies (`guardian`); finding a program and the
//! environment it gets (`program`); stderr to the log (`stderr`); the `poll` loop over a
//! run's pipes with its size and time bounds, and the non-blocking writes to stdin and reads
//! of stdout both use (`pipes`); the handlers' set-up: the size check, the time limit, the
//! reply's content type and the refusal's log line ([`reply`]).

pub(crate) mod guardian;
mod kill;
pub(crate) mod pipes;
pub(crate) mod process;
pub(crate) mod program;
pub(crate) mod stderr;

use crate::handler::{Reply, Request};
use rpc_client::wire::ErrorCode;
use std::time::{Duration, Instant};

/// Log target of the commands' stderr lines.
pub const COMMAND_LOG: &str = "rpc_server::command";

/// The request's `correlation_id`.
pub const ENV_CORRELATION_ID: &str = "RPC_CORRELATION_ID";

/// The request's `content_type`.
pub const ENV_CONTENT_TYPE: &str = "RPC_CONTENT_TYPE";

/// The milliseconds the command has when it starts: until the earliest of `--exec-timeout`
/// and its caller's deadline ([`Request::deadline`]), when it is ended.
pub const ENV_TIMEOUT_MS: &str = "RPC_TIMEOUT_MS";

/// The `traceparent` (W3C trace context) of the server's span of the request, under the name
/// OpenTelemetry uses for environment variables: the request's trace, the server's span id;
/// never a request's header as received. Unset for a request that is not traced.
pub const ENV_TRACEPARENT: &str = "TRACEPARENT";

/// The request's `tracestate` header (W3C trace context), when valid and with a valid
/// `traceparent`.
pub const ENV_TRACESTATE: &str = "TRACESTATE";

/// Once the command has exited, how long what is left on its pipes is still collected (a
/// process that escaped its group, a `setsid` child, may hold them open).
pub const LINGER: Duration = Duration::from_millis(150);

/// How long past `--exec-timeout` a run may take, to kill and reap the command.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(6);

/// When the work for `request` that starts at `started` is ended: at the earliest of its
/// `exec_timeout` and the caller's deadline (the caller no longer waits then; see
/// [`crate::server::workers::Done::abandoned`]).
pub(crate) fn end_of_run(
    request: &Request<'_>,
    exec_timeout: Duration,
    started: Instant,
) -> Instant {
    let limit = started + exec_timeout;
    request
        .deadline
        .map_or(limit, |deadline| deadline.min(limit))
}

/// `time` in whole milliseconds, rounded down (what [`ENV_TIMEOUT_MS`] and the `json`
/// requests' `timeout_ms` give).
pub(crate) fn millis(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}

/// A request body over `--max-request-bytes` is refused (`too-large`) before it reaches a
/// program, per request (`-- CMD`) or kept (`--protocol lines|json`).
pub(crate) fn check_size(request: &Request<'_>, max_request_bytes: usize) -> Result<(), Reply> {
    if request.body.len() <= max_request_bytes {
        return Ok(());
    }
    Err(Reply::refuse(
        ErrorCode::TooLarge,
        &format!(
            "the request body is {} bytes, above this server's limit of {} bytes",
            request.body.len(),
            max_request_bytes
        ),
    ))
}

/// A reply's content type: `configured` (`--reply-content-type`), else the request's.
pub(crate) fn reply_content_type(
    configured: &Option<String>,
    request: &Request<'_>,
) -> Option<String> {
    configured
        .clone()
        .or_else(|| request.properties.content_type().map(String::from))
}

/// The reply of a command's handler (`-- CMD`, `--protocol lines|json`): the body with its
/// content type, or the refusal, which is logged.
pub(crate) fn reply(outcome: Result<(Vec<u8>, Option<String>), Reply>) -> Reply {
    match outcome {
        Ok((body, content_type)) => Reply::answer(body).with_content_type(content_type),
        Err(refusal) => {
            log::warn!(
                "refusing request: {}",
                String::from_utf8_lossy(&refusal.body)
            );
            refusal
        }
    }
}
