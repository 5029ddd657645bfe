//! 4. More than 1,000 malformed requests, published raw: the server answers each one that has
//!    a `reply_to` with an error reply, drops the others, keeps running and still serves.

use super::{client_options, start_servers, stop_servers, Def, Scenario, CALL_TIMEOUT, SLOW_N};
use crate::common::caller::Caller;
use crate::common::load::{Call, Outcome, GRACE};
use amiquip::{AmqpProperties, AmqpValue, ConsumerMessage, FieldTable};
use crossbeam_channel::Receiver;
use rpc_client::testing::{Admin, QueueGuard};
use rpc_client::wire::{self, ERROR_HEADER};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

pub const SCENARIO: Def = Def {
    number: "4",
    name: "malformed requests (raw)",
    breaks_broker: false,
    run,
};

/// What a raw request must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// An error reply with this code, carrying the request's correlation id.
    Refused(&'static str),
    /// An error reply with this code and no correlation id (the request had none).
    RefusedWithoutId(&'static str),
    /// No reply: the request has no `reply_to`.
    Nothing,
}

struct RawRequest {
    body: Vec<u8>,
    properties: AmqpProperties,
    expect: Expect,
}

const BAD: &str = "bad-request";
const TOO_LARGE: &str = "too-large";

/// Adds a body and the error code it must get.
type Add<'a> = dyn FnMut(Vec<u8>, &'static str) + 'a;

/// Malformed bodies and the error code each must get from a server with `--max-n 1000000`.
fn malformed_bodies() -> Vec<(Vec<u8>, &'static str)> {
    let mut bodies: Vec<(Vec<u8>, &'static str)> = Vec::new();
    let mut add = |body: Vec<u8>, code: &'static str| bodies.push((body, code));
    blank_and_negative(&mut add);
    notations(&mut add);
    junk(&mut add);
    wrong_encodings(&mut add);
    too_large(&mut add);
    oversized(&mut add);
    bodies
}

/// Empty, blank and negative.
fn blank_and_negative(add: &mut Add) {
    // Empty and blank.
    add(Vec::new(), BAD);
    for i in 0..40 {
        let blank = " ".repeat(i % 5) + &"\t".repeat(i % 3) + &"\r\n".repeat(i % 2) + "\x0c";
        add(blank.into_bytes(), BAD);
    }
    // Negative numbers.
    for i in 0..150u64 {
        add(format!("-{}", i * 7919 % 2_000_000).into_bytes(), BAD);
    }
}

/// Floats, exponents and other notations.
fn notations(add: &mut Add) {
    for i in 0..150u64 {
        let (a, b) = (i * 31 % 1000, i % 97);
        let text = match i % 6 {
            0 => format!("{a}.{b}"),
            1 => format!("{a}e{b}"),
            2 => format!("{a}E-{b}"),
            3 => format!(".{b}"),
            4 => format!("{a}."),
            _ => format!("{a},{b}"),
        };
        add(text.into_bytes(), BAD);
    }
}

/// Junk: words, other numerals, JSON, NULs, invisible characters, shell and format strings.
fn junk(add: &mut Add) {
    for text in [
        "NaN",
        "nan",
        "inf",
        "-inf",
        "Infinity",
        "1_000",
        "0x1F",
        "0b101",
        "0o17",
        "+30",
        "30 30",
        "3 0",
        "30abc",
        "thirty",
        "{\"n\":30}",
        "[30]",
        "\"30\"",
        "null",
        "true",
        "30\x00",
        "\x0030",
        "12\x0034",
        "\x00",
        "\x7f",
        "\u{663}\u{660}",
        "\u{ff13}\u{ff10}",
        "\u{969}\u{966}",
        "30\u{200b}",
        "\u{feff}30",
        "\u{a0}30",
        "3\u{2009}0",
        "½",
        "Ⅻ",
        "٣٠",
        "30;DROP TABLE",
        "$(reboot)",
        "%s%s%s",
        "\u{1b}[31m30",
    ] {
        add(text.as_bytes().to_vec(), BAD);
    }
}

/// Wrong encodings and bytes that are not UTF-8.
fn wrong_encodings(add: &mut Add) {
    // Wrong encodings: UTF-16 (little and big endian, with and without a BOM) and UTF-32.
    for i in 0..60u64 {
        let digits = (i * 37).to_string();
        let units: Vec<u16> = digits.encode_utf16().collect();
        let le: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
        let be: Vec<u8> = units.iter().flat_map(|u| u.to_be_bytes()).collect();
        let le_bom = [&[0xff, 0xfe][..], &le].concat();
        let be_bom = [&[0xfe, 0xff][..], &be].concat();
        let utf32: Vec<u8> = digits
            .chars()
            .flat_map(|c| (c as u32).to_le_bytes())
            .collect();
        for body in [le, be, le_bom, be_bom, utf32] {
            add(body, BAD);
        }
    }
    // Not UTF-8: Latin-1 and random bytes (an LCG: reproducible), each with an 0xff somewhere.
    for i in 0..40u64 {
        let mut text = (i * 11).to_string().into_bytes();
        text.push([0xb2, 0xb3, 0xb9, 0xe9][i as usize % 4]); // ², ³, ¹, é in Latin-1
        add(text, BAD);
    }
    let mut seed: u64 = 0x5eed_f00d;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as u8
    };
    for i in 0..200usize {
        let len = 1 + i % 64;
        let mut body: Vec<u8> = (0..len).map(|_| next()).collect();
        body[i % len] = 0xff;
        add(body, BAD);
    }
}

