//! Messages whose headers nest as deep as one frame allows (tables in tables, arrays in
//! arrays: written by hand, [`RawPublisher`]) sent to a server's request queue and to a waiting
//! client's callback queue. amiquip's decoder recurses once per level: before the connections
//! read the broker through `rpc_client::amqp::DepthGuard`, one such message killed any
//! process that received it (stack overflow, exit 134), every restarted server again.
//!
//! Server logs are in `target/tmp/deep_headers/`.

use crate::common::raw::{deepest_fitting, nested_headers, request_properties, RawPublisher};
use crate::common::server::ServerProc;
use crate::common::{log_dir, rpc_client_bin};
use amiquip::{AmqpProperties, ConsumerMessage, ConsumerOptions, QueueDeclareOptions};
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::wire::ERROR_HEADER;
use rpc_client::{ClientOptions, FibonacciRpcClient};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a reply or an exit may take.
const WITHIN: Duration = Duration::from_secs(30);

fn logs() -> PathBuf {
    log_dir("deep_headers")
}

/// The nestings sent: (kind, levels below the headers table). 31 is the deepest a server
/// accepts (32 levels with the headers table), 32 the shallowest it refuses; then deeper than
/// amiquip's decoder survived on a 2 MiB stack in a release build, and the deepest that fits
/// next to a correlation id of [`id`] and a `reply_to` of `reply_to` bytes.
fn nestings(frame_max: usize, reply_to: usize) -> Vec<(u8, usize)> {
    // The short strings' lengths, the correlation id, reply_to and type.
    let others = 3 + id("", b'A', 0).len() + reply_to + rpc_client::wire::ERROR_REPLIES_TYPE.len();
    let mut all = Vec::new();
    for kind in [b'A', b'F'] {
        for levels in [31, 32, 4_000, deepest_fitting(kind, frame_max, others)] {
            all.push((kind, levels));
        }
    }
    all
}

/// A correlation id naming the nesting, always as long.
fn id(prefix: &str, kind: u8, levels: usize) -> String {
    format!("{prefix:>7}-{}-{levels:06}", kind as char)
}

#[test]
fn a_server_refuses_headers_nested_as_deep_as_a_frame_allows_and_keeps_serving() {
    let broker = testing::broker();
    let queue = QueueGuard::new("deep-headers");
    let mut server = ServerProc::on_broker(&logs(), "deep-1", queue.name(), &broker, &[]);
    let mut admin = Admin::connect().expect("admin");
    admin
        .wait_for_consumers(queue.name(), 1)
        .unwrap_or_else(|e| panic!("{e}\n{}", server.shown()));
    let replies = admin
        .channel()
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
        )
        .expect("reply queue");
    let consumer = replies
        .consume(ConsumerOptions {
            no_ack: true,
            ..ConsumerOptions::default()
        })
        .expect("consume the replies");
    let mut raw = RawPublisher::connect(&broker).expect("raw publisher");
    let mut expected = HashMap::new();
    let mut refused = 0;
    for (kind, levels) in nestings(raw.frame_max, replies.name().len()) {
        let id = id("deep", kind, levels);
        let (flags, properties) =
            request_properties(&nested_headers(kind, levels), id.as_bytes(), replies.name());
        raw.publish(queue.name(), flags, &properties, b"10")
            .unwrap_or_else(|e| panic!("the broker refused {id}: {e}"));
        // The headers table itself is one level more.
        let accepted = levels < 32;
        refused += usize::from(!accepted);
        expected.insert(id, accepted);
    }
    let deadline = Instant::now() + WITHIN;
    while !expected.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(ConsumerMessage::Delivery(reply)) = consumer.receiver().recv_timeout(left) else {
            panic!(
                "no reply to {:?} within {WITHIN:?}; server: {:?}\n{}",
                expected.keys(),
                server.exited(),
                server.shown()
            );
        };
        let id = reply
            .properties
            .correlation_id()
            .clone()
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&reply.body).into_owned();
        let accepted = expected
            .remove(&id)
            .unwrap_or_else(|| panic!("reply to {id:?}?"));
        let error = crate::common::raw_header(&reply.properties, ERROR_HEADER);
        if accepted {
            assert_eq!((error, body.as_str()), (None, "55"), "{id}");
        } else {
            assert_eq!(error, Some("bad-request"), "{id}: {body}");
            assert!(body.contains("headers nest"), "{id}: {body}");
        }
    }
    assert!(server.exited().is_none(), "{}", server.shown());
    let mut client = FibonacciRpcClient::connect(&ClientOptions {
        brokers: vec![broker],
        queue: queue.name().to_string(),
        timeout: WITHIN,
        ..ClientOptions::default()
    })
    .expect("client");
    assert_eq!(client.call(30).expect("a call after them"), "832040");
    let refusals = server.log_count("refusing request: the request's headers nest");
    assert_eq!(refusals, refused, "{}", server.shown());
}

#[test]
fn a_waiting_client_discards_foreign_replies_nested_as_deep_as_a_frame_allows() {
    let broker = testing::broker();
    let queue = QueueGuard::new("deep-callback");
    Admin::connect()
        .expect("admin")
        .declare(queue.name(), false)
        .expect("declare the request queue");
    // No server: the test answers the request itself, after the deep messages.
    let mut client = Command::new(rpc_client_bin())
        .args(["--host", &broker.host, "--port", &broker.port.to_string()])
        .args(["--vhost", &broker.vhost, "--user", &broker.user])
        .args(["--queue", queue.name(), "--timeout", "60", "10"])
        .env("AMQP_PASSWORD", &broker.password)
        .env_remove("AMQP_URI")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rpc-client");
    let admin = Admin::connect().expect("admin");
    let mut request = None;
    let got = testing::wait_until("the client's request", WITHIN, || {
        request = admin.channel().basic_get(queue.name(), true)?;
        Ok(request.is_some())
    });
    if let Err(err) = got {
        let _ = client.kill();
        panic!("{err}: {:?}", client.wait_with_output());
    }
    let request = request.expect("a request");
    let reply_to = request
        .delivery
        .properties
        .reply_to()
        .clone()
        .expect("reply_to");
    let call_id = request
        .delivery
        .properties
        .correlation_id()
        .clone()
        .expect("an id");
    let mut raw = RawPublisher::connect(&broker).expect("raw publisher");
    for (kind, levels) in nestings(raw.frame_max, 1) {
        let foreign = id("foreign", kind, levels);
        let (flags, properties) =
            request_properties(&nested_headers(kind, levels), foreign.as_bytes(), "x");
        raw.publish(&reply_to, flags, &properties, b"999")
            .unwrap_or_else(|e| panic!("the broker refused {foreign}: {e}"));
    }
    // The answer comes after them, on the same queue.
    admin
        .publish(
            &reply_to,
            b"55",
            AmqpProperties::default().with_correlation_id(call_id),
        )
        .expect("the answer");
    let deadline = Instant::now() + WITHIN;
    let status = loop {
        if let Some(status) = client.try_wait().expect("wait for rpc-client") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = client.kill();
            panic!("rpc-client still runs after {WITHIN:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = client.wait_with_output().expect("rpc-client's output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "55\n", "{stderr}");
}
