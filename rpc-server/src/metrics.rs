//! What a running server exposes to Prometheus ([`Metrics`]) and to health probes, and the
//! consume loop's side of it ([`Meter`]).
//!
//! The registry (the official `prometheus-client` crate) is built once; every series the loop
//! touches is resolved then too: the counters of each outcome and of each refusal code are
//! handles kept here, so counting a request is one atomic add (no label hashing, no lock).
//! The histogram takes its own short lock per observation; a scrape ([`Metrics::encode`])
//! reads the atomics and that lock, nothing the consume loop waits on for long. Served over
//! HTTP by [`crate::http`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rpc_client::wire::ErrorCode;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every error code a reply can carry, each with its pre-resolved refusal counter.
const CODES: [ErrorCode; 6] = [
    ErrorCode::BadRequest,
    ErrorCode::TooLarge,
    ErrorCode::Internal,
    ErrorCode::Redelivered,
    ErrorCode::ExecFailed,
    ErrorCode::ExecTimeout,
];

/// Upper bounds of the handling-time buckets, in seconds: 100 µs (a small Fibonacci) to 60 s
/// (a command near its time limit).
const DURATION_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0,
];

/// The labels of `rpc_server_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    /// answered, refused, unanswered, dropped, abandoned, unconfirmed or requeued.
    outcome: &'static str,
    /// The error code of a refusal; empty (left out) otherwise.
    code: &'static str,
}

/// Where the server is, for `/readyz` and `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Not serving yet, or between connections.
    Connecting = 0,
    /// Consuming the request queue.
    Consuming = 1,
    /// A stop was asked for: finishing the requests in hand.
    Stopping = 2,
    /// The consume loop has returned.
    Stopped = 3,
}

/// The server's metrics and probe state, shared by the consume loop and the HTTP endpoint.
pub struct Metrics {
    registry: Registry,
    answered: Counter,
    dropped: Counter,
    abandoned: Counter,
    unconfirmed: Counter,
    requeued: Counter,
    refused: [Counter; CODES.len()],
    unanswered: [Counter; CODES.len()],
    duration: Histogram,
    in_hand: Gauge,
    workers_busy: Gauge,
    awaiting_confirm: Gauge,
    reconnects: Counter,
    connected: Gauge,
    blocked: Gauge,
    phase: AtomicU8,
    blocked_now: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("phase", &self.phase())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The registry with every series of the server (see the README's metrics table).
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("rpc_server");
        let requests = Family::<Outcome, Counter>::default();
        let series = |outcome: &'static str, code: &'static str| {
            requests.get_or_create_owned(&Outcome { outcome, code })
        };
        let answered = series("answered", "");
        let dropped = series("dropped", "");
        let abandoned = series("abandoned", "");
        let unconfirmed = series("unconfirmed", "");
        let requeued = series("requeued", "");
        let refused = CODES.map(|code| series("refused", code.as_str()));
        let unanswered = CODES.map(|code| series("unanswered", code.as_str()));
        registry.register(
            "requests",
            "Requests by outcome: answered (a result), refused (an error reply, by code), \
             dropped (no reply_to, or the caller's deadline passed), abandoned (the caller's \
             deadline passed while it was handled: the work was ended, no reply), unconfirmed \
             (a reply the broker refused or did not confirm; the request goes back to the \
             queue), requeued (a redelivered request re-queued with its count of attempts)",
            requests,
        );
        let duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "request_duration_seconds",
            "Time the handler took per request (for a command, its wall time)",
            duration.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let in_hand = gauge(
            &mut registry,
            "requests_in_hand",
            "Requests received and not yet acked",
        );
        let workers_busy = gauge(
            &mut registry,
            "workers_busy",
            "Requests a worker thread is handling (with --workers above 1)",
        );
        let awaiting_confirm = gauge(
            &mut registry,
            "replies_awaiting_confirm",
            "Replies published and not yet confirmed by the broker (with --confirm-replies)",
        );
        let reconnects = Counter::default();
        registry.register(
            "reconnects",
            "Connections lost (or attempts failed) after which the server tried again",
            reconnects.clone(),
        );
        let connected = gauge(
            &mut registry,
            "connected",
            "1 while the server is connected and consuming its request queue",
        );
        let blocked = gauge(
            &mut registry,
            "broker_blocking_publishers",
            "1 while the broker blocks this server's publishes (a resource alarm)",
        );
        // A gauge of 1 labelled with the version, as Prometheus' own *_build_info: the
        // OpenMetrics info type is unknown to Prometheus' text format (promtool).
        let build = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build
            .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("build_info", "The server's version (always 1)", build);
        Metrics {
            registry,
            answered,
            dropped,
            abandoned,
            unconfirmed,
            requeued,
            refused,
            unanswered,
            duration,
            in_hand,
            workers_busy,
            awaiting_confirm,
            reconnects,
            connected,
            blocked,
            phase: AtomicU8::new(Phase::Connecting as u8),
            blocked_now: AtomicBool::new(false),
        }
    }