/// Numbers too large: above u64, above `--max-n`.
fn too_large(add: &mut Add) {
    // Huge numbers: 20 to 64 digits (above u64 or above the limit).
    for len in 20..=64 {
        add("9".repeat(len).into_bytes(), TOO_LARGE);
        add(format!("1{}", "0".repeat(len - 1)).into_bytes(), TOO_LARGE);
    }
    add(u64::MAX.to_string().into_bytes(), TOO_LARGE);
    add("18446744073709551616".into(), TOO_LARGE);
    // Above --max-n (1,000,000), also with surrounding whitespace and leading zeros.
    for i in 1..=100u64 {
        add(
            (1_000_000 + i * i * 1013).to_string().into_bytes(),
            TOO_LARGE,
        );
    }
    add(b" 1000001\n".to_vec(), TOO_LARGE);
    add(b"0001000001".to_vec(), TOO_LARGE);
}

/// Oversized bodies.
fn oversized(add: &mut Add) {
    // Oversized bodies: more than 64 bytes, up to 1 MB.
    for len in [
        65, 100, 1000, 4096, 65_536, 100_000, 100_000, 1_000_000, 1_000_000,
    ] {
        add("7".repeat(len).into_bytes(), BAD);
    }
    add(vec![0xff; 100_000], BAD);
    add(vec![b' '; 1_000_000], BAD);
}

/// Every malformed body with `reply_to` and a correlation id, then variants: without a
/// correlation id, without `reply_to`, with odd properties.
fn malformed_requests(reply_to: &str) -> Vec<RawRequest> {
    let bodies = malformed_bodies();
    let mut requests = Vec::new();
    for (i, (body, code)) in bodies.iter().enumerate() {
        let mut properties = wire::request_properties(reply_to, &format!("m-{i}")).into_amqp();
        if i % 7 == 3 {
            // Odd properties, a stray header and a timestamp without expiration: ignored.
            let mut headers = FieldTable::new();
            headers.insert(
                "x-deadline".into(),
                AmqpValue::LongString("tomorrow".into()),
            );
            properties = properties
                .with_headers(headers)
                .with_timestamp(1_000)
                .with_content_type("application/json".into())
                .with_content_encoding("gzip".into());
        }
        requests.push(RawRequest {
            body: body.clone(),
            properties,
            expect: Expect::Refused(code),
        });
    }
    for (body, code) in bodies.iter().step_by(10) {
        requests.push(RawRequest {
            body: body.clone(),
            properties: AmqpProperties::default()
                .with_reply_to(reply_to.to_string())
                .with_type_(wire::ERROR_REPLIES_TYPE.into()),
            expect: Expect::RefusedWithoutId(code),
        });
    }
    let valid: Vec<(Vec<u8>, &str)> = vec![(b"30".to_vec(), ""); 20];
    for (i, (body, _)) in bodies.iter().step_by(8).chain(&valid).enumerate() {
        requests.push(RawRequest {
            body: body.clone(),
            properties: AmqpProperties::default().with_correlation_id(format!("x-{i}")),
            expect: Expect::Nothing,
        });
    }
    requests
}

