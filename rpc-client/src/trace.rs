//! W3C trace context (<https://www.w3.org/TR/trace-context/>) in the `traceparent` and
//! `tracestate` message headers, as OpenTelemetry's AMQP instrumentations (pika, amqplib,
//! the Java and .NET clients) carry it.
//!
//! A [`TraceContext`] is one span's place in a trace: the trace id, the span id, the flags
//! and the vendors' `tracestate`. Trace context is paid for only when tracing is in use, as
//! in OpenTelemetry without a configured SDK: the client sends a child of its parent context
//! when it has one (`TRACEPARENT`, or one the caller gives), a new trace only when asked to
//! start traces, and otherwise no `traceparent` at all. The server reads the request's
//! context ([`TraceContext::parse`]: a malformed one counts as absent) and, when there is one,
//! makes its own span a child of it and puts that span's `traceparent` on the reply; a request
//! without one gets no trace unless the server is told to start them
//! ([`TraceContext::span_of`]). Ids come from `crate::amqp` (`random_u64`): not for
//! cryptography, as W3C asks of ids only that they be unlikely to collide.

use crate::amqp::random_u64;
use std::fmt;

/// Header carrying the trace context: `00-<trace id>-<parent id>-<flags>`.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// Header carrying the vendors' trace state, passed on as received when valid.
pub const TRACESTATE_HEADER: &str = "tracestate";
/// Environment variable of a parent context, under the name OpenTelemetry uses for processes.
pub(crate) const ENV_TRACEPARENT: &str = "TRACEPARENT";
/// Environment variable of the parent's trace state.
pub(crate) const ENV_TRACESTATE: &str = "TRACESTATE";

/// Length of a version-00 `traceparent`.
pub(crate) const TRACEPARENT_LEN: usize = 55;
/// Longest `tracestate` passed on (W3C: at most 32 entries; 512 bytes is what a vendor may
/// count on being propagated).
pub(crate) const MAX_TRACESTATE: usize = 512;

/// The `sampled` flag.
const SAMPLED: u8 = 0x01;

/// A 128-bit trace id, shown as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 32];
        hex(&mut buf[..16], (self.0 >> 64) as u64);
        hex(&mut buf[16..], self.0 as u64);
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&buf).unwrap_or("?"))
    }
}

/// One span's context: trace id, span id, flags and trace state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace this span belongs to (never 0).
    pub trace_id: TraceId,
    /// This span's id (never 0): the parent id of its children.
    pub span_id: u64,
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
    /// The `tracestate`, when there is a valid one.
    pub state: Option<String>,
}

impl TraceContext {
    /// The root span of a new trace, sampled (whoever starts a trace decides that it is
    /// recorded; an OpenTelemetry peer with its default parent-based sampler records its own
    /// spans of it).
    pub fn new_trace() -> TraceContext {
        let mut trace_id = (u128::from(random_u64()) << 64) | u128::from(random_u64());
        if trace_id == 0 {
            trace_id = 1;
        }
        TraceContext {
            trace_id: TraceId(trace_id),
            span_id: new_span_id(),
            flags: SAMPLED,
            state: None,
        }
    }

