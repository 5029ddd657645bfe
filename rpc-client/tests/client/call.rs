//! Raw calls: bytes, content type and headers, by the library and by `rpc-client call`.

use crate::util::*;

use rpc_client::exit_code;
use rpc_client::testing::{self, QueueGuard};
use rpc_client::{Error, HeaderValue, RpcClient, RpcRequest};
use serde_json::Value;
use std::time::Duration;

#[test]
fn raw_calls_round_trip_bytes_content_type_and_headers() {
    let queue = QueueGuard::new("raw");
    let responder = Responder::start_raw(queue.name());
    let mut client =
        RpcClient::connect(&options(queue.name(), Duration::from_secs(20))).expect("c");

    let reply = client.call(&RpcRequest::new("hello")).expect("call");
    assert_eq!(reply.body, b"HELLO");
    assert_eq!(reply.server.as_deref(), Some("raw-responder"));
    assert_eq!(reply.content_type(), None);
    assert!(reply.elapsed > Duration::ZERO);

    // Any bytes: not UTF-8, a NUL, and nothing at all.
    let reply = client
        .call(&RpcRequest::new(b"\xff\x00abc\xc3".to_vec()))
        .expect("call");
    assert_eq!(reply.body, b"\xff\x00ABC\xc3");
    assert_eq!(
        client
            .call(&RpcRequest::new(Vec::new()))
            .expect("call")
            .body,
        b""
    );

    // Content type and headers reach the server (which sends them back).
    let request = RpcRequest::new("h\u{e9}")
        .with_content_type("text/plain; charset=utf-8")
        .with_header("lang", "fr")
        .with_header("note", "a=b\n");
    let reply = client.call(&request).expect("call");
    assert_eq!(reply.body, "H\u{e9}".as_bytes());
    assert_eq!(reply.content_type(), Some("text/plain; charset=utf-8"));
    assert_eq!(reply.header("lang"), Some("fr"));
    assert_eq!(reply.header("note"), Some("a=b\n"));
    assert_eq!(reply.headers().get("x-length"), Some(HeaderValue::I64(3)));

    match client.call(&RpcRequest::new("ERR no thanks")) {
        Err(err @ Error::Server { .. }) => {
            assert_eq!(err.exit_code(), exit_code::SERVER_ERROR);
            let Error::Server { code, message } = &err else {
                unreachable!()
            };
            assert_eq!(
                (code.as_str(), message.as_str()),
                ("bad-request", "refused: no thanks")
            );
        }
        other => panic!("expected a server error, got {other:?}"),
    }

    // An empty header name never leaves the client.
    let bad = RpcRequest::new("x").with_header("", "v");
    assert!(matches!(client.call(&bad), Err(Error::Config(_))));

    // A batch: each outcome by its index, error replies as errors.
    let requests: Vec<RpcRequest> = ["a", "ERR b", "c"].map(RpcRequest::new).into();
    let mut outcomes = vec![None; requests.len()];
    client
        .call_many(&requests, 8, |index, result| {
            outcomes[index] = Some(result.map(|r| r.body).map_err(|e| e.to_string()));
            std::ops::ControlFlow::Continue(())
        })
        .expect("batch");
    assert_eq!(outcomes[0], Some(Ok(b"A".to_vec())));
    assert_eq!(
        outcomes[1],
        Some(Err("server error (bad-request): refused: b".to_string()))
    );
    assert_eq!(outcomes[2], Some(Ok(b"C".to_vec())));

    // call_many_raw passes the error reply on, with its server.
    let mut raw = Vec::new();
    client
        .call_many_raw(&requests[1..2], 1, |_, result| {
            raw.push(result.expect("a reply"));
            std::ops::ControlFlow::Continue(())
        })
        .expect("batch");
    assert_eq!(raw.len(), 1);
    assert!(matches!(raw[0].error(), Some(Error::Server { .. })));
    assert_eq!(raw[0].server.as_deref(), Some("raw-responder"));

    client.set_timeout(Duration::from_millis(400));
    match client.call(&RpcRequest::new("SILENT")) {
        Err(err @ Error::Timeout { .. }) => {
            let text = err.to_string();
            assert!(
                text.starts_with("no reply for request (6 bytes) within"),
                "{text}"
            );
            assert!(text.contains("1 consumer(s)"), "{text}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    client.close().expect("close");
    responder.stop();
}

#[test]
fn binary_call_prints_reply_bodies() {
    let queue = QueueGuard::new("bin-call");
    let responder = Responder::start_raw(queue.name());
    let q = queue.name();

    let (out, shown) = rpc_client(&["call", "--queue", q, "hello"]);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(out.stdout, b"HELLO\n", "{shown}");
    assert!(out.stderr.is_empty(), "{shown}");
    let (out, shown) = rpc_client(&["call", "--queue", q, "--idempotent", "again"]);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(out.stdout, b"AGAIN\n", "{shown}");

    // In argument order; a body ending with a newline gets no second one; '-' is stdin.
    let (out, shown) = rpc_client_with_stdin(
        &[
            "call",
            "--queue",
            q,
            "--in-flight",
            "2",
            "one",
            "-",
            "two\n",
            "",
        ],
        b"from stdin\n",
    );
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(out.stdout, b"ONE\nFROM STDIN\nTWO\n\n", "{shown}");

    // An error reply: its message, exit 5, the replies before it printed, none after.
    let (out, shown) = rpc_client(&["call", "--queue", q, "a", "ERR \x1b[2Jbad", "b"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::SERVER_ERROR)),
        "{shown}"
    );
    assert_eq!(out.stdout, b"A\n", "{shown}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr, "rpc-client: server error (bad-request): refused: ?[2Jbad\n",
        "{shown}"
    );

    // Usage errors: exit 2, one clear line first, before any call.
    let usage: [(&[&str], &str); 4] = [
        (
            &["call", "--queue", q, "--header", "novalue", "x"],
            "--header",
        ),
        (
            &["call", "--queue", q, "--header", "=v", "x"],
            "header name",
        ),
        (&["call", "--queue", q], "<BODY>"),
        (
            &["call", "--queue", q, "-", "-"],
            "only one BODY may be '-'",
        ),
    ];
    for (args, says) in usage {
        let (out, shown) = rpc_client(args);
        assert_eq!(
            out.status.code(),
            Some(i32::from(exit_code::USAGE)),
            "{shown}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.contains(says) || stderr.contains(says),
            "{says:?} not said: {shown}"
        );
        assert!(out.stdout.is_empty(), "{shown}");
    }
    let (out, shown) = rpc_client_with_stdin(
        &["call", "--queue", q, "-"],
        &vec![b'x'; rpc_client::cli::MAX_STDIN_BODY + 1],
    );
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::USAGE)),
        "{shown}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("16 MiB"),
        "{shown}"
    );

    // A queue nobody declared: exit 6.
    let missing = testing::unique_name("never-declared");
    let (out, shown) = rpc_client(&["call", "--queue", &missing, "x"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::NO_ROUTE)),
        "{shown}"
    );
    responder.stop();
}