fn run(sc: &mut Scenario) {
    let queue = QueueGuard::new("fault-malformed");
    let mut servers = start_servers(queue.name(), "malformed", 1);
    let mut admin = Admin::connect().expect("admin");
    let (reply_queue, replies) =
        rpc_client::amqp::callback_queue(admin.channel()).expect("declare the reply queue");
    let requests = malformed_requests(&reply_queue);
    assert!(requests.len() >= 1000, "only {} requests", requests.len());
    let started = Instant::now();
    for request in &requests {
        admin
            .publish(queue.name(), &request.body, request.properties.clone())
            .expect("publish a malformed request");
    }
    // Last, a valid request: one server, prefetch 1, FIFO: its reply comes after all others.
    admin
        .publish(
            queue.name(),
            b"30",
            wire::request_properties(&reply_queue, "final"),
        )
        .expect("publish the final request");
    let published = started.elapsed();
    let got = collect_replies(sc, &replies, started);
    let answered_in = started.elapsed();
    let expected_refusals = check_replies(sc, &requests, &got, started, answered_in);

    // The server logged each refusal and each drop, survived, and left the queue empty.
    let server = &mut servers[0];
    let refused = server.log_count("refusing request");
    let dropped = server.log_count("dropping a request without reply_to");
    let no_reply_to = requests
        .iter()
        .filter(|r| r.expect == Expect::Nothing)
        .count();
    sc.check(refused == expected_refusals, || {
        format!("server logged {refused} refusals, want {expected_refusals}")
    });
    sc.check(dropped == no_reply_to, || {
        format!("server logged {dropped} drops, want {no_reply_to}")
    });
    sc.check(server.exited().is_none(), || {
        format!("the server exited\n{}", server.log_tail(20))
    });
    admin
        .wait_for_empty(queue.name())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut caller = Caller::new(client_options(queue.name(), CALL_TIMEOUT));
    let after = caller.call(SLOW_N);
    sc.check(after.outcome == Outcome::Right, || {
        format!("valid call after the malformed ones: {after:?}")
    });
    sc.record(&after);
    sc.note(format!(
        "{} raw requests ({} with reply_to, {} without; bodies up to 1 MB) published in {:.2}s, \
         all handled in {:.2}s",
        requests.len(),
        expected_refusals,
        no_reply_to,
        published.as_secs_f64(),
        answered_in.as_secs_f64()
    ));
    stop_servers(sc, &mut servers);
}

/// How long the replies to all raw requests may take.
const REPLIES_WITHIN: Duration = Duration::from_secs(60);

/// The replies to the raw requests: by correlation id, without one, and to the final request.
struct Replies {
    by_id: HashMap<String, (AmqpProperties, Vec<u8>)>,
    without_id: Vec<(AmqpProperties, Vec<u8>)>,
    duplicates: usize,
    final_reply: Option<Vec<u8>>,
}

/// Reads replies until the one to the final request, up to [`REPLIES_WITHIN`] after `started`.
fn collect_replies(
    sc: &mut Scenario,
    replies: &Receiver<ConsumerMessage>,
    started: Instant,
) -> Replies {
    let mut got = Replies {
        by_id: HashMap::new(),
        without_id: Vec::new(),
        duplicates: 0,
        final_reply: None,
    };
    let deadline = started + REPLIES_WITHIN;
    while got.final_reply.is_none() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match replies.recv_timeout(remaining) {
            Ok(ConsumerMessage::Delivery(d)) => match d.properties.correlation_id().clone() {
                Some(id) if id == "final" => got.final_reply = Some(d.body),
                Some(id) => {
                    if got.by_id.insert(id, (d.properties, d.body)).is_some() {
                        got.duplicates += 1;
                    }
                }
                None => got.without_id.push((d.properties, d.body)),
            },
            other => {
                sc.check(false, || {
                    format!(
                        "waiting for replies: {other:?} after {:?}",
                        started.elapsed()
                    )
                });
                break;
            }
        }
    }
    got
}

