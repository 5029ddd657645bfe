//! A bound on how deep a message's headers can nest before amiquip decodes them.
//!
//! amiquip decodes a message's `headers` (tables and arrays nested in tables) recursively on its
//! I/O thread, about 0.5–0.6 KB of stack per level in a release build and 3–4 KB in a debug
//! build. One frame of RabbitMQ's default `frame_max` (128 KiB) holds about 26,000 levels at 5
//! bytes each (an array in an array), far more than a thread's 2 MiB of stack: a single
//! published message would kill any process that receives it, before any of our code sees it.
//!
//! So every connection reads the broker's bytes through [`DepthGuard`]: it finds each content
//! header frame (the properties of a message) in the stream and, walking its headers without
//! recursion, turns every table or array nested deeper than [`FLATTENED_DEPTH`] into a byte
//! array (`x`) of the same bytes: the same length, so the frame stays valid and only its type
//! byte changes. amiquip then decodes at most that many levels, and what our code (or a library
//! user) does with the headers (drop, clone, walk) is bounded too. A server refuses a request
//! whose headers nest deeper than [`MAX_HEADER_DEPTH`] ([`crate::Properties::header_depth`]),
//! which every flattened message does. Any `frame_max` works: the walk needs no stack per level.

use mio::unix::EventedFd;
use mio::{Evented, Poll, PollOpt, Ready, Token};
use std::io::{self, Read, Write};
use std::os::unix::io::RawFd;

/// How deep a message's headers may nest: tables and arrays in tables, the `headers` table
/// itself counting as level 1 (`x-death` needs 3). A server refuses a request with deeper
/// headers (`bad-request`). Deeper levels never reach the AMQP library's decoder, which would need about
/// 0.6 KB of stack per level (3.7 KB in a debug build): every connection passes the tables and
/// arrays below level `MAX_HEADER_DEPTH + 1` on as byte arrays (byte array values, [`crate::HeaderValue::Bytes`]) of
/// the same bytes.
pub const MAX_HEADER_DEPTH: usize = 32;

/// Tables and arrays nested deeper than this (the `headers` table itself is level 1) reach
/// amiquip as byte arrays: one more than [`MAX_HEADER_DEPTH`], so that a flattened
/// message always counts as too deep.
pub const FLATTENED_DEPTH: usize = MAX_HEADER_DEPTH + 1;

/// Frame type of a content header (AMQP 0-9-1, 4.2.3).
const FRAME_HEADER: u8 = 2;
/// A frame's type (1), channel (2) and payload size (4).
const FRAME_PREFIX: usize = 7;

/// The broker's side of a connection (`S`: TCP, or TLS over it), as amiquip's I/O loop reads it:
/// content header frames pass [`flatten_deep_headers`] first. Writes pass unchanged; the
/// socket `fd` is what amiquip's poll watches.
pub struct DepthGuard<S> {
    inner: S,
    fd: RawFd,
    /// Bytes of the frame being passed through that are still to come.
    skip: usize,
    /// Bytes read but not yet handed on: from the start of a frame whose prefix or (for a
    /// content header) whole frame is not in yet.
    held: Vec<u8>,
    /// Bytes checked and ready to hand on, from `ready_at`.
    ready: Vec<u8>,
    ready_at: usize,
}

impl<S> DepthGuard<S> {
    /// Guards `inner`, a non-blocking stream on socket `fd`.
    pub fn new(inner: S, fd: RawFd) -> Self {
        DepthGuard {
            inner,
            fd,
            skip: 0,
            held: Vec::new(),
            ready: Vec::new(),
            ready_at: 0,
        }
    }

    /// Walks `data`, which starts where the last walk stopped, and flattens the headers of
    /// every whole content header frame in it. Returns how many of its bytes can be handed on:
    /// all but a last frame whose prefix, or which as a content header, is not whole.
    fn check(&mut self, data: &mut [u8]) -> usize {
        let mut pos = 0;
        loop {
            let passed = self.skip.min(data.len() - pos);
            pos += passed;
            self.skip -= passed;
            if pos == data.len() {
                return pos;
            }
            let Some(prefix) = data.get(pos..pos + FRAME_PREFIX) else {
                return pos;
            };
            let size = u32::from_be_bytes([prefix[3], prefix[4], prefix[5], prefix[6]]) as usize;
            // The payload and the frame-end byte.
            let whole = FRAME_PREFIX + size + 1;
            if prefix[0] != FRAME_HEADER {
                self.skip = whole;
                continue;
            }
            let Some(frame) = data.get_mut(pos..pos + whole) else {
                return pos;
            };
            if flatten_deep_headers(&mut frame[FRAME_PREFIX..FRAME_PREFIX + size]) {
                log::debug!(
                    "a message's headers nest deeper than {FLATTENED_DEPTH} levels: the levels \
                     below are passed on as bytes"
                );
            }
            pos += whole;
        }
    }
}

