//! The stand-in server ([`Responder`]) and the helpers every area uses.

use amiquip::{AmqpProperties, AmqpValue, ConsumerMessage, ConsumerOptions, Delivery};
use crossbeam_channel::{select, Sender};
use rpc_client::testing::{self, Admin};
use rpc_client::wire::{self, ErrorCode};
use rpc_client::ClientOptions;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

pub const MALFORMED: u64 = 666;
pub const SILENT: u64 = 777;
pub const REFUSED: u64 = 999;
/// Answered (wrongly, with 999) only after 1.2 s: late for a short timeout.
pub const SLOW: u64 = 555;
/// Answered with an error reply whose header values and body would attack a terminal.
pub const HOSTILE: u64 = 888;

/// A fib(n) request as our client sends it: n, `reply_to` and `correlation_id`.
fn fib_request(delivery: &Delivery) -> (u64, String, Option<&str>) {
    let n = std::str::from_utf8(&delivery.body)
        .expect("utf8")
        .parse()
        .expect("number");
    let reply_to = delivery.properties.reply_to().clone().expect("reply_to");
    (n, reply_to, delivery.properties.correlation_id().as_deref())
}

/// A stand-in server: answers fib(n) for small n, and misbehaves on cue.
pub struct Responder {
    stop: Sender<()>,
    handle: JoinHandle<()>,
}

impl Responder {
    /// With `stray`, every real reply is preceded by one with an unknown correlation id.
    pub fn start(queue: &str, stray: bool) -> Responder {
        Responder::spawn(queue, move |admin, delivery| {
            let (n, reply_to, id) = fib_request(delivery);
            let (body, error) = match n {
                MALFORMED => (b"abc".to_vec(), None),
                REFUSED => (b"refused on purpose".to_vec(), Some(ErrorCode::BadRequest)),
                SILENT => (Vec::new(), None),
                SLOW => (b"999".to_vec(), None),
                HOSTILE => (Vec::new(), None), // see hostile_reply

                n => (small_fib(n).to_string().into_bytes(), None),
            };
            if n == SLOW {
                std::thread::sleep(Duration::from_millis(1200)); // a slow server, on purpose
            }
            if stray {
                let props = wire::reply_properties(Some("not-a-call-of-yours"), "r", None);
                admin.publish(&reply_to, b"999999", props).expect("stray");
            }
            if n == HOSTILE {
                let (props, body) = hostile_reply(id);
                admin.publish(&reply_to, &body, props).expect("reply");
            } else if n != SILENT {
                let props = wire::reply_properties(id, "responder", error);
                admin.publish(&reply_to, &body, props).expect("reply");
            }
        })
    }

    /// A stand-in for tutorial servers whose arithmetic overflows: answers fib(n) with what
    /// [`overflowed_fib`] says those servers send, and the right value otherwise.
    pub fn start_overflowing(queue: &str) -> Responder {
        Responder::spawn(queue, |admin, delivery| {
            let (n, reply_to, id) = fib_request(delivery);
            let body = overflowed_fib(n).map_or_else(|| small_fib(n).to_string(), str::to_string);
            let props = wire::reply_properties(id, "overflowing", None);
            admin
                .publish(&reply_to, body.as_bytes(), props)
                .expect("reply");
        })
    }

    /// A stand-in for any server of raw bodies: replies with the body's ASCII letters
    /// uppercased (other bytes as they are), the request's content type and headers, plus
    /// `x-rpc-server: raw-responder` and `x-length` (the body's length, an integer header).
    /// A body starting with `ERR ` gets an error reply `bad-request` "refused: <the rest>";
    /// the body `SILENT` gets no reply.
    pub fn start_raw(queue: &str) -> Responder {
        Responder::spawn(queue, |admin, delivery| {
            let reply_to = delivery.properties.reply_to().clone().expect("reply_to");
            let id = delivery.properties.correlation_id().as_deref();
            if delivery.body == b"SILENT" {
                return;
            }
            if let Some(rest) = delivery.body.strip_prefix(b"ERR ") {
                let props =
                    wire::reply_properties(id, "raw-responder", Some(ErrorCode::BadRequest));
                let body = [&b"refused: "[..], rest].concat();
                admin.publish(&reply_to, &body, props).expect("reply");
                return;
            }
            let mut headers = delivery.properties.headers().clone().unwrap_or_default();
            headers.insert(
                wire::SERVER_HEADER.to_string(),
                AmqpValue::LongString("raw-responder".into()),
            );
            let length = i64::try_from(delivery.body.len()).expect("length");
            headers.insert("x-length".into(), AmqpValue::LongLongInt(length));
            let mut props = AmqpProperties::default()
                .with_correlation_id(id.expect("correlation id").to_string())
                .with_headers(headers);
            if let Some(content_type) = delivery.properties.content_type() {
                props = props.with_content_type(content_type.clone());
            }
            admin
                .publish(&reply_to, &delivery.body.to_ascii_uppercase(), props)
                .expect("reply");
        })
    }

