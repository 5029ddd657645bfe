//! Requests published by hand (raw AMQP): malformed ones, direct reply-to, deadlines and
//! skewed clocks.

use super::{client, server_options, start_servers, stop_all, TestServer};
use amiquip::{AmqpProperties, ConsumerMessage, ConsumerOptions};
use rpc_client::testing::{Admin, QueueGuard};
use rpc_client::wire::{self, ERROR_HEADER, SERVER_HEADER};
use rpc_client::Error;
use rpc_server::Stats;
use std::time::Duration;

/// Publishes raw requests and collects the replies on an exclusive queue; those with
/// `reply_to` ask for error replies, as ours do.
fn raw_round_trip(
    admin: &Admin,
    queue: &str,
    requests: &[(&[u8], bool)],
) -> Vec<(AmqpProperties, Vec<u8>)> {
    let (reply_queue, consumer) =
        rpc_client::amqp::callback_queue(admin.channel()).expect("reply queue");
    let mut expected = 0;
    for (i, (body, with_reply_to)) in requests.iter().enumerate() {
        let mut properties = AmqpProperties::default().with_correlation_id(i.to_string());
        if *with_reply_to {
            properties = properties
                .with_reply_to(reply_queue.clone())
                .with_type_(wire::ERROR_REPLIES_TYPE.into());
            expected += 1;
        }
        admin.publish(queue, body, properties).expect("publish");
    }
    let mut got = Vec::new();
    while got.len() < expected {
        match consumer.recv_timeout(Duration::from_secs(20)) {
            Ok(ConsumerMessage::Delivery(d)) => got.push((d.properties, d.body)),
            other => panic!(
                "waiting for reply {} of {expected}: {other:?}",
                got.len() + 1
            ),
        }
    }
    got
}

#[test]
fn bad_requests_get_error_replies_and_the_server_keeps_serving() {
    let queue = QueueGuard::new("bad");
    let mut options = server_options(queue.name(), "strict");
    options.max_n = 5000;
    let server = TestServer::start(options);
    let mut admin = Admin::connect().expect("admin");
    admin
        .wait_for_consumers(queue.name(), 1)
        .expect("server consumes");

    let oversized = vec![b'7'; 10_000];
    let bad: Vec<(&[u8], &str)> = vec![
        (b"", "bad-request"),
        (b"   ", "bad-request"),
        (b"abc", "bad-request"),
        (b"-1", "bad-request"),
        (b"1.5", "bad-request"),
        (b"1e3", "bad-request"),
        (b"\xff\xfe\xfd", "bad-request"),
        (b"12\x0034", "bad-request"),
        (&oversized, "bad-request"),
        (b"5001", "too-large"),
        (b"18446744073709551616", "too-large"),
    ];
    let mut requests: Vec<(&[u8], bool)> = bad.iter().map(|(b, _)| (*b, true)).collect();
    requests.push((b"30", false)); // no reply_to: acked and dropped
    requests.push((b"20", true));
    let replies = raw_round_trip(&admin, queue.name(), &requests);
    assert_eq!(replies.len(), bad.len() + 1);
    for (properties, body) in &replies {
        let id: usize = properties
            .correlation_id()
            .as_deref()
            .and_then(|id| id.parse().ok())
            .expect("correlation id echoed");
        if id == requests.len() - 1 {
            assert_eq!(body, b"6765");
            assert_eq!(crate::common::raw_header(properties, ERROR_HEADER), None);
        } else {
            let (request, code) = bad[id];
            assert_eq!(
                crate::common::raw_header(properties, ERROR_HEADER),
                Some(code),
                "request {request:?} got {:?}",
                String::from_utf8_lossy(body)
            );
            let message = String::from_utf8(body.clone()).expect("UTF-8 message");
            assert!(
                !message.is_empty() && !message.contains('\n'),
                "{message:?}"
            );
        }
        assert_eq!(
            crate::common::raw_header(properties, SERVER_HEADER),
            Some("strict")
        );
    }
    // The library reports an error reply as Error::Server.
    let mut client = client(queue.name());
    match client.call(5001) {
        Err(Error::Server { code, .. }) => assert_eq!(code, "too-large"),
        other => panic!("expected a server error, got {other:?}"),
    }
    assert_eq!(client.call(3).expect("still serving"), "2");
    admin
        .wait_for_empty(queue.name())
        .expect("nothing left behind");
    let stats = server.stop();
    assert_eq!(
        stats,
        Stats {
            answered: 2,
            refused: bad.len() as u64 + 1,
            unanswered: 0,
            dropped: 1,
            abandoned: 0,
            unconfirmed: 0,
            reconnects: 0,
        }
    );
}