    /// The exposition in the OpenMetrics text format (what `prometheus-client` writes, and
    /// what Prometheus asks for), or else in Prometheus' older text format 0.0.4, which
    /// `promtool check metrics` and other tools read: there a counter's `# HELP` and `# TYPE`
    /// name its samples' `_total` name, and there is no `# EOF`.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut text = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        if openmetrics {
            return text;
        }
        let mut plain = String::with_capacity(text.len());
        let mut help: Option<&str> = None;
        for line in text.lines() {
            if line == "# EOF" {
                continue;
            }
            if line.starts_with("# HELP ") {
                if let Some(earlier) = help.replace(line) {
                    plain.push_str(earlier);
                    plain.push('\n');
                }
                continue;
            }
            let counter = line
                .strip_prefix("# TYPE ")
                .and_then(|rest| rest.strip_suffix(" counter"));
            if let Some(held) = help.take() {
                match counter {
                    Some(name) => plain.push_str(&held.replacen(name, &format!("{name}_total"), 1)),
                    None => plain.push_str(held),
                }
                plain.push('\n');
            }
            match counter {
                Some(name) => {
                    plain.push_str(&format!("# TYPE {name}_total counter"));
                }
                None => plain.push_str(line),
            }
            plain.push('\n');
        }
        plain
    }

    /// Where the server is.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Connecting,
            1 => Phase::Consuming,
            2 => Phase::Stopping,
            _ => Phase::Stopped,
        }
    }

    /// Ready for requests: consuming, and the broker does not block its publishes.
    pub fn ready(&self) -> bool {
        self.phase() == Phase::Consuming && !self.blocked_now.load(Ordering::Relaxed)
    }

    /// Alive: the consume loop runs (serving, connecting or reconnecting).
    pub fn alive(&self) -> bool {
        self.phase() != Phase::Stopped
    }

    fn set_phase(&self, phase: Phase) {
        // A stop is never undone by a later (re)connection.
        let _ = self
            .phase
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                let stopping = now >= Phase::Stopping as u8;
                (!stopping || phase as u8 > now).then_some(phase as u8)
            });
        self.connected.set(i64::from(phase == Phase::Consuming));
    }

    fn set_blocked(&self, blocked: bool) {
        self.blocked_now.store(blocked, Ordering::Relaxed);
        self.blocked.set(i64::from(blocked));
    }
}

/// The consume loop's handle on [`Metrics`]: each event is one call, which does nothing when
/// the server runs without metrics.
#[derive(Debug, Clone, Default)]
pub struct Meter(Option<Arc<Metrics>>);

impl Meter {
    /// Counts into `metrics` (none: counts nothing).
    pub fn new(metrics: Option<Arc<Metrics>>) -> Meter {
        Meter(metrics)
    }

    /// A reply with a result, done with (published, or confirmed).
    #[inline]
    pub fn answered(&self) {
        if let Some(m) = &self.0 {
            m.answered.inc();
        }
    }

    /// An error reply with `code`, done with.
    #[inline]
    pub fn refused(&self, code: ErrorCode) {
        if let Some(m) = &self.0 {
            if let Some(i) = CODES.iter().position(|c| *c == code) {
                m.refused[i].inc();
            }
        }
    }

    /// A request refused with `code` and acked without a reply: its caller did not ask for
    /// error replies.
    #[inline]
    pub fn unanswered(&self, code: ErrorCode) {
        if let Some(m) = &self.0 {
            if let Some(i) = CODES.iter().position(|c| *c == code) {
                m.unanswered[i].inc();
            }
        }
    }

    /// A request acked without a reply.
    #[inline]
    pub fn dropped(&self) {
        if let Some(m) = &self.0 {
            m.dropped.inc();
        }
    }

    /// A request whose caller's deadline passed while it was handled: its work was ended, and
    /// it was acked without a reply.
    #[inline]
    pub fn abandoned(&self) {
        if let Some(m) = &self.0 {
            m.abandoned.inc();
        }
    }

    /// `count` replies the broker refused or never confirmed.
    #[inline]
    pub fn unconfirmed(&self, count: usize) {
        if let Some(m) = &self.0 {
            m.unconfirmed.inc_by(count as u64);
        }
    }

    /// A redelivered request re-queued with its count of attempts.
    #[inline]
    pub fn requeued(&self) {
        if let Some(m) = &self.0 {
            m.requeued.inc();
        }
    }

