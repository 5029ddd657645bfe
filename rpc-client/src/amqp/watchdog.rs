//! Time limits on the AMQP library's blocking calls ([`Watchdog`]).
//!
//! The AMQP library waits for the broker's answer to a channel open, a declare, a consume, a cancel or
//! a close without any limit, and its connect timeout measures silence between bytes, not the
//! whole handshake. We open the TCP socket ourselves, so we keep a handle on it: a watchdog
//! thread per connection shuts the socket down when an armed deadline passes. The library's I/O
//! loop then fails, every call waiting on that connection returns at once, and the caller
//! reports what it waited for ([`Watchdog::bounded`]). The connection is abandoned: the broker
//! requeues whatever it had delivered and not been acked.

use super::error::LinkError;
use std::borrow::Cow;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Shuts a connection's socket down when a bounded call outlives its deadline.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    socket: TcpStream,
}

#[derive(Default)]
struct State {
    /// The deadline being watched, its limit and what the caller waits for.
    armed: Option<(Instant, Duration, Cow<'static, str>)>,
    /// When the watchdog thread wakes next by itself (`None`: only when woken). Arming a later
    /// deadline needs no wake-up, so a call that is bounded costs two uncontended lock
    /// operations, not two thread switches.
    waking_at: Option<Instant>,
    /// Why the socket was shut down, once it was.
    fired: Option<String>,
    /// The watchdog is being dropped.
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Shuts the socket down (once), recording why.
    fn fire(&self, state: &mut State, why: String) {
        if state.fired.is_none() {
            log::debug!("abandoning the connection: {why}");
            let _ = self.socket.shutdown(Shutdown::Both);
            state.fired = Some(why);
        }
    }
}

impl Watchdog {
    /// Watches `socket` (a clone of the connection's TCP stream).
    pub fn new(socket: TcpStream) -> Result<Watchdog, std::io::Error> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            socket,
        });
        let watched = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("rpc-watchdog".into())
            .spawn(move || watch(&watched))?;
        Ok(Watchdog {
            shared,
            thread: Some(thread),
        })
    }

    /// Watches `deadline`: if it passes before [`Watchdog::disarm`], the socket is shut down
    /// and "no answer within {limit} {what}" is recorded as the reason (`what` reads like "to
    /// the channel open"). Replaces any deadline armed before.
    pub fn arm(&self, deadline: Instant, what: impl Into<Cow<'static, str>>) {
        let limit = deadline.saturating_duration_since(Instant::now());
        self.arm_with(deadline, limit, what.into());
    }

    fn arm_with(&self, deadline: Instant, limit: Duration, what: Cow<'static, str>) {
        let mut state = self.shared.lock();
        state.armed = Some((deadline, limit, what));
        if state.waking_at.is_none_or(|at| deadline < at) {
            self.shared.wake.notify_all();
        }
    }

    /// Stops watching the armed deadline. (The thread may still wake at that deadline, to
    /// find nothing to do.)
    pub fn disarm(&self) {
        self.shared.lock().armed = None;
    }

    /// Shuts the connection down now, for `why` (a stop that must not wait).
    pub fn abandon(&self, why: impl Into<String>) {
        let mut state = self.shared.lock();
        self.shared.fire(&mut state, why.into());
    }

    /// Why the connection was abandoned, if it was.
    pub fn fired(&self) -> Option<String> {
        self.shared.lock().fired.clone()
    }

    /// Runs `call` (a blocking call of the AMQP library, whose errors convert to
    /// [`LinkError`]) with at most `limit` to answer. If the deadline
    /// passes, the connection is abandoned and the result is [`LinkError::Stalled`] naming `what`
    /// (worded to follow "no answer within 2.0s", e.g. "to the channel open");
    /// a connection abandoned earlier fails the call the same way. Other errors are returned
    /// as they are.
    pub fn bounded<T, E>(
        &self,
        what: &'static str,
        limit: Duration,
        call: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, LinkError>
    where
        LinkError: From<E>,
    {
        // One clock read and two locks per call: this wraps every publish and ack.
        self.arm_with(Instant::now() + limit, limit, Cow::Borrowed(what));
        let result = call();
        let fired = {
            let mut state = self.shared.lock();
            state.armed = None;
            state.fired.clone()
        };
        match (result, fired) {
            (Ok(value), None) => Ok(value),
            (_, Some(why)) => Err(LinkError::Stalled(why)),
            (Err(err), None) => Err(err.into()),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn watch(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.stop {
            return;
        }
        let now = Instant::now();
        match &state.armed {
            None => {
                state.waking_at = None;
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            Some((deadline, limit, what)) if now >= *deadline => {
                let why = format!("no answer within {:.1}s {what}", limit.as_secs_f64());
                state.armed = None;
                shared.fire(&mut state, why);
            }
            Some((deadline, _, _)) => {
                let deadline = *deadline;
                state.waking_at = Some(deadline);
                state = shared
                    .wake
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A connected pair of sockets on loopback: (ours, the peer's).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let ours = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (peer, _) = listener.accept().expect("accept");
        (ours, peer)
    }

    #[test]
    fn a_passed_deadline_shuts_the_socket() {
        let (ours, _peer) = pair();
        let mut reader = ours.try_clone().expect("clone");
        let watchdog = Watchdog::new(ours).expect("watchdog");
        let started = Instant::now();
        let result = watchdog.bounded("the test's read", Duration::from_millis(200), || {
            let mut buf = [0u8; 1];
            // Blocks until the socket is shut down, then reads end-of-file.
            let _ = reader.read(&mut buf);
            Ok::<_, LinkError>(())
        });
        let took = started.elapsed();
        assert!(
            matches!(&result, Err(LinkError::Stalled(why)) if why == "no answer within 0.2s the test's read"),
            "{result:?}"
        );
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert!(watchdog.fired().is_some());
    }

    #[test]
    fn a_call_in_time_is_untouched() {
        let (ours, _peer) = pair();
        let watchdog = Watchdog::new(ours).expect("watchdog");
        for _ in 0..100 {
            let value = watchdog.bounded("quick", Duration::from_secs(5), || Ok::<_, LinkError>(7));
            assert_eq!(value.ok(), Some(7));
        }
        assert_eq!(watchdog.fired(), None);
    }

    #[test]
    fn abandon_fails_later_calls() {
        let (ours, _peer) = pair();
        let watchdog = Watchdog::new(ours).expect("watchdog");
        watchdog.abandon("stopping");
        let result = watchdog.bounded(
            "anything",
            Duration::from_secs(5),
            || Ok::<_, LinkError>(()),
        );
        assert!(matches!(result, Err(LinkError::Stalled(_))), "{result:?}");
    }
}