    /// Consumes `queue` (declaring it) on a thread of its own, passing each request to
    /// `answer` and then acking it; returns once the consumer is in place.
    pub fn spawn(queue: &str, answer: impl Fn(&Admin, &Delivery) + Send + 'static) -> Responder {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let queue_name = queue.to_string();
        let handle = std::thread::spawn(move || {
            let mut admin = Admin::connect().expect("responder connects");
            // A queue the test declared with arguments of its own is used as it is.
            if admin
                .queue_state(&queue_name)
                .expect("queue state")
                .is_none()
            {
                admin.declare(&queue_name, false).expect("declare");
            }
            let requests =
                rpc_client::amqp::consume(admin.channel(), &queue_name, ConsumerOptions::default())
                    .expect("consume");
            loop {
                let delivery = select! {
                    recv(requests) -> m => match m {
                        Ok(ConsumerMessage::Delivery(d)) => d,
                        other => panic!("responder consumer ended: {other:?}"),
                    },
                    recv(stopped) -> _ => return,
                };
                answer(&admin, &delivery);
                delivery.ack(admin.channel()).expect("ack");
            }
        });
        let mut admin = Admin::connect().expect("admin");
        admin
            .wait_for_consumers(queue, 1)
            .expect("responder consumes");
        Responder { stop, handle }
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        self.handle.join().expect("responder thread");
    }
}

/// An error reply meant to clear the screen, set the window title, forge log lines, and flood
/// stderr with 5 MB on one line.
pub fn hostile_reply(id: Option<&str>) -> (AmqpProperties, Vec<u8>) {
    let mut headers = amiquip::FieldTable::new();
    headers.insert(
        wire::ERROR_HEADER.to_string(),
        amiquip::AmqpValue::LongString("\x1b]0;owned\x07".into()),
    );
    headers.insert(
        wire::SERVER_HEADER.to_string(),
        amiquip::AmqpValue::LongString("evil\x1b[2J\r\n[INFO] forged".into()),
    );
    let mut props = AmqpProperties::default().with_headers(headers);
    if let Some(id) = id {
        props = props.with_correlation_id(id.to_string());
    }
    let mut body = b"bad\r\n[ERROR] forged line\x1b[31m".to_vec();
    body.resize(5_000_000, b'x');
    (props, body)
}

/// What the tutorial servers whose arithmetic overflows answer (issue 26): Java's int32 for
/// fib(48), Go's and Rust's u64 for fib(100) (and fib(94), the first that wraps),
/// JavaScript's doubles for fib(92).
pub fn overflowed_fib(n: u64) -> Option<&'static str> {
    match n {
        48 => Some("512559680"),
        92 => Some("7540113804746346000"),
        94 => Some("1293530146158671551"),
        100 => Some("3736710778780434371"),
        _ => None,
    }
}

pub fn small_fib(n: u64) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    a
}

pub fn options(queue: &str, timeout: Duration) -> ClientOptions {
    ClientOptions {
        brokers: vec![testing::broker()],
        queue: queue.to_string(),
        timeout,
        ..ClientOptions::default()
    }
}

/// Runs the rpc-client binary against the test broker, with an empty stdin.
pub fn rpc_client(args: &[&str]) -> (Output, String) {
    rpc_client_with_stdin(args, b"")
}

/// Runs the rpc-client binary against the test broker with `stdin` as its standard input.
pub fn rpc_client_with_stdin(args: &[&str], stdin: &[u8]) -> (Output, String) {
    let broker = testing::broker();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rpc-client"))
        .args(["--host", &broker.host, "--port", &broker.port.to_string()])
        .args(args)
        .env_remove("AMQP_URI")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rpc-client");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // A client that refuses stdin closes it early: a failed write is its answer, not ours.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait for rpc-client");
    writer.join().expect("stdin writer");
    let shown = format!(
        "rpc-client {args:?}: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, shown)
}

/// One line of `rpc-client call --json`, read by serde_json (independently of the writer);
/// panics with `shown` if it is not one JSON value, or if an object repeats a key.
pub fn parse_json(line: &str, shown: &str) -> Value {
    let value: Unique =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e} in {line:?}\n{shown}"));
    value.0
}

/// The field `name` of an object (panics if there is none).
pub fn field<'a>(value: &'a Value, name: &str) -> &'a Value {
    match value {
        Value::Object(fields) => fields
            .get(name)
            .unwrap_or_else(|| panic!("no field {name:?} in {value:?}")),
        other => panic!("{other:?} is not an object"),
    }
}

/// A JSON value whose objects have no duplicate keys (serde_json's `Value` keeps the last).
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Unique, D::Error> {
        deserializer.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique(Value::Null))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Unique, E> {
        Ok(Unique(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Unique, E> {
        Ok(Unique(Value::from(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Unique(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut fields = serde_json::Map::new();
        while let Some((name, Unique(value))) = map.next_entry::<String, Unique>()? {
            if fields.contains_key(&name) {
                return Err(A::Error::custom(format!("duplicate key {name:?}")));
            }
            fields.insert(name, value);
        }
        Ok(Unique(Value::Object(fields)))
    }
}