impl<S: Read> Read for DepthGuard<S> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.ready_at < self.ready.len() {
                let n = out.len().min(self.ready.len() - self.ready_at);
                out[..n].copy_from_slice(&self.ready[self.ready_at..self.ready_at + n]);
                self.ready_at += n;
                return Ok(n);
            }
            // Read straight into `out`; only a frame cut off at its end is copied aside.
            let n = self.inner.read(out)?;
            if n == 0 {
                return Ok(0);
            }
            if self.held.is_empty() {
                let checked = self.check(&mut out[..n]);
                self.held.extend_from_slice(&out[checked..n]);
                if checked > 0 {
                    return Ok(checked);
                }
            } else {
                self.held.extend_from_slice(&out[..n]);
            }
            let mut held = std::mem::take(&mut self.held);
            let checked = self.check(&mut held);
            self.held = held.split_off(checked);
            self.ready = held;
            self.ready_at = 0;
        }
    }
}

impl<S: Write> Write for DepthGuard<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<S> Evented for DepthGuard<S> {
    fn register(&self, poll: &Poll, token: Token, ready: Ready, opts: PollOpt) -> io::Result<()> {
        EventedFd(&self.fd).register(poll, token, ready, opts)
    }

    fn reregister(&self, poll: &Poll, token: Token, ready: Ready, opts: PollOpt) -> io::Result<()> {
        EventedFd(&self.fd).reregister(poll, token, ready, opts)
    }

    fn deregister(&self, poll: &Poll) -> io::Result<()> {
        EventedFd(&self.fd).deregister(poll)
    }
}

impl<S: Read + Write + Send + 'static> amiquip::IoStream for DepthGuard<S> {}

/// In the payload of a content header frame of class basic: turns every table or array in its
/// `headers` nested deeper than [`FLATTENED_DEPTH`] into a byte array of the same bytes.
/// Returns whether it changed anything. Follows amiquip's decoder (amq-protocol 1.x): what it
/// would not decode (an unknown type, a value longer than what holds it) ends the table or
/// array it is in, here as there.
pub fn flatten_deep_headers(payload: &mut [u8]) -> bool {
    // class id, weight, body size, then the property flags: 14 properties in 2 bytes.
    let Some(&[high, low]) = payload.get(12..14) else {
        return false;
    };
    let flags = u16::from_be_bytes([high, low]);
    if flags & 0x2000 == 0 {
        return false;
    }
    let mut pos = 14;
    // content-type and content-encoding (short strings) come before the headers.
    for bit in [0x8000, 0x4000] {
        if flags & bit != 0 {
            match payload.get(pos) {
                Some(&len) => pos += 1 + usize::from(len),
                None => return false,
            }
        }
    }
    flatten_table(payload, pos)
}

/// Walks the table at `start` of `buf`, with an explicit stack of the tables and arrays it is
/// in (their ends, and which are tables), flattening what is nested too deep.
fn flatten_table(buf: &mut [u8], start: usize) -> bool {
    let Some(end) = container_end(buf, start) else {
        return false;
    };
    let mut open = [(0usize, false); FLATTENED_DEPTH];
    open[0] = (end, true);
    let mut depth = 1;
    let mut pos = start + 4;
    let mut changed = false;
    while depth > 0 {
        let (end, table) = open[depth - 1];
        if table && pos < end {
            // The entry's name: a short string.
            pos += 1 + usize::from(buf[pos]);
        }
        let Some(&tag) = buf.get(pos).filter(|_| pos < end) else {
            depth -= 1;
            pos = end;
            continue;
        };
        let next = match tag {
            b't' | b'b' | b'B' => pos + 2,
            b's' | b'U' | b'u' => pos + 3,
            b'I' | b'i' | b'f' => pos + 5,
            b'L' | b'l' | b'T' | b'd' => pos + 9,
            b'D' => pos + 6,
            b'V' => pos + 1,
            b'S' | b'x' | b'F' | b'A' => container_end(buf, pos + 1).unwrap_or(usize::MAX),
            _ => usize::MAX,
        };
        if next > end {
            // amiquip stops reading this table or array here.
            depth -= 1;
            pos = end;
            continue;
        }
        if matches!(tag, b'F' | b'A') {
            if depth == FLATTENED_DEPTH {
                buf[pos] = b'x';
                changed = true;
            } else {
                open[depth] = (next, tag == b'F');
                depth += 1;
                pos += 5;
                continue;
            }
        }
        pos = next;
    }
    changed
}

