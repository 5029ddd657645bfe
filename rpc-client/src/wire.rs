//! The wire contract of RabbitMQ's RPC tutorial (tutorial six), plus our additive error replies.
//!
//! - A request goes to the default exchange with routing key = the request queue
//!   ([`DEFAULT_QUEUE`]); its body is n in ASCII decimal; it carries `reply_to` and
//!   `correlation_id`.
//! - The reply goes to the default exchange with routing key = the request's `reply_to`, with the
//!   same `correlation_id`; its body is fib(n) in ASCII decimal.
//! - Additions that tutorial peers ignore: an error reply carries the header [`ERROR_HEADER`]
//!   (a code from [`ErrorCode`]) and a one-line UTF-8 message as its body; every reply of ours
//!   carries [`SERVER_HEADER`] naming the server that answered.
//! - Error replies go only to callers that ask for them: a request whose AMQP `type` property
//!   is [`ERROR_REPLIES_TYPE`] ([`takes_error_replies`]; ours always are). Tutorial clients read
//!   any reply body as the result (Ruby's `to_i` and PHP's `intval` make an error message 0),
//!   so a request that cannot be served and does not ask gets no reply, as from a tutorial
//!   server: the server acks it, logs why and counts it.
//! - W3C trace context ([`crate::TraceContext`]): our requests carry `traceparent` (and `tracestate`
//!   when there is one); our replies carry the server span's `traceparent`, same trace id.
//!
//! Both crates use this module, so the contract is written down once.

use crate::error::Error;
use crate::properties::{Headers, Properties, ReadProperties};
pub use crate::text::{printable, MAX_PRINTABLE};
pub use crate::trace::{TraceContext, TRACEPARENT_HEADER, TRACESTATE_HEADER};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod header_text;
pub use header_text::header_text;

/// The request queue of the tutorial.
pub const DEFAULT_QUEUE: &str = "rpc_queue";

/// Header present on error replies only; its value is an [`ErrorCode`] string.
pub const ERROR_HEADER: &str = "x-rpc-error";

/// The value of a request's AMQP `type` property that says "I take error replies": only such
/// requests get one ([`takes_error_replies`]); others that cannot be served get no reply.
/// A basic property, not a header: it costs a few bytes, not a field table entry to encode
/// and decode. `type` is the message type name, for the application's use; no tutorial
/// client sets it, and this value names our contract, so no other caller sends it by chance.
pub const ERROR_REPLIES_TYPE: &str = "x-rpc-error-replies";

/// Header naming the server that produced a reply (informational).
pub const SERVER_HEADER: &str = "x-rpc-server";

pub use crate::amqp::MAX_HEADER_DEPTH;

/// How deep `properties`' headers nest (see [`MAX_HEADER_DEPTH`]): 0 without headers.
pub fn header_depth(properties: &(impl ReadProperties + ?Sized)) -> usize {
    properties.header_depth()
}

/// Longest request body a server reads; a u64 has at most 20 digits.
pub const MAX_REQUEST_BODY: usize = 64;

/// Why a request was refused, as sent in [`ERROR_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The body is not a non-negative decimal integer.
    BadRequest,
    /// n is above the server's limit.
    TooLarge,
    /// The server failed while handling a valid request.
    Internal,
    /// The request came back after its handling failed before (see the server's redelivery
    /// rule); it is not handled again.
    Redelivered,
    /// The server's command failed: it exited non-zero or was killed by a signal.
    ExecFailed,
    /// The server's command did not finish within the server's `--exec-timeout` and was
    /// killed.
    ExecTimeout,
}

impl ErrorCode {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::Internal => "internal",
            ErrorCode::Redelivered => "redelivered",
            ErrorCode::ExecFailed => "exec-failed",
            ErrorCode::ExecTimeout => "exec-timeout",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: the code for the header and a one-line message for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable reason, one line.
    pub message: String,
}

