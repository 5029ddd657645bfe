//! The HTTP endpoint of `--metrics-addr` ([`Endpoint`]): `GET /metrics` (Prometheus' text
//! format), `GET /healthz` (liveness) and `GET /readyz` (readiness), from [`Metrics`]; `HEAD`
//! of each gives the same head, `Content-Length` included, without the body.
//!
//! It runs on threads of its own and can never stall serving: an accept thread hands each
//! connection to a thread of its own, at most [`MAX_CONNECTIONS`] at once. Each connection
//! has [`REQUEST_DEADLINE`] for its whole request head (at most [`MAX_HEAD`] bytes) and
//! [`IO_TIMEOUT`] for its whole response, answers one request and is closed. When every
//! slot is taken, the next connection is accepted and waits while the oldest connection
//! that has held its slot for [`EVICT_AFTER`] is closed to make room (it is sending its
//! request slowly, or reading its response slowly, or sending nothing: a probe or a scrape
//! sends its request at once and is answered within a millisecond). So a slow or idle client
//! can hold a slot for at most [`EVICT_AFTER`] while others wait, the connections behind the
//! accepted one wait in the listen backlog, in order, and a probe is answered after at most
//! about `(connections ahead of it / MAX_CONNECTIONS) × EVICT_AFTER`, whatever the slow
//! clients do. A scrape reads atomics and the histogram's short lock (see
//! [`crate::metrics`]). Requests are parsed by `httparse`; see the README on why not a
//! server crate.

use crate::error::Error;
use crate::metrics::Metrics;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Connections served at once (a thread each); more wait, see [`EVICT_AFTER`].
pub const MAX_CONNECTIONS: usize = 16;
/// The longest a connection may take to take in its whole response.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a client may take to send its whole request head.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(3);
/// While every slot is taken and a connection waits for one, a connection that has held
/// its slot this long is closed to make room, oldest first.
pub const EVICT_AFTER: Duration = Duration::from_millis(100);
/// The largest request head read; a longer one is answered 431.
pub const MAX_HEAD: usize = 8 * 1024;

/// A listening endpoint; it serves until the process exits.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
}

impl Endpoint {
    /// Listens on `addr` (`HOST:PORT`) and serves `metrics` from threads of its own. An
    /// address that cannot be resolved or bound is a configuration error (exit 2).
    pub fn start(addr: &str, metrics: Arc<Metrics>) -> Result<Endpoint, Error> {
        let resolved: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|err| {
                Error::Config(format!(
                    "--metrics-addr {addr}: not a HOST:PORT address: {err}"
                ))
            })?
            .collect();
        let listener = TcpListener::bind(&resolved[..]).map_err(|err| {
            Error::Config(format!("cannot listen on --metrics-addr {addr}: {err}"))
        })?;
        let local = listener
            .local_addr()
            .map_err(|err| Error::Config(format!("--metrics-addr {addr}: {err}")))?;
        std::thread::Builder::new()
            .name("metrics-accept".into())
            .spawn(move || accept(listener, metrics))
            .map_err(|err| Error::Config(format!("cannot start the metrics thread: {err}")))?;
        Ok(Endpoint { addr: local })
    }

    /// The address it listens on (with the port the system chose for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Accepts connections for ever, each served on a thread of its own within the limits.
fn accept(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(Slots::default());
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, a connection reset before accept: try again soon,
                // without spinning.
                log::debug!("metrics endpoint: accept failed: {err}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        next_id += 1;
        let Some(guard) = slots.admit(&stream, next_id) else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        let spawned = std::thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || {
                let _guard = guard;
                serve(stream, &metrics);
            });
        if let Err(err) = spawned {
            log::debug!("metrics endpoint: cannot start a thread: {err}");
        }
    }
}

/// The connections being served: when each was admitted, and a handle to close it early.
#[derive(Default)]
struct Slots {
    table: Mutex<Vec<Slot>>,
    freed: Condvar,
}

/// A connection being served; `stream` is taken when it is closed to make room.
struct Slot {
    id: u64,
    since: Instant,
    stream: Option<TcpStream>,
}

