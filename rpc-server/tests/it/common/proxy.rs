//! A TCP proxy between a client and the broker that can stop forwarding without closing the
//! sockets (a stalled link) or pass the broker's bytes one per second (a trickle), to test that
//! every wait on the network has a deadline.
//!
//! The proxy reads the client's AMQP frames, so a stall can start exactly at a given method
//! (the callback queue's declare, a publish, the connection's close): that frame and all after
//! it are held back, both ways, and the connection's sockets stay open.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// AMQP method ids (class, method) to stall on.
pub mod method {
    /// `queue.declare`.
    pub const QUEUE_DECLARE: (u16, u16) = (50, 10);
    /// `basic.publish`.
    pub const BASIC_PUBLISH: (u16, u16) = (60, 40);
    /// `connection.close`.
    pub const CONNECTION_CLOSE: (u16, u16) = (10, 50);
}

/// What the proxy does with the connections it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass everything at once.
    Forward,
    /// Pass nothing more, either way, from now on; keep the sockets open.
    Stall,
    /// Pass everything until the client sends this method, then stall.
    StallOn((u16, u16)),
    /// Pass the broker's bytes at one per second; the client's at once.
    Trickle,
}

/// How often idle pumps look at the mode and the stop flag.
const TICK: Duration = Duration::from_millis(20);

struct Shared {
    mode: Mutex<Mode>,
    /// Set once a `StallOn` method was seen (or `Stall` was set): stays stalled.
    stalled: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst) || self.mode() == Mode::Stall
    }
}

/// A proxy on `127.0.0.1:<port>` forwarding to an upstream address; stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `upstream`.
    pub fn start(upstream: SocketAddr, mode: Mode) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            stalled: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let threads = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let shared = Arc::clone(&shared);
            let threads = Arc::clone(&threads);
            std::thread::spawn(move || accept(&listener, upstream, &shared, &threads))
        };
        Ok(Proxy {
            addr,
            shared,
            threads,
            acceptor: Some(acceptor),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the proxy does from now on (`Forward` also ends a stall).
    pub fn set_mode(&self, mode: Mode) {
        *self
            .shared
            .mode
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = mode;
        if mode == Mode::Forward {
            self.shared.stalled.store(false, Ordering::SeqCst);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn accept(
    listener: &TcpListener,
    upstream: SocketAddr,
    shared: &Arc<Shared>,
    threads: &Mutex<Vec<JoinHandle<()>>>,
) {
    while !shared.stop.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(TICK);
                continue;
            }
            Err(_) => continue,
        };
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let pair = (|| Ok::<_, io::Error>((client.try_clone()?, server.try_clone()?)))();
        let Ok((client2, server2)) = pair else {
            continue;
        };
        for stream in [&client, &server] {
            let _ = stream.set_nodelay(true);
            let _ = stream.set_read_timeout(Some(TICK));
        }
        let to_server = {
            let shared = Arc::clone(shared);
            std::thread::spawn(move || pump_client_frames(client, server2, &shared))
        };
        let to_client = {
            let shared = Arc::clone(shared);
            std::thread::spawn(move || pump_broker_bytes(server, client2, &shared))
        };
        let mut threads = threads.lock().unwrap_or_else(PoisonError::into_inner);
        threads.push(to_server);
        threads.push(to_client);
    }
}

/// Reads into `buf` what arrives within one tick: `Ok(0)` at end of stream, `Err` of kind
/// `WouldBlock`/`TimedOut` when nothing came.
fn read_some(from: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    from.read(buf)
}

fn idle(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Client to broker: passes whole frames, and starts the stall at the `StallOn` method.
fn pump_client_frames(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut pending: Vec<u8> = Vec::new();
    let mut header_done = false;
    let mut buf = [0u8; 16 * 1024];
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.stalled() {
            std::thread::sleep(TICK);
            continue;
        }
        match read_some(&mut from, &mut buf) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(err) if idle(&err) => continue,
            Err(_) => break,
        }
        // The protocol header, then frames: type (1), channel (2), size (4), payload, 0xCE.
        loop {
            let take = if !header_done {
                if pending.len() < 8 {
                    break;
                }
                header_done = true;
                8
            } else {
                if pending.len() < 7 {
                    break;
                }
                let size = u32::from_be_bytes([pending[3], pending[4], pending[5], pending[6]]);
                let total = 7 + size as usize + 1;
                if pending.len() < total {
                    break;
                }
                if let Mode::StallOn(wanted) = shared.mode() {
                    if pending[0] == 1 && size >= 4 {
                        let class = u16::from_be_bytes([pending[7], pending[8]]);
                        let method = u16::from_be_bytes([pending[9], pending[10]]);
                        if (class, method) == wanted {
                            shared.stalled.store(true, Ordering::SeqCst);
                            break;
                        }
                    }
                }
                total
            };
            if to.write_all(&pending[..take]).is_err() {
                return;
            }
            pending.drain(..take);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Broker to client: passes bytes at once, one per second in `Trickle` mode, none when stalled.
fn pump_broker_bytes(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.stalled() {
            std::thread::sleep(TICK);
            continue;
        }
        let trickle = shared.mode() == Mode::Trickle;
        let limit = if trickle { 1 } else { buf.len() };
        match read_some(&mut from, &mut buf[..limit]) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
                if trickle {
                    // A second between bytes, watching for the stop.
                    for _ in 0..50 {
                        if shared.stop.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(TICK);
                    }
                }
            }
            Err(err) if idle(&err) => continue,
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