impl RequestError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Longest queue name with characters beyond ASCII, in bytes. RabbitMQ quotes the queue name
/// in its error messages ("NOT_FOUND - no queue '…' in vhost '/'", as a server's check of a
/// queue that does not exist yet gets) and cuts a message over 255 bytes at byte 252, which
/// can fall inside a multi-byte character; the AMQP library then cannot read the
/// message and drops the connection ("i/o loop dropped sending side of a channel"), again at
/// every reconnect. Measured on RabbitMQ 3.10 and 4.0: 76 '☃' (228 bytes) work, 77 (231) do
/// not. 160 leaves room for the longest prefixes before the name (about 90 bytes, with a
/// node name). An ASCII name is cut on a character boundary, so any length up to 255 works.
pub const MAX_NON_ASCII_QUEUE_NAME: usize = 160;

/// Checks a request queue name: not empty, no CR or LF, at most 255 bytes of UTF-8 (AMQP
/// short string), and at most [`MAX_NON_ASCII_QUEUE_NAME`] bytes if it has characters beyond
/// ASCII. Usable as a clap value parser.
///
/// CR and LF: RabbitMQ (3.10 and 4.0 measured) drops them from the name when it declares the
/// queue (and when a passive declare looks for it) but not when a consumer or a publish names
/// it, so a server would declare `ab` for `a\nb` and then fail to consume `a\nb` for ever.
pub fn parse_queue_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        // To the broker an empty name means "name one for me" (a new queue per declare) or
        // "the last queue declared on this channel": never a request queue.
        return Err("the queue name is empty".into());
    }
    if name.len() > 255 {
        return Err(format!(
            "queue names are at most 255 bytes; this one has {}",
            name.len()
        ));
    }
    if name.contains(['\r', '\n']) {
        return Err(
            "queue names cannot hold a line break (CR or LF): RabbitMQ drops it when it \
                    declares the queue, but not when it is consumed or published to"
                .into(),
        );
    }
    if !name.is_ascii() && name.len() > MAX_NON_ASCII_QUEUE_NAME {
        return Err(format!(
            "queue names with characters beyond ASCII are at most {MAX_NON_ASCII_QUEUE_NAME} \
             bytes (RabbitMQ cuts its error messages, which quote the name, inside such a \
             character, and the connection cannot read them); this one has {}",
            name.len()
        ));
    }
    Ok(name.to_string())
}

