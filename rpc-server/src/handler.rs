//! What a server answers ([`Handler`]): a request's body and properties in, a reply body or a
//! refusal out. [`Fibonacci`] is the default handler; [`crate::command::CommandHandler`] runs a
//! command per request; any `Fn(&Request) -> Reply` closure is a handler too.
//!
//! ```no_run
//! use rpc_server::handler::{Reply, Request};
//! use rpc_server::ServerOptions;
//! use std::sync::Arc;
//!
//! let options = ServerOptions { queue: "upper".into(), ..ServerOptions::default() };
//! let upper = |request: &Request| Reply::answer(request.body.to_ascii_uppercase());
//! let (_stop, shutdown) = crossbeam_channel::bounded(1);
//! rpc_server::serve(&options, Arc::new(upper), shutdown)?;
//! # Ok::<(), rpc_server::Error>(())
//! ```

use crate::fib;
use rpc_client::wire::{self, ErrorCode};
use rpc_client::Properties;
use rpc_client::TraceContext;
use std::time::{Duration, Instant};

/// Log target of the one line per request (` [.] fib(30)`), so it can be turned off alone:
/// at high request rates writing it is a large share of the server's own CPU time.
pub const REQUEST_LOG: &str = "rpc_server::request";

/// From this n on, Fibonacci checks the request's deadline (fib(n) takes a millisecond or
/// more; below it, the check would cost more than it saves).
pub const LARGE_N: u64 = 100_000;

/// log10 of the golden ratio: fib(n) has about `n * LOG10_PHI` decimal digits.
const LOG10_PHI: f64 = 0.208_987_640_249_978_7;

/// One request as a handler sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The request body, as published.
    pub body: &'a [u8],
    /// The request's AMQP properties (`correlation_id`, `content_type`, `headers`, …).
    pub properties: &'a Properties,
    /// The server's span of this request, if it is traced: a child of the request's
    /// `traceparent`; for a request without one (or with a malformed one), the root of a new
    /// trace with `--trace`, else `None`. Its `traceparent` goes on the reply.
    pub trace: Option<&'a TraceContext>,
    /// When the caller stops waiting ([`Request::deadline`]); `None` for no deadline.
    pub deadline: Option<Instant>,
}

impl Request<'_> {
    /// When the caller stops waiting, by this server's clock: from the request's `expiration`
    /// (and `timestamp`), never earlier than the caller really gives up whatever the clocks
    /// say (see [`wire::patience`]). `None` for a request without `expiration` (the tutorial
    /// clients'). Past it no reply is sent: the request is acked and counted as abandoned.
    /// A handler that computes long checks it and stops early (its reply does not matter
    /// then); the command handlers end their command there.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the caller has stopped waiting (always false without a deadline). Reads the
    /// clock when there is a deadline.
    pub fn abandoned(&self) -> bool {
        self.deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// A string header of the request, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        wire::header(self.properties, name)
    }

    /// Writes the per-request line ([`REQUEST_LOG`], info): `message` and the trace id (when
    /// traced), and, as fields of a JSON line, the correlation id (printable), trace id (when
    /// traced), `outcome` (`answered`, or the error code) and `duration_ms` (`took`).
    pub fn log(&self, message: std::fmt::Arguments<'_>, error: Option<ErrorCode>, took: Duration) {
        if !log::log_enabled!(target: REQUEST_LOG, log::Level::Info) {
            return;
        }
        let correlation_id = self.properties.correlation_id().map(wire::printable);
        let correlation_id = correlation_id.as_deref().unwrap_or("");
        let outcome = error.map_or("answered", ErrorCode::as_str);
        let duration_ms = took.as_secs_f64() * 1e3;
        match self.trace {
            Some(trace) => log::info!(
                target: REQUEST_LOG,
                correlation_id,
                trace_id:% = trace.trace_id,
                outcome,
                duration_ms;
                "{message} (trace {})",
                trace.trace_id
            ),
            None => log::info!(
                target: REQUEST_LOG,
                correlation_id,
                outcome,
                duration_ms;
                "{message}"
            ),
        }
    }
}

