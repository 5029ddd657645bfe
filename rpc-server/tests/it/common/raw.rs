//! A publisher that writes AMQP 0-9-1 frames by hand, for messages no AMQP library would send:
//! headers nested tens of thousands of levels deep (amiquip's encoder, like its decoder,
//! recurses once per level). Plain TCP, PLAIN login, one channel in confirm mode; every read
//! has a deadline.

use rpc_client::{wire, BrokerOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_END: u8 = 0xCE;

/// How long any one frame from the broker may take.
const READ_LIMIT: Duration = Duration::from_secs(20);

/// One connection with a confirm-mode channel (1).
pub struct RawPublisher {
    stream: TcpStream,
    /// The frame size the broker offered, and we accepted.
    pub frame_max: usize,
}

/// A method frame's payload: class, method, arguments.
fn method(class: u16, id: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = class.to_be_bytes().to_vec();
    payload.extend_from_slice(&id.to_be_bytes());
    payload.extend_from_slice(args);
    payload
}

fn short(s: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::try_from(s.len()).expect("a short string")];
    out.extend_from_slice(s);
    out
}

fn long(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

impl RawPublisher {
    /// Connects and logs in to `broker` (plain TCP), opens channel 1 and selects confirms.
    pub fn connect(broker: &BrokerOptions) -> Result<RawPublisher, String> {
        let addr = format!("{}:{}", broker.host, broker.port);
        let stream = TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(READ_LIMIT))
            .map_err(|e| e.to_string())?;
        let mut raw = RawPublisher {
            stream,
            frame_max: 0,
        };
        raw.write_all(b"AMQP\x00\x00\x09\x01")?;
        raw.expect(10, 10)?;
        let login = [
            &b"\0"[..],
            broker.user.as_bytes(),
            b"\0",
            broker.password.as_bytes(),
        ]
        .concat();
        let start_ok = [
            &[0, 0, 0, 0][..],
            &short(b"PLAIN"),
            &long(&login),
            &short(b"en_US"),
        ]
        .concat();
        raw.send(FRAME_METHOD, 0, &method(10, 11, &start_ok))?;
        let tune = raw.expect(10, 30)?;
        let channel_max = [tune[0], tune[1]];
        let frame_max = [tune[2], tune[3], tune[4], tune[5]];
        raw.frame_max = u32::from_be_bytes(frame_max) as usize;
        let tune_ok = [&channel_max[..], &frame_max, &[0, 0]].concat();
        raw.send(FRAME_METHOD, 0, &method(10, 31, &tune_ok))?;
        let open = [&short(broker.vhost.as_bytes())[..], &short(b""), &[0]].concat();
        raw.send(FRAME_METHOD, 0, &method(10, 40, &open))?;
        raw.expect(10, 41)?;
        raw.send(FRAME_METHOD, 1, &method(20, 10, &short(b"")))?;
        raw.expect(20, 11)?;
        raw.send(FRAME_METHOD, 1, &method(85, 10, &[0]))?;
        raw.expect(85, 11)?;
        Ok(raw)
    }

    /// Publishes `body` to `queue` (default exchange) with the already encoded basic
    /// `properties` under `flags`, and waits for the broker's confirm.
    pub fn publish(
        &mut self,
        queue: &str,
        flags: u16,
        properties: &[u8],
        body: &[u8],
    ) -> Result<(), String> {
        let publish = [&[0, 0][..], &short(b""), &short(queue.as_bytes()), &[0]].concat();
        self.send(FRAME_METHOD, 1, &method(60, 40, &publish))?;
        let mut header = [&60u16.to_be_bytes()[..], &[0, 0]].concat();
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend_from_slice(&flags.to_be_bytes());
        header.extend_from_slice(properties);
        if header.len() + 8 > self.frame_max {
            return Err(format!(
                "a content header of {} bytes does not fit in a frame",
                header.len()
            ));
        }
        self.send(FRAME_HEADER, 1, &header)?;
        self.send(FRAME_BODY, 1, body)?;
        self.expect(60, 80).map(|_| ())
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))
    }

    fn send(&mut self, kind: u8, channel: u16, payload: &[u8]) -> Result<(), String> {
        let mut frame = vec![kind];
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        self.write_all(&frame)
    }

    /// Reads method frames until one of `class.id` (its arguments), skipping heartbeats; a
    /// close from the broker is an error with its text.
    fn expect(&mut self, class: u16, id: u16) -> Result<Vec<u8>, String> {
        loop {
            let mut prefix = [0; 7];
            self.stream
                .read_exact(&mut prefix)
                .map_err(|e| format!("read: {e}"))?;
            let size = u32::from_be_bytes([prefix[3], prefix[4], prefix[5], prefix[6]]) as usize;
            let mut payload = vec![0; size + 1];
            self.stream
                .read_exact(&mut payload)
                .map_err(|e| format!("read: {e}"))?;
            payload.pop();
            if prefix[0] != FRAME_METHOD || payload.len() < 4 {
                continue;
            }
            let got = (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            if got == (class, id) {
                return Ok(payload[4..].to_vec());
            }
            if got == (10, 50) || got == (20, 40) {
                let text = payload.get(7..).unwrap_or_default();
                return Err(format!("closed: {}", String::from_utf8_lossy(text)));
            }
        }
    }
}