/// The body of a request for fib(`n`).
pub fn encode_request(n: u64) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// Reads n from a request body, accepting what tutorial clients send (`str(n)`), with
/// surrounding ASCII whitespace tolerated. Refuses empty, non-UTF-8, signed, fractional,
/// oversized bodies and n above `max_n`.
pub fn parse_request(body: &[u8], max_n: u64) -> Result<u64, RequestError> {
    use ErrorCode::{BadRequest, TooLarge};
    if body.len() > MAX_REQUEST_BODY {
        return Err(RequestError::new(
            BadRequest,
            format!(
                "request body is {} bytes; expected a decimal integer",
                body.len()
            ),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| RequestError::new(BadRequest, "request body is not UTF-8"))?
        .trim_matches(|c: char| c.is_ascii_whitespace());
    if text.is_empty() {
        return Err(RequestError::new(BadRequest, "request body is empty"));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RequestError::new(
            BadRequest,
            format!(
                "request body {:?} is not a non-negative decimal integer",
                printable(text)
            ),
        ));
    }
    let n: u64 = text.parse().map_err(|_| {
        RequestError::new(TooLarge, format!("n = {text} is above the limit {max_n}"))
    })?;
    if n > max_n {
        return Err(RequestError::new(
            TooLarge,
            format!("n = {n} is above the limit {max_n}"),
        ));
    }
    Ok(n)
}

/// Properties of a request: where to reply, which call it is, and that the caller takes
/// error replies (`type` = [`ERROR_REPLIES_TYPE`]).
pub fn request_properties(reply_to: &str, correlation_id: &str) -> Properties {
    Properties::default()
        .with_reply_to(reply_to)
        .with_correlation_id(correlation_id)
        .with_kind(ERROR_REPLIES_TYPE)
}

/// Whether the caller of a request with `properties` takes error replies: its `type` property
/// is [`ERROR_REPLIES_TYPE`]. A request that cannot be served and does not say so gets no
/// reply (a tutorial client would read the error message as its result).
pub fn takes_error_replies(properties: &(impl ReadProperties + ?Sized)) -> bool {
    properties.kind() == Some(ERROR_REPLIES_TYPE)
}

/// [`request_properties`] for a caller that waits `timeout`: `expiration` = the timeout, so
/// the broker drops the request once nobody waits for it, and `timestamp` (Unix seconds), so
/// that a server holding the request can tell the same ([`deadline_passed`]). Both are
/// standard AMQP properties; tutorial servers ignore them.
pub fn request_properties_with_deadline(
    reply_to: &str,
    correlation_id: &str,
    timeout: Duration,
) -> Properties {
    let timeout_ms = timeout.as_millis().clamp(1, u128::from(u32::MAX));
    request_properties(reply_to, correlation_id)
        .with_expiration(timeout_ms.to_string())
        .with_timestamp(unix_millis() / 1000)
}

/// How far apart the clocks of a client and a server may be for [`deadline_passed`]: a
/// request is dropped only when its deadline passed more than this long ago by the server's
/// clock, so skewed clocks never make a server drop requests whose caller still waits.
pub const CLOCK_SKEW_TOLERANCE: Duration = Duration::from_secs(300);

/// How long the caller of a request still waits, as a server that has just taken it can
/// tell ([`patience`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    /// No deadline: the request has no usable `expiration` (tutorial clients send none).
    Unbounded,
    /// The caller waits at most this long from now.
    Left(Duration),
    /// The caller has surely given up (see [`deadline_passed`]).
    Gone,
}

/// How long the caller of a request with `properties` still waits, counted from now, never
/// less than it really does whatever the clocks of caller and server say. Two bounds, the
/// smaller wins:
/// - its `expiration` counted from now: the caller started waiting before the request was
///   taken, so it waits no longer than that; no clock is compared;
/// - its `timestamp` plus `expiration` (the timestamp's second counting as a whole), by our
///   clock, plus [`CLOCK_SKEW_TOLERANCE`]: the clocks are judged to agree when they are less
///   than that apart, the rule that already drops late requests. This bound is the smaller
///   only for a request held longer than the tolerance (in a server's prefetch, or
///   redelivered after a server died); a timestamp in our future (a caller's clock ahead)
///   never shortens the first bound.
///
/// [`Patience::Unbounded`] without a numeric `expiration`.
pub fn patience(properties: &(impl ReadProperties + ?Sized)) -> Patience {
    let Some(expiration_ms) = properties.expiration().and_then(|e| e.parse::<u64>().ok()) else {
        return Patience::Unbounded;
    };
    let Some(sent) = properties.timestamp() else {
        return Patience::Left(Duration::from_millis(expiration_ms));
    };
    let tolerance_ms = CLOCK_SKEW_TOLERANCE.as_millis() as u64;
    let deadline_ms = sent
        .saturating_add(1)
        .saturating_mul(1000)
        .saturating_add(expiration_ms)
        .saturating_add(tolerance_ms);
    match deadline_ms.checked_sub(unix_millis()) {
        None | Some(0) => Patience::Gone,
        Some(left) => Patience::Left(Duration::from_millis(left.min(expiration_ms))),
    }
}