fn code_of(properties: &AmqpProperties) -> Option<&str> {
    crate::common::raw_header(properties, ERROR_HEADER)
}

/// Records how each raw request (and the final one) was answered and checks that no reply
/// came twice or unasked. Returns how many refusals were due.
fn check_replies(
    sc: &mut Scenario,
    requests: &[RawRequest],
    got: &Replies,
    started: Instant,
    answered_in: Duration,
) -> usize {
    let duplicates = got.duplicates;
    sc.check(duplicates == 0, || {
        format!("{duplicates} duplicate replies")
    });
    let raw_budget = REPLIES_WITHIN + GRACE;
    let final_call = Call::new(
        30,
        match got.final_reply.as_deref() {
            Some(b"832040") => Outcome::Right,
            Some(_) => Outcome::Wrong,
            None => Outcome::Lost,
        },
        format!(
            "{:?}",
            got.final_reply.as_deref().map(String::from_utf8_lossy)
        ),
        started,
        raw_budget,
    );
    sc.record(&final_call);

    let mut without_id_codes: Vec<&str> = got
        .without_id
        .iter()
        .filter_map(|(p, _)| code_of(p))
        .collect();
    let mut expected_refusals = 0;
    for (i, request) in requests.iter().enumerate() {
        if request.expect != Expect::Nothing {
            expected_refusals += 1;
        }
        let (outcome, detail) = judge(request, got, &mut without_id_codes);
        // n: the request's index, for the bad-call list.
        let mut call = Call::new(i as u64, outcome, detail, started, raw_budget);
        call.elapsed = answered_in;
        sc.record(&call);
    }
    sc.check(without_id_codes.is_empty(), || {
        format!("unexpected replies without an id: {without_id_codes:?}")
    });
    let requested: HashSet<String> = requests
        .iter()
        .filter(|r| matches!(r.expect, Expect::Refused(_)))
        .filter_map(|r| r.properties.correlation_id().clone())
        .collect();
    let stray = got
        .by_id
        .keys()
        .filter(|id| !requested.contains(*id))
        .count();
    sc.check(stray == 0, || format!("{stray} replies nobody asked for"));
    expected_refusals
}

/// How `request` was answered; a reply without an id it accounts for leaves
/// `without_id_codes`.
fn judge(
    request: &RawRequest,
    got: &Replies,
    without_id_codes: &mut Vec<&str>,
) -> (Outcome, String) {
    match request.expect {
        Expect::Refused(code) => {
            let id = request
                .properties
                .correlation_id()
                .clone()
                .expect("correlation id");
            match got.by_id.get(&id) {
                None => (Outcome::Lost, format!("no reply to {id}")),
                Some((properties, body)) if code_of(properties) == Some(code) => {
                    let message = String::from_utf8_lossy(body);
                    if message.is_empty() || message.contains('\n') || body.len() > 200 {
                        (Outcome::Wrong, format!("{id}: message {message:?}"))
                    } else {
                        (Outcome::Error, String::new())
                    }
                }
                Some((properties, body)) => (
                    Outcome::Wrong,
                    format!(
                        "{id} (body {:?}): code {:?}, want {code}: {:?}",
                        String::from_utf8_lossy(&request.body[..request.body.len().min(20)]),
                        code_of(properties),
                        String::from_utf8_lossy(body)
                    ),
                ),
            }
        }
        Expect::RefusedWithoutId(code) => match without_id_codes.iter().position(|c| *c == code) {
            Some(at) => {
                without_id_codes.swap_remove(at);
                (Outcome::Error, String::new())
            }
            None => (Outcome::Lost, format!("no {code} reply without an id")),
        },
        Expect::Nothing => (Outcome::NoReply, String::new()),
    }
}
