//! What `rpc-client` prints on stdout: outcomes in argument order, as they become available
//! ([`in_order`]): fib(n) values ([`print_in_order`]), or reply bodies and JSON lines
//! ([`print_replies_in_order`]).

use super::json;
use crate::error::Error;
use crate::request::{RpcReply, RpcRequest};
use crate::wire;
use crate::FibonacciRpcClient;
use crate::RpcClient;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::io::{self, Write};
use std::ops::ControlFlow;

/// Runs a batch of `count` calls and writes each outcome to `out` with `write`, in argument
/// order, as soon as it and every outcome before it are known.
///
/// `run` makes the calls, passing each outcome to the callback it is given (any order,
/// `index` from 0; the callback's `Break` asks it to stop). Stops at the first failure in
/// argument order, after writing everything before it, and returns that failure. A reader
/// that closed the pipe (`| head`) ends the calls without an error.
pub(super) fn in_order<T>(
    count: usize,
    out: &mut dyn Write,
    mut write: impl FnMut(&mut dyn Write, T) -> io::Result<()>,
    run: impl FnOnce(&mut dyn FnMut(usize, Result<T, Error>) -> ControlFlow<()>) -> Result<(), Error>,
) -> Result<(), PrintError> {
    let mut results: Vec<Option<Result<T, Error>>> = Vec::new();
    results.resize_with(count, || None);
    let mut next = 0;
    let mut failure: Option<PrintError> = None;
    run(&mut |index, result| {
        if let Some(slot) = results.get_mut(index) {
            *slot = Some(result);
        }
        while let Some(done) = results.get_mut(next).and_then(Option::take) {
            next += 1;
            let written = match done {
                Ok(value) => write(&mut *out, value),
                Err(err) => {
                    failure = Some(PrintError::Call(err));
                    return ControlFlow::Break(());
                }
            };
            if let Err(err) = written {
                // A closed pipe ends the output without a failure; no more calls are made.
                if err.kind() != io::ErrorKind::BrokenPipe {
                    failure = Some(PrintError::Write(err));
                }
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    ignore_broken_pipe(out.flush()).map_err(PrintError::Write)
}

/// Calls fib(n) for every n of `numbers` with up to `in_flight` calls outstanding, writing
/// each result to `out` on its own line in argument order (see [`in_order`]).
pub(super) fn print_in_order(
    client: &mut FibonacciRpcClient,
    numbers: &[u64],
    in_flight: usize,
    out: &mut dyn Write,
) -> Result<(), PrintError> {
    in_order(
        numbers.len(),
        out,
        |out, value: String| writeln!(out, "{value}"),
        |on_reply| {
            client.call_many(numbers.iter().copied(), in_flight, |index, _, result| {
                on_reply(index, result.map(|reply| reply.value))
            })
        },
    )
}

/// How [`print_replies_in_order`] writes a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReplyFormat {
    /// The body as received, then a newline unless the body ends with one ([`write_body`]).
    /// An error reply stops the batch.
    Body,
    /// One JSON object per line ([`write_json`]). Error replies are written as objects too and
    /// the batch goes on; the first one is returned as the failure once all are written.
    Json,
}

/// Sends every request of `requests` with up to `in_flight` outstanding, writing each reply
/// to `out` in `format`, in argument order (see [`in_order`]).
pub(super) fn print_replies_in_order(
    client: &mut RpcClient,
    requests: &[RpcRequest],
    in_flight: usize,
    format: ReplyFormat,
    out: &mut dyn Write,
) -> Result<(), PrintError> {
    match format {
        ReplyFormat::Body => in_order(
            requests.len(),
            out,
            |out, reply: RpcReply| write_body(out, &reply.body),
            |on_reply| client.call_many(requests, in_flight, on_reply),
        ),
        ReplyFormat::Json => {
            let mut first_error_reply = None;
            in_order(
                requests.len(),
                out,
                |out, reply: RpcReply| {
                    let error = reply.error();
                    write_json(out, &reply, error.as_ref())?;
                    if first_error_reply.is_none() {
                        first_error_reply = error;
                    }
                    Ok(())
                },
                |on_reply| client.call_many_raw(requests, in_flight, on_reply),
            )?;
            first_error_reply.map_or(Ok(()), |err| Err(PrintError::Call(err)))
        }
    }
}

/// Writes a reply body as received (it is the user's data: not made printable), then a
/// newline unless it ends with one, so that every reply ends a line and `hello` or `hello\n`
/// both print as one line.
pub(super) fn write_body(out: &mut dyn Write, body: &[u8]) -> io::Result<()> {
    out.write_all(body)?;
    if body.last() != Some(&b'\n') {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Writes `reply` as one line of JSON:
/// `{"body": …, "encoding": "utf-8"|"base64", "content_type": …|null, "headers": {…},
/// "server": …|null, "trace_id": "<32 hex digits>", "elapsed_ms": 1.234}`, the body as a
/// string if it is UTF-8, in base64 otherwise, header values as text ([`wire::header_text`]),
/// `trace_id` only when the call was traced. With `error` (the reply's [`Error::Server`]):
/// `{"error": {"code": …, "message": …}, "server": …, "trace_id": …, "elapsed_ms": …}`.
pub(super) fn write_json(
    out: &mut dyn Write,
    reply: &RpcReply,
    error: Option<&Error>,
) -> io::Result<()> {
    let mut line = String::with_capacity(reply.body.len() + 128);
    line.push('{');
    if let Some(error) = error {
        let (code, message) = match error {
            Error::Server { code, message } => (code.clone(), message.clone()),
            other => (String::from("unknown"), other.to_string()),
        };
        line.push_str("\"error\": {\"code\": ");
        json::push_string(&mut line, &code);
        line.push_str(", \"message\": ");
        json::push_string(&mut line, &message);
        line.push('}');
    } else {
        line.push_str("\"body\": ");
        match std::str::from_utf8(&reply.body) {
            Ok(text) => {
                json::push_string(&mut line, text);
                line.push_str(", \"encoding\": \"utf-8\"");
            }
            Err(_) => {
                line.push('"');
                STANDARD.encode_string(&reply.body, &mut line);
                line.push_str("\", \"encoding\": \"base64\"");
            }
        }
        line.push_str(", \"content_type\": ");
        push_optional(&mut line, reply.content_type());
        line.push_str(", \"headers\": {");
        for (i, (name, value)) in reply.headers().iter().enumerate() {
            if i > 0 {
                line.push_str(", ");
            }
            json::push_string(&mut line, name);
            line.push_str(": ");
            json::push_string(&mut line, &wire::header_text(&value));
        }
        line.push('}');
    }
    line.push_str(", \"server\": ");
    push_optional(&mut line, reply.server.as_deref());
    if let Some(trace) = &reply.trace {
        line.push_str(&format!(", \"trace_id\": \"{}\"", trace.trace_id));
    }
    line.push_str(&format!(
        ", \"elapsed_ms\": {:.3}}}\n",
        reply.elapsed.as_secs_f64() * 1e3
    ));
    out.write_all(line.as_bytes())
}

/// A JSON string, or `null`.
fn push_optional(line: &mut String, text: Option<&str>) {
    match text {
        Some(text) => json::push_string(line, text),
        None => line.push_str("null"),
    }
}

/// `Ok` for a write that failed only because the reader closed the pipe (`| head`): that is the
/// reader's choice, not our failure.
pub(super) fn ignore_broken_pipe(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Why [`in_order`] stopped early.
#[derive(Debug)]
pub(super) enum PrintError {
    /// A call failed (or the connection was lost).
    Call(Error),
    /// Writing the output failed.
    Write(io::Error),
}

impl From<Error> for PrintError {
    fn from(err: Error) -> Self {
        PrintError::Call(err)
    }
}

impl std::fmt::Display for PrintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrintError::Call(err) => err.fmt(f),
            PrintError::Write(err) => write!(f, "cannot write the results: {err}"),
        }
    }
}

impl std::error::Error for PrintError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{HeaderValue, Headers, Properties};
    use std::time::Duration;

    fn reply(body: &[u8], properties: Properties) -> RpcReply {
        RpcReply {
            body: body.to_vec(),
            properties,
            server: Some("s\"1".into()),
            elapsed: Duration::from_micros(1234),
            trace: crate::trace::TraceContext::parse(
                Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                None,
            ),
        }
    }

    fn json_line(reply: &RpcReply) -> String {
        let mut out = Vec::new();
        write_json(&mut out, reply, reply.error().as_ref()).expect("write");
        String::from_utf8(out).expect("JSON is UTF-8")
    }

    #[test]
    fn bodies_end_one_line() {
        let mut out = Vec::new();
        for body in [&b"HELLO"[..], b"two\n", b"", b"\xff\x00"] {
            write_body(&mut out, body).expect("write");
        }
        assert_eq!(out, b"HELLO\ntwo\n\n\xff\x00\n");
    }

    #[test]
    fn replies_as_json() {
        let mut headers = Headers::new();
        headers.insert("x-rpc-server", "s\"1");
        headers.insert("n", HeaderValue::I32(-2));
        let properties = Properties::default()
            .with_headers(headers)
            .with_content_type("text/plain");
        assert_eq!(
            json_line(&reply(b"h\xc3\xa9\n", properties)),
            "{\"body\": \"h\u{e9}\\n\", \"encoding\": \"utf-8\", \"content_type\": \"text/plain\", \
             \"headers\": {\"n\": \"-2\", \"x-rpc-server\": \"s\\\"1\"}, \"server\": \"s\\\"1\", \
             \"trace_id\": \"4bf92f3577b34da6a3ce929d0e0e4736\", \"elapsed_ms\": 1.234}\n"
        );
        assert_eq!(
            json_line(&reply(b"\xff\xfe\x00", Properties::default())),
            "{\"body\": \"//4A\", \"encoding\": \"base64\", \"content_type\": null, \
             \"headers\": {}, \"server\": \"s\\\"1\", \
             \"trace_id\": \"4bf92f3577b34da6a3ce929d0e0e4736\", \"elapsed_ms\": 1.234}\n"
        );
    }

    #[test]
    fn error_replies_as_json() {
        let error = wire::reply_properties(None, "s", Some(wire::ErrorCode::BadRequest));
        let mut r = reply(b"no\n\x1b[31m", error);
        r.server = None;
        assert_eq!(
            json_line(&r),
            "{\"error\": {\"code\": \"bad-request\", \"message\": \"no??[31m\"}, \
             \"server\": null, \"trace_id\": \"4bf92f3577b34da6a3ce929d0e0e4736\", \
             \"elapsed_ms\": 1.234}\n"
        );
    }

    #[test]
    fn an_untraced_reply_has_no_trace_id() {
        let mut r = reply(b"ok", Properties::default());
        r.trace = None;
        assert_eq!(
            json_line(&r),
            "{\"body\": \"ok\", \"encoding\": \"utf-8\", \"content_type\": null, \
             \"headers\": {}, \"server\": \"s\\\"1\", \"elapsed_ms\": 1.234}\n"
        );
    }

    #[test]
    fn outcomes_come_out_in_order_until_the_first_failure() {
        let mut out = Vec::new();
        let result = in_order(
            4,
            &mut out,
            |out, value: u32| writeln!(out, "{value}"),
            |on_reply| {
                for (index, result) in [(1, Ok(1)), (0, Ok(0)), (3, Ok(3))] {
                    let _ = on_reply(index, result);
                }
                let _ = on_reply(2, Err(Error::BadReply("two".into())));
                Ok(())
            },
        );
        assert!(matches!(result, Err(PrintError::Call(Error::BadReply(_)))));
        assert_eq!(out, b"0\n1\n");
    }
}