/// Has the caller of this request surely given up? True when it carries `timestamp` and
/// `expiration` and that deadline passed more than [`CLOCK_SKEW_TOLERANCE`] ago by our clock
/// (the timestamp's second counts as a whole). False for requests without both properties,
/// such as the tutorial clients'. Requests that wait in the queue need no such check: the
/// broker drops them at their `expiration` without comparing clocks.
pub fn deadline_passed(properties: &(impl ReadProperties + ?Sized)) -> bool {
    patience(properties) == Patience::Gone
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Properties of a reply: the request's correlation id (if it had one) and our headers.
/// `error` makes it an error reply.
pub fn reply_properties(
    correlation_id: Option<&str>,
    server: &str,
    error: Option<ErrorCode>,
) -> Properties {
    traced_reply_properties(correlation_id, server, error, None)
}

/// [`reply_properties`] with the `traceparent` (and `tracestate`) of the server's span
/// `trace`.
pub fn traced_reply_properties(
    correlation_id: Option<&str>,
    server: &str,
    error: Option<ErrorCode>,
    trace: Option<&TraceContext>,
) -> Properties {
    let mut headers = Headers::new();
    if let Some(trace) = trace {
        insert_trace(&mut headers, trace);
    }
    headers.insert(SERVER_HEADER, server);
    if let Some(code) = error {
        headers.insert(ERROR_HEADER, code.as_str());
    }
    let properties = Properties::default().with_headers(headers);
    match correlation_id {
        Some(id) => properties.with_correlation_id(id),
        None => properties,
    }
}

/// Puts the span `trace` into `headers`: its `traceparent`, and its `tracestate` if it has
/// one (else any `tracestate` there is removed, as it would belong to another context).
pub fn insert_trace(headers: &mut Headers, trace: &TraceContext) {
    headers.insert(TRACEPARENT_HEADER, trace.traceparent());
    match &trace.state {
        Some(state) => headers.insert(TRACESTATE_HEADER, state.as_str()),
        None if headers.len() > 1 => {
            headers.remove(TRACESTATE_HEADER);
        }
        None => {}
    }
}

/// The trace context a message carries in its `traceparent` and `tracestate` headers; `None`
/// when it has no valid `traceparent` (a malformed one counts as absent).
pub fn trace_context(properties: &(impl ReadProperties + ?Sized)) -> Option<TraceContext> {
    TraceContext::parse(
        header(properties, TRACEPARENT_HEADER),
        header(properties, TRACESTATE_HEADER),
    )
}

/// A string header of a message, if present.
pub fn header<'a>(properties: &'a (impl ReadProperties + ?Sized), name: &str) -> Option<&'a str> {
    properties.header_str(name)
}

/// The server's error if this reply is an error reply (it carries [`ERROR_HEADER`]):
/// [`Error::Server`] with the code and the body's first line, both made printable and bounded.
pub fn error_reply(properties: &(impl ReadProperties + ?Sized), body: &[u8]) -> Option<Error> {
    if !properties.has_header(ERROR_HEADER) {
        return None;
    }
    // Only what printable keeps is decoded: a huge body costs no huge copy.
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let body = &body[start..];
    let shown = &body[..body.len().min(4 * (MAX_PRINTABLE + 1))];
    let message = String::from_utf8_lossy(shown);
    Some(Error::Server {
        code: printable(header(properties, ERROR_HEADER).unwrap_or("unknown")),
        message: printable(message.trim()),
    })
}