/// What a handler answers: a reply body, or a refusal sent as an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply body; for a refusal, a one-line message.
    pub body: Vec<u8>,
    /// The reply's `content_type` property, if any.
    pub content_type: Option<String>,
    /// `Some` makes this an error reply with that code in the `x-rpc-error` header; a caller
    /// that does not ask for error replies ([`wire::takes_error_replies`]) gets no reply
    /// instead (the request is acked, logged and counted).
    pub error: Option<ErrorCode>,
}

impl Reply {
    /// A reply with `body`.
    pub fn answer(body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            body: body.into(),
            content_type: None,
            error: None,
        }
    }

    /// An error reply with `code` and a one-line `message` (made printable and bounded here).
    pub fn refuse(code: ErrorCode, message: &str) -> Reply {
        Reply {
            body: wire::printable(message).into_bytes(),
            content_type: None,
            error: Some(code),
        }
    }

    /// The same reply with `content_type` set.
    pub fn with_content_type(mut self, content_type: Option<String>) -> Reply {
        self.content_type = content_type;
        self
    }
}

/// Computes the reply to one request. Called from the server's worker threads, so it must be
/// `Send + Sync`; with `--workers N`, up to N calls run at once. Bad input is answered with a
/// refusal, never a panic; a handler that panics anyway gets an `internal` error reply.
pub trait Handler: Send + Sync {
    /// The reply to `request`.
    fn handle(&self, request: &Request<'_>) -> Reply;

    /// The longest one call can take, if bounded: the server waits this long for requests in
    /// hand when asked to stop. `None` when calls are quick.
    fn time_limit(&self) -> Option<std::time::Duration> {
        None
    }

    /// What this handler serves, for the server's log.
    fn describe(&self) -> String {
        "a Rust handler".into()
    }

    /// Ends what the handler keeps running (the programs of `--protocol lines|json`), within
    /// about `within`; called by the `rpc-server` binary once the server has stopped serving.
    /// Nothing by default.
    fn close(&self, within: Duration) {
        let _ = within;
    }
}

impl<F> Handler for F
where
    F: Fn(&Request<'_>) -> Reply + Send + Sync,
{
    fn handle(&self, request: &Request<'_>) -> Reply {
        self(request)
    }
}

/// The tutorial's procedure: the body is n in ASCII decimal, the reply fib(n) in decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fibonacci {
    /// Largest n served; larger ones get a `too-large` error reply.
    pub max_n: u64,
    /// Largest reply body; a larger fib(n) gets a `too-large` error reply.
    pub max_reply_bytes: usize,
}

impl Handler for Fibonacci {
    fn handle(&self, request: &Request<'_>) -> Reply {
        let started = Instant::now();
        let (n, body, error) = fib_answer(
            request.body,
            self.max_n,
            self.max_reply_bytes,
            request.deadline,
        );
        if let Some(n) = n {
            request.log(format_args!(" [.] fib({n})"), error, started.elapsed());
        }
        Reply {
            body,
            content_type: None,
            error,
        }
    }