impl Slots {
    fn table(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for `stream` (connection number `id`), once one is free: while all are taken,
    /// the oldest connection that has held its slot for [`EVICT_AFTER`] is shut down (its
    /// thread then ends at once). `None` if `stream` cannot be cloned (out of descriptors).
    fn admit(self: &Arc<Self>, stream: &TcpStream, id: u64) -> Option<SlotGuard> {
        let handle = match stream.try_clone() {
            Ok(handle) => handle,
            Err(err) => {
                log::debug!("metrics endpoint: {err}");
                return None;
            }
        };
        let mut table = self.table();
        while table.len() >= MAX_CONNECTIONS {
            let now = Instant::now();
            let oldest = table
                .iter_mut()
                .filter(|slot| slot.stream.is_some())
                .min_by_key(|slot| slot.since);
            let wait = match oldest {
                Some(slot) if now >= slot.since + EVICT_AFTER => {
                    if let Some(evicted) = slot.stream.take() {
                        let _ = evicted.shutdown(Shutdown::Both);
                    }
                    EVICT_AFTER
                }
                Some(slot) => slot.since + EVICT_AFTER - now,
                // All are being shut down; each ends at once.
                None => EVICT_AFTER,
            };
            table = self
                .freed
                .wait_timeout(table, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        table.push(Slot {
            id,
            since: Instant::now(),
            stream: Some(handle),
        });
        Some(SlotGuard {
            slots: Arc::clone(self),
            id,
        })
    }
}

/// Holds connection `id`'s slot until dropped.
struct SlotGuard {
    slots: Arc<Slots>,
    id: u64,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.table().retain(|slot| slot.id != self.id);
        self.slots.freed.notify_one();
    }
}

/// Reads one request head (within the limits) and answers it.
fn serve(stream: TcpStream, metrics: &Metrics) {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let path = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or("");
                let path = request.path.unwrap_or("").to_string();
                if method != "GET" && method != "HEAD" {
                    respond(&stream, 405, "text/plain", b"only GET\n", false);
                    return;
                }
                // Prometheus asks for OpenMetrics; curl and promtool get the older format.
                let openmetrics = request.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("accept")
                        && String::from_utf8_lossy(h.value).contains("application/openmetrics-text")
                });
                break (path, method == "HEAD", openmetrics);
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => {
                respond(&stream, 400, "text/plain", b"bad request\n", false);
                return;
            }
        }
        if head.len() >= MAX_HEAD {
            respond(
                &stream,
                431,
                "text/plain",
                b"request head too large\n",
                false,
            );
            return;
        }
        // Each read waits at most until the deadline of the whole head (a zero timeout
        // would mean none).
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match (&stream).read(&mut buf) {
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n.min(MAX_HEAD - head.len())]),
        }
    };
    let (path, head_only, openmetrics) = path;
    // The query string (e.g. a probe's cache buster) does not matter.
    let route = path.split('?').next().unwrap_or("");
    let (status, content_type, body): (u16, &str, Vec<u8>) = match route {
        "/metrics" if openmetrics => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(true).into_bytes(),
        ),
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(false).into_bytes(),
        ),
        "/healthz" if metrics.alive() => (200, "text/plain", b"ok\n".to_vec()),
        "/healthz" => (503, "text/plain", b"stopped\n".to_vec()),
        "/readyz" if metrics.ready() => (200, "text/plain", b"ready\n".to_vec()),
        "/readyz" => (
            503,
            "text/plain",
            format!("not ready: {:?}\n", metrics.phase())
                .to_lowercase()
                .into_bytes(),
        ),
        _ => (
            404,
            "text/plain",
            b"not found: try /metrics, /healthz, /readyz\n".to_vec(),
        ),
    };
    respond(&stream, status, content_type, &body, head_only);
}

/// Writes a whole response within [`IO_TIMEOUT`] (for `HEAD`, the head alone, with the
/// length of `body`) and closes the connection.
fn respond(stream: &TcpStream, status: u16, content_type: &str, body: &[u8], head_only: bool) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body);
    }
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut unsent = &response[..];
    while !unsent.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_write_timeout(Some(left)).is_err() {
            return;
        }
        match (&*stream).write(unsent) {
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => return,
            Ok(n) => unsent = &unsent[n..],
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}
