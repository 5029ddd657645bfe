//! W3C trace context: client to server to reply, and what a malformed `traceparent` gets.

use super::{client, start_servers, stop_all};
use amiquip::{AmqpProperties, AmqpValue, ConsumerMessage, FieldTable};
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::wire::{TRACEPARENT_HEADER, TRACESTATE_HEADER};
use rpc_client::TraceContext;
use rpc_client::{ClientOptions, RpcClient, RpcRequest};
use std::collections::HashMap;
use std::time::Duration;

/// The trace id of a reply's `traceparent`, which must be valid.
fn reply_trace(properties: &AmqpProperties) -> TraceContext {
    let header =
        crate::common::raw_header(properties, TRACEPARENT_HEADER).expect("reply has a traceparent");
    TraceContext::parse(Some(header), None).expect("the reply's traceparent is valid")
}

#[test]
fn trace_context_goes_client_to_server_to_reply() {
    let queue = QueueGuard::new("trace");
    let servers = start_servers(queue.name(), 1);
    // A parent (as from TRACEPARENT/TRACESTATE): every call is a child of it.
    let parent = TraceContext::parse(
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        Some("congo=t61rcWkgMzE"),
    )
    .expect("valid");
    let mut fib = client(queue.name());
    fib.set_parent(Some(parent.clone()));
    let reply = fib.call_reply(10).expect("fib(10)");
    assert_eq!(reply.trace_id, parent.trace_id);
    // Without a parent: a new trace per call, and the reply says which.
    fib.set_parent(None);
    let (a, b) = (fib.call_reply(1).expect("a"), fib.call_reply(2).expect("b"));
    assert_ne!(a.trace_id, b.trace_id);
    assert_ne!(a.trace_id, parent.trace_id);
    drop(fib.close());
    // The bytes-level client: the reply's traceparent has the call's trace id and the
    // server's own span id, and the tracestate comes back too.
    let mut rpc = RpcClient::connect(&ClientOptions {
        brokers: vec![testing::broker()],
        queue: queue.name().to_string(),
        timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    })
    .expect("client connects");
    for parent in [Some(parent.clone()), None] {
        let reply = rpc
            .call(&RpcRequest::new("7").with_parent(parent.clone()))
            .expect("call");
        let server = reply_trace(reply.properties.amqp());
        assert_eq!(server.trace_id, reply.trace.trace_id);
        assert_ne!(server.span_id, reply.trace.span_id);
        if let Some(parent) = &parent {
            assert_eq!(reply.trace.trace_id, parent.trace_id);
            assert_ne!(reply.trace.span_id, parent.span_id);
            assert_eq!(reply.header(TRACESTATE_HEADER), Some("congo=t61rcWkgMzE"));
        } else {
            assert_eq!(reply.header(TRACESTATE_HEADER), None);
        }
    }
    drop(rpc.close());
    stop_all(servers);
}

#[test]
fn malformed_or_missing_traceparent_starts_a_new_trace_and_is_never_echoed() {
    let queue = QueueGuard::new("trace-raw");
    let servers = start_servers(queue.name(), 1);
    let admin = Admin::connect().expect("admin");
    let (reply_queue, consumer) =
        rpc_client::amqp::callback_queue(admin.channel()).expect("reply queue");
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let cases: [(&str, Option<&str>); 5] = [
        ("none", None),
        ("valid", Some(valid)),
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
    for (id, traceparent) in cases {
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
    while seen.len() < cases.len() {
        match consumer.recv_timeout(Duration::from_secs(20)) {
            Ok(ConsumerMessage::Delivery(d)) => {
                let id = d.properties.correlation_id().clone().expect("id");
                let header =
                    crate::common::raw_header(&d.properties, TRACEPARENT_HEADER).map(String::from);
                let state =
                    crate::common::raw_header(&d.properties, TRACESTATE_HEADER).map(String::from);
                seen.insert(id, (reply_trace(&d.properties), header, state));
            }
            other => panic!("waiting for reply {} of 5: {other:?}", seen.len() + 1),
        }
    }
    let (valid_trace, _, state) = &seen["valid"];
    assert_eq!(
        valid_trace.trace_id.to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_ne!(valid_trace.span_id, 0x00f0_67aa_0ba9_02b7);
    assert_eq!(state.as_deref(), Some("k=v"));
    for (id, traceparent) in cases {
        let (trace, header, state) = &seen[id];
        if id != "valid" {
            // A new trace; neither the malformed header nor its tracestate comes back.
            assert_ne!(trace.trace_id, valid_trace.trace_id, "{id}");
            assert_ne!(header.as_deref(), traceparent, "{id}");
            assert_eq!(state, &None, "{id}");
        }
    }
    stop_all(servers);
}
