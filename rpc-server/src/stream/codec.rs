//! The frames of `--protocol lines` and `--protocol json`: a request as one line for the
//! program's stdin, and the line it answers with as a reply.
//!
//! - `lines`: the request body is the line (it must be UTF-8 without LF or CR); the reply
//!   body is the next line the program writes, without its `\n`.
//! - `json`: one JSON object per line each way. In: `id`, `body` (or `body_base64` when the
//!   body is not UTF-8, or escaping it would more than double it), and when present
//!   `content_type`, `correlation_id`, `headers` (every value as a string), `traceparent` (the
//!   server's span, when the request is traced) and `tracestate`. Out: `id` (the request's) with `body` or `body_base64`,
//!   and optionally `content_type`; or `id` with `error`, a message for an error reply.

use super::Protocol;
use crate::handler::Request;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rpc_client::wire;
use serde_json::{Map, Value};
use std::io::Write;
use std::time::Duration;

/// What the program answered to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A reply body, with the `content_type` the program gave (json only).
    Body {
        body: Vec<u8>,
        content_type: Option<String>,
    },
    /// An error message (`{"id": …, "error": "…"}`): the request gets an error reply.
    Error(String),
}

/// Why a reply line is not an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Not a reply of the protocol (the program's stream is out of step).
    Protocol(String),
    /// A `json` reply to another request: what it says (made printable), and its id if that
    /// is a number (a late reply to an earlier request).
    OtherId(String, Option<u64>),
    /// The body is over the reply limit (its size).
    TooLarge(usize),
}

/// Longest a reply line may be for a reply body of `max_reply_bytes`: the body and its `\n`
/// for `lines`; for `json`, room for escapes and base64 (twice the body, plus 64 KiB).
pub(crate) fn line_limit(protocol: Protocol, max_reply_bytes: usize) -> usize {
    match protocol {
        Protocol::Json => max_reply_bytes.saturating_mul(2).saturating_add(64 * 1024),
        _ => max_reply_bytes.saturating_add(1),
    }
}

/// The line (with its `\n`) that carries `request` as request `id`, which the program has
/// `timeout` for (`json` gives it as `timeout_ms`), or why the request cannot go to the
/// program (a `bad-request` message).
pub(crate) fn encode(
    protocol: Protocol,
    id: u64,
    request: &Request<'_>,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    match protocol {
        Protocol::Json => Ok(encode_json(id, request, timeout)),
        _ => {
            let Ok(text) = std::str::from_utf8(request.body) else {
                return Err(
                    "the body is not UTF-8, which --protocol lines cannot pass on \
                            (--protocol json can)"
                        .into(),
                );
            };
            // A CR ends a line too for many readers (Node's readline, Python's text stdin).
            if text.contains(['\n', '\r']) {
                return Err(
                    "the body holds a line break (LF or CR), which --protocol lines cannot \
                            pass on (--protocol json can)"
                        .into(),
                );
            }
            let mut line = Vec::with_capacity(text.len() + 1);
            line.extend_from_slice(text.as_bytes());
            line.push(b'\n');
            Ok(line)
        }
    }
}

/// The `json` frame of request `id`, written straight into one buffer sized for it: no
/// intermediate JSON tree or copy of the body. A UTF-8 body goes as `body` unless escaping it
/// would take more than twice its size (a body mostly of control characters, each written
/// `\u00XX`): then, as a body that is not UTF-8, as `body_base64` (4/3 of its size). The frame
/// is thus at most about twice the body, plus the properties.
fn encode_json(id: u64, request: &Request<'_>, timeout: Duration) -> Vec<u8> {
    let body = request.body;
    let (text, size) = match std::str::from_utf8(body) {
        Ok(text) => match escaped_len(text) {
            escaped if escaped <= body.len().saturating_mul(2) => (Some(text), escaped),
            _ => (None, body.len().div_ceil(3) * 4),
        },
        Err(_) => (None, body.len().div_ceil(3) * 4),
    };
    let properties = request.properties;
    // The body's room, and room for the rest in the usual case.
    let mut line = Vec::with_capacity(size.saturating_add(256));
    // Writing to a Vec cannot fail.
    let _ = write!(
        line,
        "{{\"id\":\"{id}\",\"timeout_ms\":{}",
        crate::child::millis(timeout)
    );
    match text {
        Some(text) => field(&mut line, "body", text),
        None => {
            line.extend_from_slice(b",\"body_base64\":\"");
            push_base64(&mut line, body);
            line.push(b'"');
        }
    }
    if let Some(content_type) = properties.content_type() {
        field(&mut line, "content_type", content_type);
    }
    if let Some(id) = properties.correlation_id() {
        field(&mut line, "correlation_id", id);
    }
    if let Some(headers) = properties.header_entries() {
        line.extend_from_slice(b",\"headers\":{");
        for (index, (name, value)) in headers.enumerate() {
            if index > 0 {
                line.push(b',');
            }
            string(&mut line, name);
            line.push(b':');
            string(&mut line, &wire::header_text(&value));
        }
        line.push(b'}');
    }
    if let Some(trace) = request.trace {
        field(&mut line, "traceparent", &trace.traceparent());
        if let Some(state) = &trace.state {
            field(&mut line, "tracestate", state);
        }
    }
    line.extend_from_slice(b"}\n");
    line
}