/// Reads fib(n) from the body of a reply that is not an error reply: ASCII decimal digits,
/// at least one. Takes the body so that the result is its buffer, not a copy.
pub fn parse_value(body: Vec<u8>) -> Result<String, Error> {
    if !body.is_empty() && body.iter().all(u8::is_ascii_digit) {
        // ASCII digits are UTF-8: this cannot fail, and a failure would be a bad reply.
        return String::from_utf8(body).map_err(|e| Error::BadReply(e.to_string()));
    }
    let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
    Err(Error::BadReply(format!(
        "expected a decimal number, got {:?}{}",
        printable(&shown),
        if body.len() > 60 { "…" } else { "" }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply to one of our calls: the decimal result, or the server's error.
    fn parse_reply(properties: &Properties, body: &[u8]) -> Result<String, Error> {
        match error_reply(properties, body) {
            Some(err) => Err(err),
            None => parse_value(body.to_vec()),
        }
    }

    #[test]
    fn requests_round_trip() {
        for n in [0, 1, 30, u64::MAX] {
            assert_eq!(parse_request(&encode_request(n), u64::MAX), Ok(n));
        }
        assert_eq!(parse_request(b" 30\n", 100), Ok(30));
    }

    #[test]
    fn bad_requests_are_refused_with_a_code() {
        let bad = |body: &[u8]| parse_request(body, 1000).map_err(|e| e.code);
        for body in [
            &b""[..],
            b"   ",
            b"abc",
            b"-1",
            b"+1",
            b"1.5",
            b"1e3",
            b"0x10",
            b"\xff\xfe",
            b"3 0",
            b"\x00",
        ] {
            assert_eq!(bad(body), Err(ErrorCode::BadRequest), "{body:?}");
        }
        assert_eq!(bad(&[b'1'; 65]), Err(ErrorCode::BadRequest));
        assert_eq!(bad(b"1001"), Err(ErrorCode::TooLarge));
        assert_eq!(bad(b"99999999999999999999999"), Err(ErrorCode::TooLarge));
        assert_eq!(bad(b"1000"), Ok(1000));
    }

    #[test]
    fn messages_stay_on_one_line() {
        let err = parse_request(b"1\n2", 10).expect_err("refused");
        assert!(!err.message.contains('\n'), "{}", err.message);
    }

    #[test]
    fn replies() {
        let ok = reply_properties(Some("id"), "s1", None);
        assert_eq!(parse_reply(&ok, b"832040").ok().as_deref(), Some("832040"));
        assert_eq!(header(&ok, SERVER_HEADER), Some("s1"));
        assert!(matches!(parse_reply(&ok, b""), Err(Error::BadReply(_))));
        assert!(matches!(parse_reply(&ok, b"12a"), Err(Error::BadReply(_))));
        let err = reply_properties(Some("id"), "s1", Some(ErrorCode::TooLarge));
        match parse_reply(&err, b"n = 5 is above the limit 4") {
            Err(Error::Server { code, message }) => {
                assert_eq!(code, "too-large");
                assert_eq!(message, "n = 5 is above the limit 4");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn queue_names() {
        assert_eq!(parse_queue_name("rpc_queue").as_deref(), Ok("rpc_queue"));
        assert!(parse_queue_name(&"q".repeat(255)).is_ok());
        assert!(parse_queue_name(&"q".repeat(256)).is_err());
        assert!(parse_queue_name("").is_err());
        // Beyond ASCII: at most MAX_NON_ASCII_QUEUE_NAME bytes (see there).
        assert!(parse_queue_name(&"☃".repeat(53)).is_ok());
        let refused = parse_queue_name(&"☃".repeat(80)).expect_err("refused");
        assert!(refused.contains("at most 160 bytes"), "{refused}");
        assert!(refused.contains("has 240"), "{refused}");
        assert!(parse_queue_name("a\nb").is_err());
        assert!(parse_queue_name("a\rb").is_err());
        assert!(parse_queue_name("esc\u{1b}[2J\ttab").is_ok());
    }

    #[test]
    fn deadlines() {
        let live = request_properties_with_deadline("q", "id", Duration::from_secs(60));
        assert_eq!(live.expiration(), Some("60000"));
        assert!(live.timestamp().is_some());
        assert!(!deadline_passed(&live));
        let sent_long_ago = request_properties("q", "id")
            .with_timestamp(1_000)
            .with_expiration("1000");
        assert!(deadline_passed(&sent_long_ago));
        // A client whose clock is 120 s behind (or a server 120 s ahead): still served.
        let skewed = request_properties("q", "id")
            .with_timestamp(unix_millis() / 1000 - 120)
            .with_expiration("30000");
        assert!(!deadline_passed(&skewed));
        // Without both properties (tutorial clients), a request is always served.
        assert!(!deadline_passed(
            &request_properties("q", "id").with_timestamp(1_000)
        ));
        assert!(!deadline_passed(&request_properties("q", "id")));
    }

    #[test]
    fn patience_is_never_shorter_than_the_caller_waits() {
        let ms = Duration::from_millis;
        let now = unix_millis() / 1000;
        let with = |sent: Option<u64>, expiration: &str| {
            let properties = request_properties("q", "id").with_expiration(expiration);
            patience(&sent.map_or(properties.clone(), |s| properties.with_timestamp(s)))
        };
        // No expiration (tutorial clients), or one that is not a number: no deadline.
        assert_eq!(
            patience(&request_properties("q", "id")),
            Patience::Unbounded
        );
        assert_eq!(with(Some(now), "soon"), Patience::Unbounded);
        // The expiration counted from now, with or without a timestamp.
        assert_eq!(with(None, "10000"), Patience::Left(ms(10_000)));
        assert_eq!(with(Some(now), "10000"), Patience::Left(ms(10_000)));
        // Clocks apart by 5 s or 120 s either way: the whole expiration still.
        for skew in [5, 120] {
            assert_eq!(with(Some(now - skew), "10000"), Patience::Left(ms(10_000)));
            assert_eq!(with(Some(now + skew), "10000"), Patience::Left(ms(10_000)));
        }
        // Held longer than the tolerance: what is left of it.
        let tolerance = CLOCK_SKEW_TOLERANCE.as_secs();
        match with(Some(now - tolerance - 5), "10000") {
            Patience::Left(left) => assert!(left > ms(5_000) && left <= ms(6_000), "{left:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(with(Some(1_000), "10000"), Patience::Gone);
    }

    #[test]
    fn hostile_error_replies_are_made_printable_and_bounded() {
        let hostile = reply_properties(Some("id"), "s1", None).with_headers({
            let mut headers = Headers::new();
            headers.insert(ERROR_HEADER, "\x1b]0;owned\x07");
            headers
        });
        match parse_reply(&hostile, "line\nforged: yes".repeat(100_000).as_bytes()) {
            Err(Error::Server { code, message }) => {
                assert_eq!(code, "?]0;owned?");
                assert!(!message.contains('\n'));
                assert!(message.chars().count() <= MAX_PRINTABLE + 1);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn values_take_the_body() {
        assert_eq!(
            parse_value(b"832040".to_vec()).ok().as_deref(),
            Some("832040")
        );
        assert!(matches!(parse_value(Vec::new()), Err(Error::BadReply(_))));
        assert!(matches!(
            parse_value(b"\xff1".to_vec()),
            Err(Error::BadReply(_))
        ));
        let plain = Properties::default();
        assert!(error_reply(&plain, b"x").is_none());
    }

    #[test]
    fn our_requests_take_error_replies_and_others_do_not() {
        assert!(takes_error_replies(&request_properties("q", "id")));
        let deadline = request_properties_with_deadline("q", "id", Duration::from_secs(1));
        assert!(takes_error_replies(&deadline));
        // The tutorial clients' requests: reply_to and correlation_id (Go adds content_type).
        let tutorial = Properties::default()
            .with_reply_to("q")
            .with_correlation_id("id")
            .with_content_type("text/plain");
        assert!(!takes_error_replies(&tutorial));
        for other in [
            "",
            "X-RPC-ERROR-REPLIES",
            "x-rpc-error-replies ",
            "MyApp.Request",
        ] {
            let typed = tutorial.clone().with_kind(other);
            assert!(!takes_error_replies(&typed), "{other:?}");
        }
    }

    #[test]
    fn tutorial_reply_without_headers_is_a_result() {
        let plain = Properties::default().with_correlation_id("x");
        assert_eq!(parse_reply(&plain, b"55").ok().as_deref(), Some("55"));
    }
}