    /// A child span: same trace, flags and state, a new span id.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            span_id: new_span_id(),
            flags: self.flags,
            state: self.state.clone(),
        }
    }

    /// The span of one call or request: a child of `parent`; without a parent, the root of
    /// a new trace if `start`, else none (nothing is generated, and no trace context sent).
    pub fn span_of(parent: Option<&TraceContext>, start: bool) -> Option<TraceContext> {
        match parent {
            Some(parent) => Some(parent.child()),
            None if start => Some(TraceContext::new_trace()),
            None => None,
        }
    }

    /// Reads a `traceparent` value and, if it is valid, a `tracestate` value. `None` when the
    /// `traceparent` is absent or malformed (it then counts as absent, as W3C says); an
    /// invalid `tracestate` is dropped alone.
    ///
    /// Version 00 is exactly 55 characters; a later version (not ff) is read by the version
    /// 00 rules from its first 55 characters, followed by nothing or a `-`. Hex is lowercase;
    /// all-zero trace or parent ids are invalid.
    pub fn parse(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<TraceContext> {
        let bytes = traceparent?.as_bytes();
        if bytes.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = parse_hex(&bytes[0..2])?;
        match version {
            0 if bytes.len() != TRACEPARENT_LEN => return None,
            0xff => return None,
            _ if bytes.len() > TRACEPARENT_LEN && bytes[TRACEPARENT_LEN] != b'-' => return None,
            _ => {}
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let trace_high = parse_hex(&bytes[3..19])?;
        let trace_low = parse_hex(&bytes[19..35])?;
        let trace_id = (u128::from(trace_high) << 64) | u128::from(trace_low);
        let span_id = parse_hex(&bytes[36..52])?;
        let flags = parse_hex(&bytes[53..55])? as u8;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(TraceContext {
            trace_id: TraceId(trace_id),
            span_id,
            flags,
            state: tracestate
                .filter(|s| valid_tracestate(s))
                .map(str::to_string),
        })
    }

    /// The parent context in `TRACEPARENT` / `TRACESTATE` of this process's environment, if
    /// `TRACEPARENT` is set and valid (a warning is logged, without the value, when it is set
    /// but malformed: calls then start new traces).
    pub fn from_env() -> Option<TraceContext> {
        let parent = std::env::var(ENV_TRACEPARENT).ok();
        let state = std::env::var(ENV_TRACESTATE).ok();
        let context = TraceContext::parse(parent.as_deref(), state.as_deref());
        if context.is_none() && parent.is_some() {
            log::warn!(
                "{ENV_TRACEPARENT} is not a valid W3C traceparent (00-<32 hex>-<16 hex>-<2 \
                 hex>, lowercase); each call starts a new trace"
            );
        }
        context
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// This span as a version-00 `traceparent` value (55 characters).
    pub fn traceparent(&self) -> String {
        let mut buf = [0u8; TRACEPARENT_LEN];
        buf[0] = b'0';
        buf[1] = b'0';
        buf[2] = b'-';
        hex(&mut buf[3..19], (self.trace_id.0 >> 64) as u64);
        hex(&mut buf[19..35], self.trace_id.0 as u64);
        buf[35] = b'-';
        hex(&mut buf[36..52], self.span_id);
        buf[52] = b'-';
        hex(&mut buf[53..55], u64::from(self.flags));
        // Hex digits and dashes are ASCII: this cannot fail.
        String::from_utf8(buf.to_vec()).unwrap_or_default()
    }
}

/// A new span id (never 0).
fn new_span_id() -> u64 {
    random_u64().max(1)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes the low `4 * out.len()` bits of `value` into `out` as lowercase hex.
fn hex(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = HEX[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// Lowercase hex digits (at most 16) as a number; `None` for anything else.
fn parse_hex(digits: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for &digit in digits {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        value = (value << 4) | u64::from(nibble);
    }
    Some(value)
}

/// A `tracestate` we pass on: not empty, at most [`MAX_TRACESTATE`] bytes of printable ASCII
/// (W3C's keys and values are within it), at most 32 entries.
fn valid_tracestate(state: &str) -> bool {
    !state.trim().is_empty()
        && state.len() <= MAX_TRACESTATE
        && state.bytes().all(|b| (0x20..=0x7e).contains(&b))
        && state.split(',').count() <= 32
        && state.split(',').all(|member| {
            let member = member.trim();
            member.is_empty() || member.split_once('=').is_some_and(|(k, _)| !k.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const W3C_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn round_trip() {
        let ctx = TraceContext::parse(Some(W3C_EXAMPLE), Some("congo=t61rcWkgMzE")).expect("valid");
        assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id, 0x00f0_67aa_0ba9_02b7);
        assert!(ctx.sampled());
        assert_eq!(ctx.state.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(ctx.traceparent(), W3C_EXAMPLE);
        let child = ctx.child();
        assert_eq!(child.trace_id, ctx.trace_id);
        assert_ne!(child.span_id, ctx.span_id);
        assert_eq!(child.state, ctx.state);
        assert_eq!(&child.traceparent()[..36], &W3C_EXAMPLE[..36]);
    }

    #[test]
    fn new_traces_are_valid_and_distinct() {
        let a = TraceContext::new_trace();
        let b = TraceContext::new_trace();
        assert_ne!(a.trace_id, b.trace_id);
        assert!(a.sampled());
        let parsed = TraceContext::parse(Some(&a.traceparent()), None).expect("valid");
        assert_eq!(parsed, a);
        let child = TraceContext::span_of(Some(&a), false).expect("a child");
        assert_eq!(child.trace_id, a.trace_id);
        assert_ne!(child.span_id, a.span_id);
        let started = TraceContext::span_of(None, true).expect("a new trace");
        assert_ne!(started.trace_id, a.trace_id);
        assert_eq!(
            TraceContext::span_of(None, false),
            None,
            "no parent, not started: none"
        );
    }

    #[test]
    fn malformed_ones_count_as_absent() {
        let bad = [
            "",
            "00",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473\u{e9}-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n\x1b[2J",
        ];
        for value in bad {
            assert_eq!(TraceContext::parse(Some(value), None), None, "{value:?}");
        }
        assert_eq!(TraceContext::parse(None, Some("a=b")), None);
        // A later version: its first 55 characters, then nothing or a dash.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(TraceContext::parse(Some(later), None).is_some());
        assert!(TraceContext::parse(Some(&later[..55]), None).is_some());
        assert!(TraceContext::parse(Some(&later[..57].replace("-e", "xe")), None).is_none());
    }

    #[test]
    fn bad_tracestate_is_dropped_alone() {
        for state in ["", " ", "a=b\n", "=b", &"k=v,".repeat(200), "\u{e9}=1"] {
            let ctx = TraceContext::parse(Some(W3C_EXAMPLE), Some(state)).expect("valid parent");
            assert_eq!(ctx.state, None, "{state:?}");
        }
        let ctx = TraceContext::parse(Some(W3C_EXAMPLE), Some("a=1, b=2")).expect("valid");
        assert_eq!(ctx.state.as_deref(), Some("a=1, b=2"));
    }
}
