//! The floor under our RPC layer: the thinnest request/reply echo amiquip can do.
//!
//! `cargo bench -p rpc-client --bench echo_floor -- [--calls N] [--in-flight K] [--prefetch P]
//! [--confirm]`
//!
//! Either end alone, for `cargo xtask bench`'s instructions-per-call rows (group i), which run
//! one of them under callgrind against our other binary:
//! - `--serve QUEUE [--prefetch P] --calls N`: the echo alone on an existing queue; it exits
//!   once it has answered N requests (the raw amiquip echo server rpc-server is compared with);
//! - `--call QUEUE [--in-flight K] [--calls N] [--warmup W] [--body B] [--confirm-requests]`:
//!   the caller alone against a server on QUEUE. With `--confirm-requests` it does the
//!   protocol work rpc-client's requests must do: publisher confirms (drained without waiting,
//!   a nack panics), and `expiration`, `timestamp` and `mandatory` on each request.
//!
//! An echo thread consumes a queue and publishes each body back to its `reply_to` with the
//! same `correlation_id`, then acks. With `--confirm` it publishes with publisher confirms on
//! and acks each request only once the broker confirmed its reply, as `rpc-server
//! --confirm-replies` does (one confirmed publish per call, as rpc-client's requests): every
//! confirm that is there when it wakes, then one `multiple` ack for the newest request they
//! cover. The caller keeps K requests in flight on an exclusive,
//! no-ack callback queue and counts replies. No parsing, no Fibonacci, no correlation-id
//! bookkeeping: whatever our RPC layer costs on top shows as the distance to this figure.
//! Both ends use `TCP_NODELAY` connections like the real binaries. Prints the same
//! tab-separated columns as `rpc-client bench --tsv` (latency columns empty), written by the
//! same code (`rpc_client::cli::BenchTsvRow`).

use amiquip::{
    AmqpProperties, Channel, Confirm, ConsumerMessage, ConsumerOptions, Delivery, Publish,
};
use crossbeam_channel::Receiver;
use rpc_client::amqp::{callback_queue, consume};
use rpc_client::cli::BenchTsvRow;
use rpc_client::testing::{broker, connect, unique_name, Admin};
use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

/// The value of option `name`, if given.
fn text_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == name)?;
    Some(
        args.get(i + 1)
            .unwrap_or_else(|| panic!("{name} takes a value"))
            .clone(),
    )
}

fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// How the caller publishes its requests.
struct Caller {
    in_flight: u64,
    warmup: u64,
    body: Vec<u8>,
    /// Publisher confirms, `expiration`, `timestamp` and `mandatory`.
    confirm: bool,
}

fn main() {
    let calls = arg("--calls", 20_000);
    let prefetch = u16::try_from(arg("--prefetch", 100)).expect("--prefetch fits u16");
    let caller = Caller {
        in_flight: arg("--in-flight", 1).max(1),
        warmup: arg("--warmup", 500).min(calls),
        body: text_arg("--body").unwrap_or("30".into()).into_bytes(),
        confirm: flag("--confirm-requests"),
    };
    if let Some(queue) = text_arg("--serve") {
        echo(&queue, prefetch, false, calls, &crossbeam_channel::never());
        return;
    }
    if let Some(queue) = text_arg("--call") {
        report(calls, caller.in_flight, call(&queue, calls, &caller));
        return;
    }
    let confirm = flag("--confirm");
    let queue = unique_name("echo-floor");
    let admin = Admin::connect().expect("connect");
    admin.declare(&queue, false).expect("declare");

    let echo_queue = queue.clone();
    let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
    let echo = std::thread::spawn(move || echo(&echo_queue, prefetch, confirm, u64::MAX, &stopped));
    report(calls, caller.in_flight, call(&queue, calls, &caller));
    let _ = stop.send(());
    echo.join().expect("echo thread");
    let mut admin = admin;
    admin.delete(&queue).expect("delete queue");
}

/// The result line, as `rpc-client bench --tsv` prints it.
fn report(calls: u64, in_flight: u64, seconds: f64) {
    let row = BenchTsvRow {
        calls,
        in_flight,
        reply_queue: "exclusive",
        n: 30,
        seconds,
        latency_ms: None,
        errors: 0,
    };
    print!("{row}");
}