/// The end of the length-prefixed value (a 4-byte length) at `pos`, if it is within `buf`.
fn container_end(buf: &[u8], pos: usize) -> Option<usize> {
    let len = buf.get(pos..pos + 4)?;
    let end = pos + 4 + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    (end <= buf.len()).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload of a content header whose headers hold `{"k": value}`.
    fn payload(value: &[u8]) -> Vec<u8> {
        let mut p = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0];
        p.extend_from_slice(&(value.len() as u32 + 2).to_be_bytes());
        p.extend_from_slice(&[1, b'k']);
        p.extend_from_slice(value);
        p
    }

    /// `depth` arrays (`A`) or tables (`F`, each entry named "") one in another.
    fn nested(kind: u8, depth: usize) -> Vec<u8> {
        let mut v = vec![kind, 0, 0, 0, 0];
        for _ in 1..depth {
            let mut outer = vec![kind];
            let key: &[u8] = if kind == b'F' { &[0] } else { &[] };
            outer.extend_from_slice(&((v.len() + key.len()) as u32).to_be_bytes());
            outer.extend_from_slice(key);
            outer.extend_from_slice(&v);
            v = outer;
        }
        v
    }

    /// The depth amq-protocol decodes, measured without recursion.
    fn decoded_depth(payload: &[u8]) -> usize {
        let mut frame = vec![FRAME_HEADER, 0, 1];
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(0xCE);
        let Ok((_, amq_protocol::frame::AMQPFrame::Header(_, _, header))) =
            amq_protocol::frame::parse_frame(&frame)
        else {
            panic!("not a content header");
        };
        let headers = header.properties.headers().clone().expect("headers");
        crate::properties::table_depth(&headers)
    }

    #[test]
    fn shallow_headers_pass_unchanged() {
        for kind in [b'A', b'F'] {
            let mut p = payload(&nested(kind, FLATTENED_DEPTH - 1));
            let before = p.clone();
            assert!(!flatten_deep_headers(&mut p));
            assert_eq!(p, before);
            assert_eq!(decoded_depth(&p), FLATTENED_DEPTH);
        }
    }

    #[test]
    fn deep_headers_are_cut_to_the_limit() {
        for kind in [b'A', b'F'] {
            for depth in [FLATTENED_DEPTH, 5_000] {
                let mut p = payload(&nested(kind, depth));
                let len = p.len();
                assert!(flatten_deep_headers(&mut p));
                assert_eq!(p.len(), len);
                assert_eq!(decoded_depth(&p), FLATTENED_DEPTH);
            }
        }
    }

    #[test]
    fn malformed_headers_are_left_to_the_decoder() {
        for cut in [0, 3, 20, 40] {
            let mut p = payload(&nested(b'F', 40));
            p.truncate(14 + cut);
            flatten_deep_headers(&mut p);
        }
        let mut unknown = payload(&[b'?', b'F', 0, 0, 0, 0]);
        assert!(!flatten_deep_headers(&mut unknown));
        let mut no_headers = vec![0; 14];
        assert!(!flatten_deep_headers(&mut no_headers));
    }

    #[test]
    fn other_values_are_skipped_by_their_size() {
        let mut value = vec![b'F'];
        let mut inner = Vec::new();
        for (name, v) in [
            (&b"a"[..], &b"t\x01"[..]),
            (b"b", b"s\x00\x01"),
            (b"c", b"I\x00\x00\x00\x01"),
            (b"d", b"l\x00\x00\x00\x00\x00\x00\x00\x01"),
            (b"e", b"D\x01\x00\x00\x00\x01"),
            (b"f", b"S\x00\x00\x00\x02hi"),
            (b"g", b"V"),
        ] {
            inner.push(name.len() as u8);
            inner.extend_from_slice(name);
            inner.extend_from_slice(v);
        }
        let deep = nested(b'A', 40);
        inner.extend_from_slice(&[1, b'h']);
        inner.extend_from_slice(&deep);
        value.extend_from_slice(&(inner.len() as u32).to_be_bytes());
        value.extend_from_slice(&inner);
        let mut p = payload(&value);
        assert!(flatten_deep_headers(&mut p));
        assert_eq!(decoded_depth(&p), FLATTENED_DEPTH);
    }

    #[test]
    fn frames_cut_anywhere_come_out_whole_and_flattened() {
        let mut stream = Vec::new();
        for kind in [b'A', b'F'] {
            let p = payload(&nested(kind, 3_000));
            stream.extend_from_slice(&[FRAME_HEADER, 0, 1]);
            stream.extend_from_slice(&(p.len() as u32).to_be_bytes());
            stream.extend_from_slice(&p);
            stream.push(0xCE);
            // A body frame.
            stream.extend_from_slice(&[3, 0, 1, 0, 0, 0, 2, b'h', b'i', 0xCE]);
        }
        let mut expected = stream.clone();
        let mut check = DepthGuard::new((), -1);
        assert_eq!(check.check(&mut expected), expected.len());
        for piece in [1, 3, 7, 100, 4096] {
            let mut guard = DepthGuard::new(Pieces(stream.chunks(piece).collect(), 0), -1);
            let mut got = Vec::new();
            let mut buf = [0; 1000];
            loop {
                match guard.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(got, expected, "pieces of {piece}");
        }
    }

    /// A stream that gives its pieces one read at a time, with a "would block" between them.
    struct Pieces<'a>(Vec<&'a [u8]>, usize);

    impl Read for Pieces<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let Some(piece) = self.0.first_mut() else {
                return Ok(0);
            };
            self.1 += 1;
            if self.1.is_multiple_of(2) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = out.len().min(piece.len());
            out[..n].copy_from_slice(&piece[..n]);
            *piece = &piece[n..];
            if piece.is_empty() {
                self.0.remove(0);
            }
            Ok(n)
        }
    }
}