#[test]
fn binary_call_json_describes_each_reply() {
    let queue = QueueGuard::new("bin-call-json");
    let responder = Responder::start_raw(queue.name());
    let q = queue.name();
    // --trace: each call starts a trace, and its line says which (`trace_id`).
    let args = [
        "--trace",
        "call",
        "--queue",
        q,
        "--json",
        "--header",
        "lang=fr=ca",
        "--header",
        "quote=\"\\",
        "--content-type",
        "text/plain",
        "h\u{e9}llo",
        "-",
        "ERR nope",
        "last",
    ];
    let (out, shown) = rpc_client_with_stdin(&args, b"\xff\xfeab");
    // The error reply is an object like the others; the calls go on; exit 5 at the end.
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::SERVER_ERROR)),
        "{shown}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused: nope"),
        "{shown}"
    );
    let stdout = String::from_utf8(out.stdout.clone()).expect("JSON output is UTF-8");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|line| parse_json(line, &shown))
        .collect();
    assert_eq!(lines.len(), 4, "{shown}");

    let first = &lines[0];
    assert_eq!(field(first, "body"), &Value::from("H\u{e9}LLO"), "{shown}");
    assert_eq!(field(first, "encoding"), &Value::from("utf-8"), "{shown}");
    assert_eq!(field(first, "content_type"), &Value::from("text/plain"));
    assert_eq!(field(first, "server"), &Value::from("raw-responder"));
    let headers = field(first, "headers");
    assert_eq!(field(headers, "lang"), &Value::from("fr=ca"), "{shown}");
    assert_eq!(field(headers, "quote"), &Value::from("\"\\"), "{shown}");
    assert_eq!(field(headers, "x-length"), &Value::from("6"), "{shown}");
    assert_eq!(
        field(headers, "x-rpc-server"),
        &Value::from("raw-responder")
    );
    assert!(
        field(first, "elapsed_ms")
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        "{shown}"
    );

    // Not UTF-8: base64 of b"\xff\xfeAB".
    assert_eq!(
        field(&lines[1], "body"),
        &Value::from("//5BQg=="),
        "{shown}"
    );
    assert_eq!(
        field(&lines[1], "encoding"),
        &Value::from("base64"),
        "{shown}"
    );

    let error = field(&lines[2], "error");
    assert_eq!(field(error, "code"), &Value::from("bad-request"), "{shown}");
    assert_eq!(
        field(error, "message"),
        &Value::from("refused: nope"),
        "{shown}"
    );
    assert_eq!(field(&lines[2], "server"), &Value::from("raw-responder"));
    assert!(field(&lines[2], "elapsed_ms").is_number(), "{shown}");
    assert!(
        field(&lines[2], "trace_id")
            .as_str()
            .is_some_and(|id| id.len() == 32),
        "{shown}"
    );
    assert!(
        lines[2].as_object().is_some_and(|fields| fields.len() == 4),
        "{shown}"
    );

    assert_eq!(field(&lines[3], "body"), &Value::from("LAST"), "{shown}");
    responder.stop();
}