impl Drop for RawPublisher {
    fn drop(&mut self) {
        let close = [&[0, 200][..], &short(b"bye"), &[0, 0, 0, 0]].concat();
        let _ = self.send(FRAME_METHOD, 0, &method(10, 50, &close));
        let _ = self.expect(10, 51);
    }
}

/// Basic properties with `headers` (an encoded table, its length first), `correlation_id` (any
/// bytes), `reply_to` and `type` (error replies asked for, as by our client), and their flags.
pub fn request_properties(headers: &[u8], correlation_id: &[u8], reply_to: &str) -> (u16, Vec<u8>) {
    let mut properties = headers.to_vec();
    properties.extend_from_slice(&short(correlation_id));
    properties.extend_from_slice(&short(reply_to.as_bytes()));
    // As our client's requests: they take error replies (`type`).
    properties.extend_from_slice(&short(wire::ERROR_REPLIES_TYPE.as_bytes()));
    (0x2000 | 0x0400 | 0x0200 | 0x0020, properties)
}

/// A headers table `{"d": V}`, V being `levels` arrays (`b'A'`) or tables (`b'F'`, each entry
/// named "") one in another: the headers nest `levels + 1` deep.
pub fn nested_headers(kind: u8, levels: usize) -> Vec<u8> {
    let key: &[u8] = if kind == b'F' { &[0] } else { &[] };
    // Built from the inside out, in one buffer: each level's prefix is 5 or 6 bytes.
    let per_level = 5 + key.len();
    let size = 5 + (levels - 1) * per_level;
    let mut value = vec![0; size];
    let mut start = size - 5;
    value[start] = kind;
    for _ in 1..levels {
        let inner = (size - start) as u32;
        start -= per_level;
        value[start] = kind;
        value[start + 1..start + 5].copy_from_slice(&(inner + key.len() as u32).to_be_bytes());
        value[start + 5..start + per_level].copy_from_slice(key);
    }
    let mut table = ((size + 2) as u32).to_be_bytes().to_vec();
    table.extend_from_slice(&short(b"d"));
    table.extend_from_slice(&value);
    table
}

/// The most levels of `kind` whose [`nested_headers`] fit in one content header frame of
/// `frame_max` bytes, next to `others` bytes of other properties.
pub fn deepest_fitting(kind: u8, frame_max: usize, others: usize) -> usize {
    // Frame prefix and end (8); class, weight, body size and flags (14); the table's length
    // and its entry's name (4 + 2).
    let room = frame_max - 8 - 14 - 6 - others;
    let per_level = if kind == b'F' { 6 } else { 5 };
    (room - 5) / per_level + 1
}