/// The echo: consumes `queue` (with `prefetch`) and publishes each body back, acking each
/// request at once or, with `confirm`, once its reply is confirmed; until `stopped`, or until
/// it has answered and acked `limit` requests.
fn echo(queue: &str, prefetch: u16, confirm: bool, limit: u64, stopped: &Receiver<()>) {
    let mut connection = connect(&broker()).expect("echo connects");
    let channel = connection.open_channel(None).expect("channel");
    channel.qos(0, prefetch, false).expect("qos");
    let requests = consume(&channel, queue, ConsumerOptions::default()).expect("consume");
    let confirms = if confirm {
        let confirms = channel.listen_for_publisher_confirms().expect("confirms");
        channel.enable_publisher_confirms().expect("confirm mode");
        confirms
    } else {
        crossbeam_channel::never()
    };
    // With --confirm: requests whose replies wait for a confirm, by the reply's number.
    let mut unconfirmed: VecDeque<(u64, Delivery)> = VecDeque::new();
    let (mut published, mut answered) = (0, 0);
    while answered < limit || !unconfirmed.is_empty() {
        crossbeam_channel::select! {
            recv(requests) -> message => {
                let Ok(ConsumerMessage::Delivery(d)) = message else { return };
                let reply_to = d.properties.reply_to().clone().expect("reply_to");
                let properties = AmqpProperties::default()
                    .with_correlation_id(d.properties.correlation_id().clone().expect("id"));
                channel
                    .basic_publish("", Publish::with_properties(&d.body, reply_to, properties))
                    .expect("publish");
                answered += 1;
                if confirm {
                    published += 1;
                    unconfirmed.push_back((published, d));
                } else {
                    d.ack(&channel).expect("ack");
                }
            }
            recv(confirms) -> first => {
                let Ok(first) = first else { return };
                ack_confirmed(&channel, first, &confirms, &mut unconfirmed);
            }
            recv(stopped) -> _ => return,
        }
    }
}

/// One `multiple` ack for the newest request whose reply `first` and the confirms already
/// waiting in `confirms` cover.
fn ack_confirmed(
    channel: &Channel,
    first: Confirm,
    confirms: &Receiver<Confirm>,
    unconfirmed: &mut VecDeque<(u64, Delivery)>,
) {
    // Replies are confirmed in the order they were published (one queue each).
    let mut newest = None;
    for confirm in std::iter::once(first).chain(confirms.try_iter()) {
        let Confirm::Ack(payload) = confirm else {
            panic!("reply nacked")
        };
        let upto = payload.delivery_tag;
        while unconfirmed.front().is_some_and(|(seq, _)| *seq <= upto) {
            newest = unconfirmed.pop_front();
        }
    }
    if let Some((_, d)) = newest {
        d.ack_multiple(channel).expect("ack");
    }
}

/// Calls the echo on `queue` as `caller` says: a warm-up, then `calls`; the seconds those
/// took. Each reply's correlation id must be one of a request sent.
fn call(queue: &str, calls: u64, caller: &Caller) -> f64 {
    let mut connection = connect(&broker()).expect("caller connects");
    let channel = connection.open_channel(None).expect("channel");
    let (reply_queue, replies) = callback_queue(&channel).expect("callback queue");
    let confirms = if caller.confirm {
        let confirms = channel.listen_for_publisher_confirms().expect("confirms");
        channel.enable_publisher_confirms().expect("confirm mode");
        confirms
    } else {
        crossbeam_channel::never()
    };
    let send = |i: u64| {
        let mut properties = AmqpProperties::default()
            .with_reply_to(reply_queue.clone())
            .with_correlation_id(i.to_string());
        if caller.confirm {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
            properties = properties
                .with_expiration("30000".into())
                .with_timestamp(now.as_secs());
        }
        let mut publish = Publish::with_properties(&caller.body, queue, properties);
        publish.mandatory = caller.confirm;
        channel.basic_publish("", publish).expect("publish");
        // Drained without waiting: whatever confirms have arrived.
        for confirm in confirms.try_iter() {
            assert!(matches!(confirm, Confirm::Ack(_)), "request nacked");
        }
    };
    let run = |count: u64| {
        let mut sent = 0;
        while sent < count.min(caller.in_flight) {
            send(sent);
            sent += 1;
        }
        for _ in 0..count {
            match replies.recv() {
                Ok(ConsumerMessage::Delivery(d)) => {
                    let id = d.properties.correlation_id().as_deref();
                    let ours = id.and_then(|id| id.parse::<u64>().ok());
                    assert!(
                        ours.is_some_and(|id| id < sent),
                        "reply to no request: {id:?}"
                    );
                }
                other => panic!("reply consumer ended: {other:?}"),
            }
            if sent < count {
                send(sent);
                sent += 1;
            }
        }
    };
    run(caller.warmup);
    let started = Instant::now();
    run(calls);
    started.elapsed().as_secs_f64()
}