#[test]
fn callers_that_do_not_ask_for_error_replies_get_none() {
    // The tutorial clients' requests (reply_to and correlation_id, no `type`): Ruby's `to_i`
    // and PHP's `intval` would read an error message as 0, so a bad one gets no reply.
    let queue = QueueGuard::new("no-errors");
    let mut options = server_options(queue.name(), "quiet");
    options.max_n = 5000;
    let server = TestServer::start(options);
    let mut admin = Admin::connect().expect("admin");
    admin
        .wait_for_consumers(queue.name(), 1)
        .expect("server consumes");
    let (reply_queue, consumer) =
        rpc_client::amqp::callback_queue(admin.channel()).expect("reply queue");
    let tutorial = |id: &str| {
        AmqpProperties::default()
            .with_reply_to(reply_queue.clone())
            .with_correlation_id(id.into())
    };
    let other_type = tutorial("typed").with_type_("MyApp.FibRequest".into());
    admin
        .publish(queue.name(), b"-1", tutorial("minus"))
        .expect("publish");
    admin
        .publish(queue.name(), b"abc", tutorial("abc"))
        .expect("publish");
    admin
        .publish(queue.name(), b"5001", other_type)
        .expect("publish");
    // Last, a valid one: its reply comes after the server has dealt with the others.
    admin
        .publish(queue.name(), b"20", tutorial("good"))
        .expect("publish");
    match consumer.recv_timeout(Duration::from_secs(20)) {
        Ok(ConsumerMessage::Delivery(d)) => {
            assert_eq!(d.properties.correlation_id().as_deref(), Some("good"));
            assert_eq!(d.body, b"6765");
        }
        other => panic!("waiting for the valid request's reply: {other:?}"),
    }
    admin
        .wait_for_empty(queue.name())
        .expect("the bad requests acked");
    let stats = server.stop();
    assert_eq!(
        (stats.answered, stats.refused, stats.unanswered),
        (1, 0, 3),
        "{stats:?}"
    );
    // The server has stopped: any reply it published is in the callback queue by now.
    let more = consumer.recv_timeout(Duration::from_millis(200));
    assert!(
        !matches!(more, Ok(ConsumerMessage::Delivery(_))),
        "a caller that did not ask got an error reply: {more:?}"
    );
}

#[test]
fn direct_reply_to_callers_are_served() {
    let queue = QueueGuard::new("direct");
    let servers = start_servers(queue.name(), 1);
    let admin = Admin::connect().expect("admin");
    let channel = admin.channel();
    let consumer = rpc_client::amqp::consume(
        channel,
        "amq.rabbitmq.reply-to",
        ConsumerOptions {
            no_ack: true,
            ..ConsumerOptions::default()
        },
    )
    .expect("consume direct reply-to");
    admin
        .publish(
            queue.name(),
            b"30",
            wire::request_properties("amq.rabbitmq.reply-to", "direct-1"),
        )
        .expect("publish");
    match consumer.recv_timeout(Duration::from_secs(20)) {
        Ok(ConsumerMessage::Delivery(d)) => {
            assert_eq!(d.body, b"832040");
            assert_eq!(d.properties.correlation_id().as_deref(), Some("direct-1"));
        }
        other => panic!("no direct reply: {other:?}"),
    }
    stop_all(servers);
}

#[test]
fn requests_past_their_deadline_are_dropped_unanswered() {
    let queue = QueueGuard::new("deadline");
    let server = TestServer::start(server_options(queue.name(), "deadline"));
    let mut admin = Admin::connect().expect("admin");
    admin.wait_for_consumers(queue.name(), 1).expect("consumes");
    // Sent in 1970 with a 10 s expiration: its caller is long gone. (The broker only expires
    // messages by their time in the queue, so it delivers this one.)
    let expired = wire::request_properties("nobody-listens-here", "gone")
        .with_timestamp(1_000)
        .with_expiration("10000");
    admin
        .publish(queue.name(), b"1000000", expired)
        .expect("publish");
    // The next call is served after the expired request was taken off the queue.
    assert_eq!(client(queue.name()).call(12).expect("call"), "144");
    admin.wait_for_empty(queue.name()).expect("empty");
    let stats = server.stop();
    assert_eq!((stats.answered, stats.dropped), (1, 1), "{stats:?}");
}

#[test]
fn skewed_clocks_do_not_drop_requests() {
    // A caller whose clock is 120 s behind the server's (or a server 120 s ahead), and one
    // 120 s ahead: both still wait (30 s timeout), both are answered.
    let queue = QueueGuard::new("skew");
    let server = TestServer::start(server_options(queue.name(), "skew"));
    let mut admin = Admin::connect().expect("admin");
    admin.wait_for_consumers(queue.name(), 1).expect("consumes");
    let (reply_queue, consumer) =
        rpc_client::amqp::callback_queue(admin.channel()).expect("reply queue");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    for (id, sent) in [("behind", now - 120), ("ahead", now + 120)] {
        let properties = wire::request_properties(&reply_queue, id)
            .with_timestamp(sent)
            .with_expiration("30000");
        admin
            .publish(queue.name(), b"30", properties)
            .expect("publish");
    }
    let mut answered = Vec::new();
    while answered.len() < 2 {
        match consumer.recv_timeout(Duration::from_secs(20)) {
            Ok(ConsumerMessage::Delivery(d)) => {
                assert_eq!(d.body, b"832040");
                answered.push(d.properties.correlation_id().clone().unwrap_or_default());
            }
            other => panic!("waiting for the skewed requests' replies: {other:?}"),
        }
    }
    answered.sort();
    assert_eq!(answered, ["ahead", "behind"]);
    let stats = server.stop();
    assert_eq!((stats.answered, stats.dropped), (2, 0), "{stats:?}");
}