    fn describe(&self) -> String {
        format!("fib(n), max n {}", self.max_n)
    }
}

/// The reply to a request `body`: fib(n) for a valid n up to `max_n` whose decimal form has at
/// most `max_reply_bytes` digits, else an error reply's message with its code. Bad input is
/// answered, never an error of the server. A reply too large for the broker is never sent: it
/// would close the channel and bring the request back again and again.
pub fn fib_reply(body: &[u8], max_n: u64, max_reply_bytes: usize) -> (Vec<u8>, Option<ErrorCode>) {
    let (_, body, error) = fib_answer(body, max_n, max_reply_bytes, None);
    (body, error)
}

/// [`fib_reply`], with n when the body is a valid request. From [`LARGE_N`] on, the
/// `deadline` is checked before fib(n) is computed and before it is written in decimal (the
/// two long steps): past it the caller is gone and nothing more is computed.
fn fib_answer(
    body: &[u8],
    max_n: u64,
    max_reply_bytes: usize,
    deadline: Option<Instant>,
) -> (Option<u64>, Vec<u8>, Option<ErrorCode>) {
    let too_large = |n: u64, digits: String| {
        let message = format!(
            "fib({n}) has {digits} digits, above this server's reply limit of {max_reply_bytes} bytes"
        );
        log::warn!("refusing request: {message}");
        (Some(n), message.into_bytes(), Some(ErrorCode::TooLarge))
    };
    match wire::parse_request(body, max_n) {
        Ok(n) => {
            // Known too large before computing it (with a digit to spare for rounding).
            let estimate = n as f64 * LOG10_PHI;
            if estimate > max_reply_bytes as f64 + 1.0 {
                return too_large(n, format!("about {estimate:.0}"));
            }
            let past = |deadline: Option<Instant>| {
                n >= LARGE_N && deadline.is_some_and(|deadline| Instant::now() >= deadline)
            };
            let gone = || {
                let message = format!("fib({n}) not computed: the caller's deadline passed");
                (Some(n), message.into_bytes(), Some(ErrorCode::Internal))
            };
            if past(deadline) {
                return gone();
            }
            let value = fib::fib(n);
            if past(deadline) {
                return gone();
            }
            match value.to_string() {
                value if value.len() > max_reply_bytes => too_large(n, value.len().to_string()),
                value => (Some(n), value.into_bytes(), None),
            }
        }
        Err(err) => {
            log::warn!("refusing request: {err}");
            (None, err.message.into_bytes(), Some(err.code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_refusals() {
        assert_eq!(fib_reply(b"30", 100, 1000), (b"832040".to_vec(), None));
        assert_eq!(fib_reply(b"101", 100, 1000).1, Some(ErrorCode::TooLarge));
        assert_eq!(fib_reply(b"abc", 100, 1000).1, Some(ErrorCode::BadRequest));
    }

    #[test]
    fn replies_over_the_byte_limit_are_refused() {
        // fib(30) = 832040: 6 digits.
        assert_eq!(fib_reply(b"30", 100, 6).1, None);
        let (message, code) = fib_reply(b"30", 100, 5);
        assert_eq!(code, Some(ErrorCode::TooLarge));
        assert!(String::from_utf8_lossy(&message).contains("6 digits"));
        // Refused from the estimate, without computing 20 million digits.
        let (message, code) = fib_reply(b"100000000", u64::MAX, 1000);
        assert_eq!(code, Some(ErrorCode::TooLarge));
        assert!(String::from_utf8_lossy(&message).contains("about 20898764"));
    }

    #[test]
    fn fibonacci_stops_at_the_deadline_for_large_n() {
        let past = Some(Instant::now());
        let (message, code) = {
            let (_, body, code) = fib_answer(b"1000000", u64::MAX, 1 << 20, past);
            (String::from_utf8_lossy(&body).into_owned(), code)
        };
        assert_eq!(code, Some(ErrorCode::Internal));
        assert!(message.contains("deadline passed"), "{message}");
        // Small n are computed whatever the deadline; a deadline ahead changes nothing.
        assert_eq!(fib_answer(b"30", 100, 1000, past).1, b"832040");
        let ahead = Instant::now().checked_add(Duration::from_secs(60));
        assert_eq!(fib_answer(b"100000", u64::MAX, 1 << 20, ahead).2, None);
    }

    #[test]
    fn closures_and_fibonacci_are_handlers() {
        let properties = Properties::default();
        let request = Request {
            body: b"10",
            properties: &properties,
            trace: Some(&TraceContext::new_trace()),
            deadline: None,
        };
        let fib = Fibonacci {
            max_n: 100,
            max_reply_bytes: 100,
        };
        assert_eq!(fib.handle(&request), Reply::answer("55"));
        let echo = |request: &Request| Reply::answer(request.body);
        assert_eq!(echo.handle(&request), Reply::answer("10"));
        let refused = Reply::refuse(ErrorCode::BadRequest, "two\nlines");
        assert_eq!(refused.body, b"two?lines");
    }
}