    /// The handler took `took` for one request.
    #[inline]
    pub fn handled(&self, took: Duration) {
        if let Some(m) = &self.0 {
            m.duration.observe(took.as_secs_f64());
        }
    }

    /// The loop's state after an event: requests received and not acked, workers busy,
    /// replies awaiting their confirm.
    #[inline]
    pub fn load(&self, in_hand: usize, busy: usize, awaiting_confirm: usize) {
        if let Some(m) = &self.0 {
            m.load(in_hand, busy, awaiting_confirm);
        }
    }

    /// Consuming on a new connection.
    pub fn consuming(&self) {
        if let Some(m) = &self.0 {
            m.set_phase(Phase::Consuming);
        }
    }

    /// The connection is gone (or could not be made); the server tries again.
    pub fn disconnected(&self, reconnecting: bool) {
        if let Some(m) = &self.0 {
            m.set_phase(Phase::Connecting);
            m.set_blocked(false);
            m.load(0, 0, 0);
            if reconnecting {
                m.reconnects.inc();
            }
        }
    }

    /// The broker blocks (`true`) or unblocks this connection's publishers.
    pub fn blocked(&self, blocked: bool) {
        if let Some(m) = &self.0 {
            m.set_blocked(blocked);
        }
    }

    /// A stop was asked for.
    pub fn stopping(&self) {
        if let Some(m) = &self.0 {
            m.set_phase(Phase::Stopping);
        }
    }

    /// The consume loop has returned.
    pub fn stopped(&self) {
        if let Some(m) = &self.0 {
            m.set_phase(Phase::Stopped);
        }
    }

    /// Calls [`Meter::stopped`] when dropped: however the consume loop returns.
    pub fn stopped_on_drop(&self) -> StoppedOnDrop {
        StoppedOnDrop(self.clone())
    }
}

/// See [`Meter::stopped_on_drop`].
#[derive(Debug)]
pub struct StoppedOnDrop(Meter);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.stopped();
    }
}

impl Metrics {
    fn load(&self, in_hand: usize, busy: usize, awaiting_confirm: usize) {
        self.in_hand.set(in_hand as i64);
        self.workers_busy.set(busy as i64);
        self.awaiting_confirm.set(awaiting_confirm as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_counts() {
        let metrics = Arc::new(Metrics::new());
        let meter = Meter::new(Some(Arc::clone(&metrics)));
        meter.consuming();
        meter.answered();
        meter.answered();
        meter.refused(ErrorCode::TooLarge);
        meter.unanswered(ErrorCode::BadRequest);
        meter.dropped();
        meter.abandoned();
        meter.handled(Duration::from_millis(3));
        meter.load(2, 1, 0);
        let text = metrics.encode(true);
        let plain = metrics.encode(false);
        assert!(
            plain.contains("# TYPE rpc_server_requests_total counter\n"),
            "{plain}"
        );
        assert!(
            plain.contains("# HELP rpc_server_reconnects_total "),
            "{plain}"
        );
        assert!(!plain.contains("# EOF"), "{plain}");
        for line in [
            "rpc_server_requests_total{outcome=\"answered\",code=\"\"} 2",
            "rpc_server_requests_total{outcome=\"refused\",code=\"too-large\"} 1",
            "rpc_server_requests_total{outcome=\"refused\",code=\"exec-timeout\"} 0",
            "rpc_server_requests_total{outcome=\"unanswered\",code=\"bad-request\"} 1",
            "rpc_server_requests_total{outcome=\"unanswered\",code=\"too-large\"} 0",
            "rpc_server_requests_total{outcome=\"dropped\",code=\"\"} 1",
            "rpc_server_requests_total{outcome=\"abandoned\",code=\"\"} 1",
            "rpc_server_request_duration_seconds_count 1",
            "rpc_server_requests_in_hand 2",
            "rpc_server_workers_busy 1",
            "rpc_server_connected 1",
            "rpc_server_broker_blocking_publishers 0",
            "rpc_server_reconnects_total 0",
            "# TYPE rpc_server_request_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
        assert!(text.contains("rpc_server_build_info{version=\""), "{text}");
        assert!(metrics.ready());
        meter.blocked(true);
        assert!(!metrics.ready());
        meter.blocked(false);
        meter.stopping();
        assert!(!metrics.ready() && metrics.alive());
        // A stop is not undone by a reconnection.
        meter.consuming();
        assert_eq!(metrics.phase(), Phase::Stopping);
        meter.stopped();
        assert!(!metrics.alive());
    }

    #[test]
    fn without_metrics_nothing_is_counted() {
        let meter = Meter::default();
        meter.answered();
        meter.refused(ErrorCode::Internal);
        meter.disconnected(true);
    }
}
