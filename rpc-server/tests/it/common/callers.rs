//! [`Callers`]: threads of [`Caller`]s making calls back to back while a fault is injected,
//! each call recorded as a [`Call`].

use super::caller::Caller;
use super::load::{right_answers, Call, Outcome, BEFORE};
use super::lock;
use rpc_client::ClientOptions;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a caller of [`Callers`] pauses after each call (pacing, not synchronisation).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// After a right answer (keeps the CPU use modest).
    pub right: Duration,
    /// After anything else (a broker that is down is not hammered).
    pub error: Duration,
}

/// A call in progress.
#[derive(Clone, Copy)]
struct InCall {
    started: Instant,
    budget: Duration,
    n: u64,
    phase: u8,
}

struct Shared {
    t0: Instant,
    stop: AtomicBool,
    phase: AtomicU8,
    calls: Mutex<Vec<Call>>,
    /// Per caller, the call it is in, if any.
    in_call: Vec<Mutex<Option<InCall>>>,
    /// Per caller: connections made.
    connects: Vec<AtomicU64>,
}

/// Caller threads making calls back to back until stopped; see [`Callers::start`].
pub struct Callers {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

/// What the callers did, once stopped.
pub struct CallerReport {
    pub calls: Vec<Call>,
    /// When the callers were told to stop, from their start.
    pub stopped_at: Duration,
    /// Connections made, per caller.
    pub connects: Vec<u64>,
}

impl CallerReport {
    /// Connections made by all callers.
    pub fn total_connects(&self) -> u64 {
        self.connects.iter().sum()
    }
}

impl Callers {
    /// One thread per element of `options`: caller `i` calls fib(`n_of(i, k)`) for k = 0, 1, …
    /// with those options, pausing after each call as `pace` says.
    pub fn start(options: Vec<ClientOptions>, n_of: fn(usize, u64) -> u64, pace: Pace) -> Callers {
        Callers::start_callers(options.into_iter().map(Caller::new).collect(), n_of, pace)
    }

    /// One thread per caller of `callers` (see [`Callers::start`]); caller `i` is the i-th.
    pub fn start_callers(callers: Vec<Caller>, n_of: fn(usize, u64) -> u64, pace: Pace) -> Callers {
        let count = callers.len();
        let shared = Arc::new(Shared {
            t0: Instant::now(),
            stop: AtomicBool::new(false),
            phase: AtomicU8::new(BEFORE),
            calls: Mutex::new(Vec::new()),
            in_call: (0..count).map(|_| Mutex::new(None)).collect(),
            connects: (0..count).map(|_| AtomicU64::new(0)).collect(),
        });
        let handles = callers
            .into_iter()
            .enumerate()
            .map(|(index, mut caller)| {
                caller.index = index;
                caller.t0 = shared.t0;
                let shared = Arc::clone(&shared);
                thread::spawn(move || caller_loop(caller, n_of, pace, &shared))
            })
            .collect();
        Callers { shared, handles }
    }

    /// Calls started from now on are in `phase`.
    pub fn set_phase(&self, phase: u8) {
        self.shared.phase.store(phase, Ordering::SeqCst);
    }

    /// Time since the callers started.
    pub fn since_start(&self) -> Duration {
        self.shared.t0.elapsed()
    }

    /// Right answers so far.
    pub fn answers(&self) -> u64 {
        right_answers(&lock(&self.shared.calls))
    }

    /// Right answers so far by `server`.
    pub fn answers_by(&self, server: &str) -> u64 {
        self.answers_by_server().get(server).copied().unwrap_or(0)
    }

    /// Right answers so far to calls that started in `phase`.
    pub fn answers_in_phase(&self, phase: u8) -> u64 {
        let calls = lock(&self.shared.calls);
        calls
            .iter()
            .filter(|c| c.phase == phase && c.outcome == Outcome::Right)
            .count() as u64
    }

    /// Right answers so far, per server name.
    pub fn answers_by_server(&self) -> BTreeMap<String, u64> {
        let mut by = BTreeMap::new();
        for call in lock(&self.shared.calls).iter() {
            if call.outcome == Outcome::Right {
                if let Some(server) = &call.server {
                    *by.entry(server.clone()).or_default() += 1;
                }
            }
        }
        by
    }

    /// Right answers so far, per caller (by index).
    pub fn answers_by_caller(&self) -> Vec<u64> {
        let mut by = vec![0; self.shared.in_call.len()];
        for call in lock(&self.shared.calls).iter() {
            if call.outcome == Outcome::Right {
                if let Some(count) = by.get_mut(call.caller) {
                    *count += 1;
                }
            }
        }
        by
    }

    /// Waits up to `within` until `condition` holds for the callers; panics otherwise.
    pub fn wait(&self, what: &str, within: Duration, condition: impl Fn(&Callers) -> bool) {
        rpc_client::testing::wait_until(what, within, || Ok(condition(self))).unwrap_or_else(
            |err| {
                panic!(
                    "{err} (answers so far: {}, by server: {:?})",
                    self.answers(),
                    self.answers_by_server()
                )
            },
        );
    }

    /// Stops the callers after their current call. A caller still in its call when that call
    /// is over its budget (plus a second) is hung: its call is recorded as lost, its thread
    /// left to end on its own.
    pub fn finish(mut self) -> CallerReport {
        self.shared.stop.store(true, Ordering::SeqCst);
        let stopped_at = self.shared.t0.elapsed();
        let longest_budget = lock(&self.shared.calls)
            .iter()
            .map(|c| c.budget)
            .chain(
                self.shared
                    .in_call
                    .iter()
                    .filter_map(|c| lock(c).map(|c| c.budget)),
            )
            .max()
            .unwrap_or(Duration::ZERO);
        let deadline = Instant::now() + longest_budget + Duration::from_secs(1);
        while self.handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20)); // polling interval
        }
        let mut calls = lock(&self.shared.calls).clone();
        for (index, handle) in self.handles.drain(..).enumerate() {
            if handle.is_finished() {
                if handle.join().is_err() {
                    panic!("caller c{} panicked", index + 1);
                }
            } else if let Some(call) = *lock(&self.shared.in_call[index]) {
                calls.push(Call {
                    caller: index,
                    n: call.n,
                    phase: call.phase,
                    at: call.started - self.shared.t0,
                    elapsed: call.started.elapsed(),
                    budget: call.budget,
                    outcome: Outcome::Lost,
                    detail: "never returned".into(),
                    server: None,
                });
            }
        }
        let connects = self
            .shared
            .connects
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect();
        CallerReport {
            calls,
            stopped_at,
            connects,
        }
    }
}

impl Drop for Callers {
    fn drop(&mut self) {
        // On a panic: stop them; threads still in a call are left to end on their own.
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

/// One caller of [`Callers`]: calls back to back until stopped.
fn caller_loop(mut caller: Caller, n_of: fn(usize, u64) -> u64, pace: Pace, shared: &Shared) {
    let index = caller.index;
    let mut k = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        let n = n_of(index, k);
        k += 1;
        let phase = shared.phase.load(Ordering::SeqCst);
        let started = Instant::now();
        // The longest this call may take: a connect to every broker first, if needed.
        let budget = caller.budget();
        *lock(&shared.in_call[index]) = Some(InCall {
            started,
            budget,
            n,
            phase,
        });
        let mut call = caller.call(n);
        *lock(&shared.in_call[index]) = None;
        shared.connects[index].store(caller.connects, Ordering::SeqCst);
        call.phase = phase;
        let right = call.outcome == Outcome::Right;
        lock(&shared.calls).push(call);
        thread::sleep(if right { pace.right } else { pace.error });
    }
}
