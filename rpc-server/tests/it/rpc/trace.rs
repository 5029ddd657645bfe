//! W3C trace context: client to server to reply when tracing is in use, nothing of it when
//! not, and what a malformed `traceparent` gets.

use super::{client, server_options, start_servers, stop_all, TestServer};
use amiquip::{AmqpProperties, AmqpValue, ConsumerMessage, FieldTable};
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::wire::{TRACEPARENT_HEADER, TRACESTATE_HEADER};
use rpc_client::TraceContext;
use rpc_client::{ClientOptions, RpcClient, RpcRequest};
use rpc_server::{Reply, Request, ServerOptions};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The trace id of a reply's `traceparent`, which must be valid.
fn reply_trace(properties: &AmqpProperties) -> TraceContext {
    let header =
        crate::common::raw_header(properties, TRACEPARENT_HEADER).expect("reply has a traceparent");
    TraceContext::parse(Some(header), None).expect("the reply's traceparent is valid")
}

/// A bytes-level client of `queue` with the default options.
fn rpc_client(queue: &str) -> RpcClient {
    RpcClient::connect(&ClientOptions {
        brokers: vec![testing::broker()],
        queue: queue.to_string(),
        timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    })
    .expect("client connects")
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn trace_context_goes_client_to_server_to_reply() {
    let queue = QueueGuard::new("trace");
    let servers = start_servers(queue.name(), 1);
    // A parent (as from TRACEPARENT/TRACESTATE): every call is a child of it.
    let parent = TraceContext::parse(Some(PARENT), Some("congo=t61rcWkgMzE")).expect("valid");
    let mut fib = client(queue.name());
    fib.set_parent(Some(parent.clone()));
    let reply = fib.call_reply(10).expect("fib(10)");
    assert_eq!(reply.trace_id, Some(parent.trace_id));
    // Without a parent, asked to trace: a new trace per call, and the reply says which.
    fib.set_parent(None);
    fib.set_trace(true);
    let (a, b) = (fib.call_reply(1).expect("a"), fib.call_reply(2).expect("b"));
    assert!(a.trace_id.is_some() && b.trace_id.is_some());
    assert_ne!(a.trace_id, b.trace_id);
    assert_ne!(a.trace_id, Some(parent.trace_id));
    drop(fib.close());
    // The bytes-level client: the reply's traceparent has the call's trace id and the
    // server's own span id, and the tracestate comes back too.
    let mut rpc = rpc_client(queue.name());
    rpc.set_trace(true);
    for parent in [Some(parent.clone()), None] {
        let reply = rpc
            .call(&RpcRequest::new("7").with_parent(parent.clone()))
            .expect("call");
        let server = reply_trace(reply.properties.amqp());
        let call = reply.trace.as_ref().expect("a traced call");
        assert_eq!(server.trace_id, call.trace_id);
        assert_ne!(server.span_id, call.span_id);
        if let Some(parent) = &parent {
            assert_eq!(call.trace_id, parent.trace_id);
            assert_ne!(call.span_id, parent.span_id);
            assert_eq!(reply.header(TRACESTATE_HEADER), Some("congo=t61rcWkgMzE"));
        } else {
            assert_eq!(reply.header(TRACESTATE_HEADER), None);
        }
    }
    drop(rpc.close());
    stop_all(servers);
}

/// A server on `queue` whose handler answers with the `traceparent` the request carried
/// (`-` for none) and whether the server traced it: `<header>|<server's trace id or ->`.
fn header_echo(queue: &str, start_traces: bool) -> TestServer {
    let options = ServerOptions {
        start_traces,
        ..server_options(queue, "trace-echo")
    };
    let server = TestServer::serving(
        options,
        Arc::new(|request: &Request| {
            let header = request.header(TRACEPARENT_HEADER).unwrap_or("-");
            let traced = request.trace.map(|t| t.trace_id.to_string());
            Reply::answer(format!("{header}|{}", traced.as_deref().unwrap_or("-")))
        }),
    );
    let mut admin = Admin::connect().expect("admin connects");
    admin.wait_for_consumers(queue, 1).expect("server consumes");
    server
}

#[test]
fn no_trace_context_unless_tracing_is_in_use() {
    let queue = QueueGuard::new("trace-off");
    let server = header_echo(queue.name(), false);
    let mut rpc = rpc_client(queue.name());
    // By default: no traceparent sent, none generated, none on the reply, none logged.
    let reply = rpc.call(&RpcRequest::new("1")).expect("call");
    assert_eq!(reply.body, b"-|-", "the request carried trace context");
    assert_eq!(reply.trace, None);
    assert_eq!(
        reply.header(TRACEPARENT_HEADER),
        None,
        "a reply to an untraced request"
    );
    assert_eq!(reply.header(TRACESTATE_HEADER), None);
    // A parent: the call is its child, the server traces it and answers with its span.
    let parent = TraceContext::parse(Some(PARENT), None).expect("valid");
    let reply = rpc
        .call(&RpcRequest::new("2").with_parent(Some(parent.clone())))
        .expect("call");
    let call = reply.trace.clone().expect("traced");
    let trace_id = parent.trace_id.to_string();
    assert_eq!(
        String::from_utf8_lossy(&reply.body),
        format!("{}|{trace_id}", call.traceparent())
    );
    assert_eq!(
        reply_trace(reply.properties.amqp()).trace_id,
        parent.trace_id
    );
    // Asked to trace (`--trace`): each call starts a trace and sends it.
    rpc.set_trace(true);
    let reply = rpc.call(&RpcRequest::new("3")).expect("call");
    let call = reply.trace.clone().expect("traced");
    assert_eq!(
        String::from_utf8_lossy(&reply.body),
        format!("{}|{}", call.traceparent(), call.trace_id)
    );
    drop(rpc.close());
    server.stop();
    // A server that starts traces (`--trace`) traces a request without one, and says so on
    // the reply, while the client's call stays untraced.
    let queue = QueueGuard::new("trace-start");
    let server = header_echo(queue.name(), true);
    let mut rpc = rpc_client(queue.name());
    let reply = rpc.call(&RpcRequest::new("4")).expect("call");
    assert_eq!(reply.trace, None);
    let server_span = reply_trace(reply.properties.amqp());
    assert_eq!(
        String::from_utf8_lossy(&reply.body),
        format!("-|{}", server_span.trace_id)
    );
    drop(rpc.close());
    server.stop();
}

/// The trace cases a raw publisher sends: no `traceparent`, a valid one, malformed ones.
const CASES: [(&str, Option<&str>); 5] = [
    ("none", None),
    ("valid", Some(PARENT)),
    (
        "upper",
        Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"),
    ),
    (
        "zero",
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
    ),
    (
        "hostile",
        Some("\x1b]0;owned\x07\n00-4bf92f3577b34da6a3ce929d0e0e4736-00"),
    ),
];

/// What a Fibonacci server (starting traces or not) answers to each of [`CASES`], published
/// raw with a `tracestate`: by case, the reply's `traceparent` and `tracestate` headers.
fn replies_to_cases(start_traces: bool) -> HashMap<String, (Option<String>, Option<String>)> {
    let queue = QueueGuard::new(if start_traces {
        "trace-raw-on"
    } else {
        "trace-raw"
    });
    let options = ServerOptions {
        start_traces,
        ..server_options(queue.name(), "trace-raw")
    };
    let server = TestServer::start(options);
    let mut admin = Admin::connect().expect("admin");
    admin.wait_for_consumers(queue.name(), 1).expect("consumes");
    let (reply_queue, consumer) =
        rpc_client::amqp::callback_queue(admin.channel()).expect("reply queue");
    for (id, traceparent) in CASES {
        let mut headers = FieldTable::new();
        if let Some(value) = traceparent {
            headers.insert(
                TRACEPARENT_HEADER.into(),
                AmqpValue::LongString(value.into()),
            );
            headers.insert(
                TRACESTATE_HEADER.into(),
                AmqpValue::LongString("k=v".into()),
            );
        }
        let properties = AmqpProperties::default()
            .with_correlation_id(id.into())
            .with_reply_to(reply_queue.clone())
            .with_headers(headers);
        admin
            .publish(queue.name(), b"5", properties)
            .expect("publish");
    }
    let mut seen = HashMap::new();
    while seen.len() < CASES.len() {
        match consumer.recv_timeout(Duration::from_secs(20)) {
            Ok(ConsumerMessage::Delivery(d)) => {
                assert_eq!(d.body, b"5", "fib(5)");
                let id = d.properties.correlation_id().clone().expect("id");
                let header =
                    crate::common::raw_header(&d.properties, TRACEPARENT_HEADER).map(String::from);
                let state =
                    crate::common::raw_header(&d.properties, TRACESTATE_HEADER).map(String::from);
                seen.insert(id, (header, state));
            }
            other => panic!("waiting for reply {} of 5: {other:?}", seen.len() + 1),
        }
    }
    server.stop();
    seen
}

#[test]
fn malformed_or_missing_traceparent_counts_as_absent_and_is_never_echoed() {
    for start_traces in [false, true] {
        let seen = replies_to_cases(start_traces);
        // A valid one: the reply is the server's span, a child in the same trace.
        let (header, state) = &seen["valid"];
        let valid = TraceContext::parse(header.as_deref(), None).expect("a valid traceparent");
        assert_eq!(
            valid.trace_id.to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_ne!(valid.span_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(state.as_deref(), Some("k=v"));
        for (id, traceparent) in CASES.into_iter().filter(|(id, _)| *id != "valid") {
            let (header, state) = &seen[id];
            // Neither the malformed header nor its tracestate comes back ...
            assert_eq!(state, &None, "{id}");
            if start_traces {
                // ... and with --trace, the reply starts a new trace.
                let trace = TraceContext::parse(header.as_deref(), None).expect("a new trace");
                assert_ne!(trace.trace_id, valid.trace_id, "{id}");
                assert_ne!(header.as_deref(), traceparent, "{id}");
            } else {
                // ... and without it, the request is not traced: no traceparent at all.
                assert_eq!(header, &None, "{id} (start_traces {start_traces})");
            }
        }
    }
}