/// Appends `bytes` in base64 (standard alphabet, padded) to `line`.
fn push_base64(line: &mut Vec<u8>, bytes: &[u8]) {
    let start = line.len();
    let size = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    line.resize(start + size, 0);
    // The room is exactly the encoded length: this cannot fail.
    let written = STANDARD
        .encode_slice(bytes, &mut line[start..])
        .unwrap_or(0);
    line.truncate(start + written);
}

/// Appends `,"name":` and `value` as a JSON string.
fn field(line: &mut Vec<u8>, name: &str, value: &str) {
    line.extend_from_slice(b",\"");
    line.extend_from_slice(name.as_bytes());
    line.extend_from_slice(b"\":");
    string(line, value);
}

/// Appends `value` as a JSON string (quoted and escaped, as serde_json does).
fn string(line: &mut Vec<u8>, value: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(line, value);
}

/// The length of `text` escaped in a JSON string, without its quotes.
fn escaped_len(text: &str) -> usize {
    text.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\x08' | b'\x0c' | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// The answer in `line` (without its `\n`) to request `id`. The body is taken without a copy
/// where it can be: the line itself (`lines`), the parsed string (`json`); `line` is freed
/// before a `body_base64` is decoded.
pub(crate) fn decode(
    protocol: Protocol,
    id: u64,
    line: Vec<u8>,
    max_reply_bytes: usize,
) -> Result<Answer, Bad> {
    if protocol != Protocol::Json {
        if line.len() > max_reply_bytes {
            return Err(Bad::TooLarge(line.len()));
        }
        return Ok(Answer::Body {
            body: line,
            content_type: None,
        });
    }
    let value: Value = serde_json::from_slice(&line)
        .map_err(|err| Bad::Protocol(format!("a reply line that is not JSON ({err})")))?;
    drop(line);
    let Value::Object(mut object) = value else {
        return Err(Bad::Protocol(
            "a reply line that is not a JSON object".into(),
        ));
    };
    let expected = id.to_string();
    match text(&object, "id")? {
        Some(got) if got == expected => {}
        Some(got) => {
            return Err(Bad::OtherId(
                format!(
                    "a reply with id \"{}\" to request \"{expected}\"",
                    wire::printable(got)
                ),
                got.parse().ok(),
            ))
        }
        None => return Err(Bad::Protocol("a reply without an \"id\"".into())),
    }
    if let Some(message) = text(&object, "error")? {
        return Ok(Answer::Error(message.to_string()));
    }
    let content_type = text(&object, "content_type")?.map(str::to_string);
    let body = match (
        take(&mut object, "body")?,
        take(&mut object, "body_base64")?,
    ) {
        (Some(body), None) => body.into_bytes(),
        // Canonical base64 only (padded, no stray bits: `Zh==` is refused).
        (None, Some(encoded)) => STANDARD.decode(encoded).map_err(|err| {
            Bad::Protocol(format!(
                "a reply whose \"body_base64\" is not base64 ({err})"
            ))
        })?,
        (Some(_), Some(_)) => {
            return Err(Bad::Protocol(
                "a reply with both \"body\" and \"body_base64\"".into(),
            ))
        }
        (None, None) => {
            return Err(Bad::Protocol(
                "a reply with neither \"body\", \"body_base64\" nor \"error\"".into(),
            ))
        }
    };
    if body.len() > max_reply_bytes {
        return Err(Bad::TooLarge(body.len()));
    }
    Ok(Answer::Body { body, content_type })
}

/// The string `name` of a reply (absent or null: `None`).
fn text<'a>(object: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, Bad> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(not_a_string(name)),
    }
}

/// The string `name` of a reply, taken out of it.
fn take(object: &mut Map<String, Value>, name: &str) -> Result<Option<String>, Bad> {
    match object.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(not_a_string(name)),
    }
}

