//! The frames of `--protocol lines` and `--protocol json`: a request as one line for the
//! program's stdin, and the line it answers with as a reply.
//!
//! - `lines`: the request body is the line (it must be UTF-8 without LF or CR); the reply
//!   body is the next line the program writes, without its `\n`.
//! - `json`: one JSON object per line each way. In: `id`, `body` (or `body_base64` when the
//!   body is not UTF-8), and when present `content_type`, `correlation_id`, `headers` (every
//!   value as a string), `traceparent` (the server's span) and `tracestate`. Out: `id` (the
//!   request's) with `body` or `body_base64`, and optionally `content_type`; or `id` with
//!   `error`, a message for an error reply.

use super::Protocol;
use crate::handler::Request;
use rpc_client::wire;
use serde_json::{Map, Value};

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

/// The line (with its `\n`) that carries `request` as request `id`, or why the request
/// cannot go to the program (a `bad-request` message).
pub(crate) fn encode(
    protocol: Protocol,
    id: u64,
    request: &Request<'_>,
) -> Result<Vec<u8>, String> {
    match protocol {
        Protocol::Json => Ok(encode_json(id, request)),
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

fn encode_json(id: u64, request: &Request<'_>) -> Vec<u8> {
    let mut object = Map::new();
    object.insert("id".into(), Value::String(id.to_string()));
    match std::str::from_utf8(request.body) {
        Ok(text) => object.insert("body".into(), Value::String(text.into())),
        Err(_) => object.insert(
            "body_base64".into(),
            Value::String(rpc_client::base64::encode(request.body)),
        ),
    };
    let properties = request.properties;
    if let Some(content_type) = properties.content_type() {
        object.insert("content_type".into(), Value::String(content_type.clone()));
    }
    if let Some(id) = properties.correlation_id() {
        object.insert("correlation_id".into(), Value::String(id.clone()));
    }
    if let Some(headers) = properties.headers() {
        let headers = headers
            .iter()
            .map(|(name, value)| (name.clone(), Value::String(wire::header_text(value))))
            .collect();
        object.insert("headers".into(), Value::Object(headers));
    }
    object.insert(
        "traceparent".into(),
        Value::String(request.trace.traceparent()),
    );
    if let Some(state) = &request.trace.state {
        object.insert("tracestate".into(), Value::String(state.clone()));
    }
    let mut line = Value::Object(object).to_string().into_bytes();
    line.push(b'\n');
    line
}

/// The answer in `line` (without its `\n`) to request `id`.
pub(crate) fn decode(
    protocol: Protocol,
    id: u64,
    line: &[u8],
    max_reply_bytes: usize,
) -> Result<Answer, Bad> {
    if protocol != Protocol::Json {
        if line.len() > max_reply_bytes {
            return Err(Bad::TooLarge(line.len()));
        }
        return Ok(Answer::Body {
            body: line.to_vec(),
            content_type: None,
        });
    }
    let value: Value = serde_json::from_slice(line)
        .map_err(|err| Bad::Protocol(format!("a reply line that is not JSON ({err})")))?;
    let Value::Object(object) = value else {
        return Err(Bad::Protocol(
            "a reply line that is not a JSON object".into(),
        ));
    };
    let text = |name: &str| -> Result<Option<&str>, Bad> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(Bad::Protocol(format!(
                "a reply whose \"{name}\" is not a string"
            ))),
        }
    };
    let expected = id.to_string();
    match text("id")? {
        Some(got) if got == expected => {}
        Some(got) => {
            return Err(Bad::Protocol(format!(
                "a reply with id \"{}\" to request \"{expected}\"",
                wire::printable(got)
            )))
        }
        None => return Err(Bad::Protocol("a reply without an \"id\"".into())),
    }
    if let Some(message) = text("error")? {
        return Ok(Answer::Error(message.to_string()));
    }
    let body = match (text("body")?, text("body_base64")?) {
        (Some(body), None) => body.as_bytes().to_vec(),
        (None, Some(encoded)) => rpc_client::base64::decode(encoded)
            .ok_or_else(|| Bad::Protocol("a reply whose \"body_base64\" is not base64".into()))?,
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
    Ok(Answer::Body {
        body,
        content_type: text("content_type")?.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amiquip::{AmqpProperties, AmqpValue, FieldTable};
    use rpc_client::TraceContext;

    fn request<'a>(
        body: &'a [u8],
        properties: &'a AmqpProperties,
        trace: &'a TraceContext,
    ) -> Request<'a> {
        Request {
            body,
            properties,
            trace,
        }
    }

    #[test]
    fn lines_refuses_newlines_and_non_utf8() {
        let (properties, trace) = (AmqpProperties::default(), TraceContext::new_trace());
        let line = encode(Protocol::Lines, 1, &request(b"hi", &properties, &trace));
        assert_eq!(line.as_deref(), Ok(&b"hi\n"[..]));
        for body in [&b"a\nb"[..], b"a\rb", b"\xff"] {
            let refused = encode(Protocol::Lines, 1, &request(body, &properties, &trace));
            assert!(refused.is_err(), "{body:?}");
        }
        let answer = decode(Protocol::Lines, 1, b"HI", 2);
        assert_eq!(
            answer,
            Ok(Answer::Body {
                body: b"HI".to_vec(),
                content_type: None
            })
        );
        assert_eq!(decode(Protocol::Lines, 1, b"HIS", 2), Err(Bad::TooLarge(3)));
    }

    #[test]
    fn json_requests_carry_the_properties() {
        let mut headers = FieldTable::new();
        headers.insert("lang".into(), AmqpValue::LongString("en".into()));
        headers.insert("n".into(), AmqpValue::LongInt(7));
        let properties = AmqpProperties::default()
            .with_correlation_id("c-1".into())
            .with_content_type("text/plain".into())
            .with_headers(headers);
        let trace = TraceContext::new_trace();
        for (body, field, expected) in [
            (&b"h\xc3\xa9\n"[..], "body", "hé\n"),
            (&b"\xff\x00"[..], "body_base64", "/wA="),
        ] {
            let line = encode(Protocol::Json, 42, &request(body, &properties, &trace));
            let line = line.expect("json takes any body");
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
            let value: Value = serde_json::from_slice(&line).expect("JSON");
            assert_eq!(value["id"], "42");
            assert_eq!(value[field], expected);
            assert_eq!(value["correlation_id"], "c-1");
            assert_eq!(value["content_type"], "text/plain");
            assert_eq!(value["headers"]["lang"], "en");
            assert_eq!(value["headers"]["n"], "7");
            assert_eq!(value["traceparent"], trace.traceparent().as_str());
        }
    }

    #[test]
    fn json_replies_are_checked() {
        let ok = |body: &str| Answer::Body {
            body: body.as_bytes().to_vec(),
            content_type: None,
        };
        let decode = |line: &str| decode(Protocol::Json, 3, line.as_bytes(), 10);
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
            r#"{"id":"2","body":"hi"}"#,
            r#"{"id":3,"body":"hi"}"#,
            r#"{"body":"hi"}"#,
            r#"{"id":"3"}"#,
            r#"{"id":"3","body":"a","body_base64":"YQ=="}"#,
            r#"{"id":"3","body_base64":"a"}"#,
        ] {
            assert!(matches!(decode(bad), Err(Bad::Protocol(_))), "{bad}");
        }
    }
}
