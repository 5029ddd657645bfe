//! `rpc-client bench`: many calls of one fib(n), throughput and latency percentiles, printed as
//! prose or as one TSV row.

use crate::error::Error;
use crate::{FibonacciRpcClient, ReplyQueue};
use hdrhistogram::Histogram;
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

/// The columns of `rpc-client bench --tsv`, in order: its header line. The echo floor bench
/// writes them too ([`TsvRow`]), and xtask's bench reads its columns by these names.
pub const TSV_COLUMNS: [&str; 11] = [
    "calls",
    "in_flight",
    "reply_queue",
    "n",
    "seconds",
    "calls_per_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "errors",
];

/// One bench result as `--tsv` prints it: the header line ([`TSV_COLUMNS`]), then the row.
#[derive(Debug, Clone, Copy)]
pub struct TsvRow<'a> {
    /// Calls timed.
    pub calls: u64,
    /// Calls outstanding at once.
    pub in_flight: u64,
    /// `exclusive` or `direct`.
    pub reply_queue: &'a str,
    /// The n of every call.
    pub n: u64,
    /// Seconds the timed calls took.
    pub seconds: f64,
    /// p50, p90, p99 and max latency in ms; `None` leaves the four columns empty.
    pub latency_ms: Option<[f64; 4]>,
    /// Calls that failed.
    pub errors: u64,
}

impl std::fmt::Display for TsvRow<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = self.calls as f64 / self.seconds.max(1e-9);
        writeln!(f, "{}", TSV_COLUMNS.join("\t"))?;
        let (calls, in_flight, queue, n) = (self.calls, self.in_flight, self.reply_queue, self.n);
        write!(
            f,
            "{calls}\t{in_flight}\t{queue}\t{n}\t{:.3}\t{rate:.0}",
            self.seconds
        )?;
        match self.latency_ms {
            Some(latency) => latency.iter().try_for_each(|ms| write!(f, "\t{ms:.3}"))?,
            None => f.write_str("\t\t\t\t")?,
        }
        writeln!(f, "\t{}", self.errors)
    }
}

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub(super) struct BenchOptions {
    /// Calls to time.
    pub calls: u64,
    /// Calls outstanding at once.
    pub in_flight: usize,
    /// The n of every call.
    pub n: u64,
    /// Untimed calls first (connection warm-up, broker caches).
    pub warmup: u64,
    /// Print a progress line on stderr about once a second.
    pub progress: bool,
}

/// What was measured.
#[derive(Debug)]
pub(super) struct BenchReport {
    /// Calls timed.
    pub calls: u64,
    /// Calls that failed or returned a different value than the first reply.
    pub errors: u64,
    /// The first failure, for the message.
    pub first_error: Option<String>,
    /// Wall time of the timed calls.
    pub elapsed: Duration,
    /// Latency of successful calls, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl BenchReport {
    /// Timed calls per second.
    pub(super) fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency quantile `q` (0..=1) in milliseconds.
    pub(super) fn latency_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1e3
    }

    /// Highest latency in milliseconds.
    pub(super) fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1e3
    }
}

impl BenchReport {
    /// Writes the report for `options` and `reply_queue`: two lines of prose, or with `tsv` a
    /// header line and one row of tab-separated values (for scripts).
    pub(super) fn write(
        &self,
        out: &mut dyn Write,
        options: &BenchOptions,
        reply_queue: ReplyQueue,
        tsv: bool,
    ) -> std::io::Result<()> {
        let reply_queue = match reply_queue {
            ReplyQueue::Exclusive => "exclusive",
            ReplyQueue::Direct => "direct",
        };
        let (p50, p90, p99, max) = (
            self.latency_ms(0.5),
            self.latency_ms(0.9),
            self.latency_ms(0.99),
            self.max_ms(),
        );
        let (calls, n, in_flight) = (self.calls, options.n, options.in_flight);
        let (seconds, rate, errors) = (self.elapsed.as_secs_f64(), self.rate(), self.errors);
        if tsv {
            let row = TsvRow {
                calls,
                in_flight: in_flight as u64,
                reply_queue,
                n,
                seconds,
                latency_ms: Some([p50, p90, p99, max]),
                errors,
            };
            write!(out, "{row}")
        } else {
            writeln!(
                out,
                "bench: {calls} calls of fib({n}), {in_flight} in flight, {reply_queue} reply queue"
            )?;
            writeln!(
                out,
                "bench: {rate:.0} calls/s ({seconds:.3} s); latency ms p50 {p50:.3} p90 {p90:.3} p99 {p99:.3} max {max:.3}; errors {errors}"
            )
        }
    }
}

/// Runs the warm-up, then the timed calls, over `client`.
pub(super) fn run(
    client: &mut FibonacciRpcClient,
    options: &BenchOptions,
) -> Result<BenchReport, Error> {
    let mut expected: Option<String> = None;
    let mut report = BenchReport {
        calls: options.calls,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        // 1 µs to 1 hour at 3 significant digits.
        // Constant, valid bounds: this cannot fail.
        latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .expect("1 µs to 1 h at 3 digits is a valid histogram"),
    };
    let n = options.n;
    client.call_many(
        (0..options.warmup).map(|_| n),
        options.in_flight,
        |_, _, result| {
            if let Ok(reply) = result {
                expected.get_or_insert(reply.value);
            }
            ControlFlow::Continue(())
        },
    )?;
    // On a terminal the line is rewritten every second; in a log, a line every 5 s.
    // (In JSON, each line is one object: no rewriting.)
    let json = super::logging::is_json();
    let terminal = std::io::stderr().is_terminal() && !json;
    let (interval, end) = if terminal {
        (Duration::from_secs(1), '\r')
    } else {
        (Duration::from_secs(5), '\n')
    };
    let started = Instant::now();
    let mut next_progress = started + interval;
    let mut done = 0u64;
    client.call_many(
        (0..options.calls).map(|_| n),
        options.in_flight,
        |_, _, result| {
            done += 1;
            match result {
                Ok(reply)
                    if expected.get_or_insert_with(|| reply.value.clone()) == &reply.value =>
                {
                    let us = u64::try_from(reply.elapsed.as_micros()).unwrap_or(u64::MAX);
                    report.latency_us.saturating_record(us.max(1));
                }
                Ok(reply) => {
                    report.errors += 1;
                    report
                        .first_error
                        .get_or_insert_with(|| format!("fib({n}) answered {}", reply.value));
                }
                Err(err) => {
                    report.errors += 1;
                    report.first_error.get_or_insert_with(|| err.to_string());
                }
            }
            if options.progress && done.is_multiple_of(256) && Instant::now() >= next_progress {
                let rate = done as f64 / started.elapsed().as_secs_f64();
                let progress = format!("{done}/{} calls, {rate:.0} calls/s", options.calls);
                if json {
                    super::logging::stderr_line(log::Level::Info, "bench", &progress);
                } else {
                    let _ = write!(std::io::stderr(), "bench: {progress}{end}");
                }
                next_progress += interval;
            }
            ControlFlow::Continue(())
        },
    )?;
    report.elapsed = started.elapsed();
    if options.progress && terminal && report.elapsed >= interval {
        let _ = writeln!(std::io::stderr());
    }
    Ok(report)
}