fn not_a_string(name: &str) -> Bad {
    Bad::Protocol(format!("a reply whose \"{name}\" is not a string"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpc_client::TraceContext;
    use rpc_client::{HeaderValue, Headers, Properties};

    fn request<'a>(
        body: &'a [u8],
        properties: &'a Properties,
        trace: &'a TraceContext,
    ) -> Request<'a> {
        Request {
            body,
            properties,
            trace: Some(trace),
            deadline: None,
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn lines_refuses_newlines_and_non_utf8() {
        let (properties, trace) = (Properties::default(), TraceContext::new_trace());
        let line = encode(
            Protocol::Lines,
            1,
            &request(b"hi", &properties, &trace),
            SECOND,
        );
        assert_eq!(line.as_deref(), Ok(&b"hi\n"[..]));
        for body in [&b"a\nb"[..], b"a\rb", b"\xff"] {
            let refused = encode(
                Protocol::Lines,
                1,
                &request(body, &properties, &trace),
                SECOND,
            );
            assert!(refused.is_err(), "{body:?}");
        }
        let answer = decode(Protocol::Lines, 1, b"HI".to_vec(), 2);
        assert_eq!(
            answer,
            Ok(Answer::Body {
                body: b"HI".to_vec(),
                content_type: None
            })
        );
        assert_eq!(
            decode(Protocol::Lines, 1, b"HIS".to_vec(), 2),
            Err(Bad::TooLarge(3))
        );
    }

    #[test]
    fn json_requests_carry_the_properties() {
        let mut headers = Headers::new();
        headers.insert("lang", "en");
        headers.insert("n", HeaderValue::I32(7));
        let properties = Properties::default()
            .with_correlation_id("c-1")
            .with_content_type("text/plain")
            .with_headers(headers);
        let trace = TraceContext::new_trace();
        for (body, field, expected) in [
            (&b"h\xc3\xa9\n"[..], "body", "hé\n"),
            (&b"\xff\x00"[..], "body_base64", "/wA="),
        ] {
            let line = encode(
                Protocol::Json,
                42,
                &request(body, &properties, &trace),
                SECOND,
            );
            let line = line.expect("json takes any body");
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            let value: Value = serde_json::from_slice(&line).expect("JSON");
            assert_eq!(value["id"], "42");
            assert_eq!(value["timeout_ms"], 1000);
            assert_eq!(value[field], expected);
            assert_eq!(value["correlation_id"], "c-1");
            assert_eq!(value["content_type"], "text/plain");
            assert_eq!(value["headers"]["lang"], "en");
            assert_eq!(value["headers"]["n"], "7");
            assert_eq!(value["traceparent"], trace.traceparent().as_str());
        }
    }

    #[test]
    fn json_bodies_go_as_text_unless_escaping_would_more_than_double_them() {
        let (properties, trace) = (Properties::default(), TraceContext::new_trace());
        let frame = |body: &[u8]| {
            let line = encode(
                Protocol::Json,
                7,
                &request(body, &properties, &trace),
                SECOND,
            );
            let line = line.expect("json takes any body");
            assert_eq!(line.last(), Some(&b'\n'));
            let value: Value = serde_json::from_slice(&line).expect("JSON");
            (line.len(), value)
        };
        // Quotes, backslashes and newlines (two bytes each) stay text, as any UTF-8 text does.
        let text = "say \"hi\"\\\n\t\u{1}é\u{7f}".repeat(100);
        let (_, value) = frame(text.as_bytes());
        assert_eq!(value["body"], text.as_str());
        assert!(value.get("body_base64").is_none());
        // Control characters (six bytes each escaped): base64, 4/3 of the body.
        let control = vec![1u8; 3000];
        let (size, value) = frame(&control);
        assert!(value.get("body").is_none());
        let decoded = STANDARD.decode(value["body_base64"].as_str().unwrap_or(""));
        assert_eq!(decoded.ok(), Some(control));
        assert!(size < 4000 + 200, "{size}");
    }

    #[test]
    fn json_replies_are_checked() {
        let ok = |body: &str| Answer::Body {
            body: body.as_bytes().to_vec(),
            content_type: None,
        };
        let decode = |line: &str| decode(Protocol::Json, 3, line.as_bytes().to_vec(), 10);
        assert_eq!(decode(r#"{"id":"3","body":"hi"}"#), Ok(ok("hi")));
        assert_eq!(decode(r#"{"id":"3","body_base64":"aGk="}"#), Ok(ok("hi")));
        assert_eq!(
            decode(r#"{"id":"3","body":"{}","content_type":"application/json"}"#),
            Ok(Answer::Body {
                body: b"{}".to_vec(),
                content_type: Some("application/json".into())
            })
        );
        assert_eq!(
            decode(r#"{"id":"3","error":"no"}"#),
            Ok(Answer::Error("no".into()))
        );
        assert_eq!(
            decode(r#"{"id":"3","body":"01234567890"}"#),
            Err(Bad::TooLarge(11))
        );
        for bad in [
            "garbage",
            "[1]",
            r#"{"id":3,"body":"hi"}"#,
            r#"{"body":"hi"}"#,
            r#"{"id":"3"}"#,
            r#"{"id":"3","body":"a","body_base64":"YQ=="}"#,
            r#"{"id":"3","body_base64":"a"}"#,
            // Not canonical: stray bits in the last character, missing or extra padding.
            r#"{"id":"3","body_base64":"Zh=="}"#,
            r#"{"id":"3","body_base64":"Zm9=" }"#,
            r#"{"id":"3","body_base64":"Zg"}"#,
            r#"{"id":"3","body_base64":"Zg="}"#,
            r#"{"id":"3","body_base64":"Zg==Zg=="}"#,
            r#"{"id":"3","body_base64":"Zm9v!A=="}"#,
        ] {
            assert!(matches!(decode(bad), Err(Bad::Protocol(_))), "{bad}");
        }
        // Another request's reply: its id, where it is a number.
        assert!(matches!(
            decode(r#"{"id":"2","body":"hi"}"#),
            Err(Bad::OtherId(_, Some(2)))
        ));
        assert!(matches!(
            decode(r#"{"id":"x","body":"hi"}"#),
            Err(Bad::OtherId(_, None))
        ));
    }
}
