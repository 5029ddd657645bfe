//! The floor under our RPC layer: the thinnest request/reply echo amiquip can do.
//!
//! `cargo bench -p rpc-client --bench echo_floor -- [--calls N] [--in-flight K] [--prefetch P]
//! [--confirm]`
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
use std::time::Instant;

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

fn main() {
    let calls = arg("--calls", 20_000);
    let in_flight = arg("--in-flight", 1).max(1);
    let prefetch = u16::try_from(arg("--prefetch", 100)).expect("--prefetch fits u16");
    let confirm = std::env::args().any(|a| a == "--confirm");
    let queue = unique_name("echo-floor");
    let admin = Admin::connect().expect("connect");
    admin.declare(&queue, false).expect("declare");

    let echo_queue = queue.clone();
    let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
    let echo = std::thread::spawn(move || echo(&echo_queue, prefetch, confirm, &stopped));
    let seconds = call(&queue, calls, in_flight);
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
    let _ = stop.send(());
    echo.join().expect("echo thread");
    let mut admin = admin;
    admin.delete(&queue).expect("delete queue");
}

/// The echo: consumes `queue` (with `prefetch`) and publishes each body back, acking each
/// request at once or, with `confirm`, once its reply is confirmed; until `stopped`.
fn echo(queue: &str, prefetch: u16, confirm: bool, stopped: &Receiver<()>) {
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
    let mut published = 0;
    loop {
        crossbeam_channel::select! {
            recv(requests) -> message => {
                let Ok(ConsumerMessage::Delivery(d)) = message else { return };
                let reply_to = d.properties.reply_to().clone().expect("reply_to");
                let properties = AmqpProperties::default()
                    .with_correlation_id(d.properties.correlation_id().clone().expect("id"));
                channel
                    .basic_publish("", Publish::with_properties(&d.body, reply_to, properties))
                    .expect("publish");
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

/// Calls the echo on `queue` with `in_flight` requests at a time: a warm-up of up to 500,
/// then `calls`; the seconds those took.
fn call(queue: &str, calls: u64, in_flight: u64) -> f64 {
    let mut connection = connect(&broker()).expect("caller connects");
    let channel = connection.open_channel(None).expect("channel");
    let (reply_queue, replies) = callback_queue(&channel).expect("callback queue");
    let send = |i: u64| {
        let properties = AmqpProperties::default()
            .with_reply_to(reply_queue.clone())
            .with_correlation_id(i.to_string());
        channel
            .basic_publish("", Publish::with_properties(b"30", queue, properties))
            .expect("publish");
    };
    let warmup = 500.min(calls);
    let run = |count: u64| {
        let mut sent = 0;
        while sent < count.min(in_flight) {
            send(sent);
            sent += 1;
        }
        for _ in 0..count {
            match replies.recv() {
                Ok(ConsumerMessage::Delivery(_)) => {}
                other => panic!("reply consumer ended: {other:?}"),
            }
            if sent < count {
                send(sent);
                sent += 1;
            }
        }
    };
    run(warmup);
    let started = Instant::now();
    run(calls);
    started.elapsed().as_secs_f64()
}
