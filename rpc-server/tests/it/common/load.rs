//! Load under faults: calls and how they ended, the phases of a run, the tally and the results
//! table, the checks and notes of a run. The callers that make the calls are in
//! [`super::callers`].

use super::secs;
use std::time::{Duration, Instant};

/// A call that has not returned within its timeout (plus its connects) plus this is hung.
pub const GRACE: Duration = Duration::from_secs(2);

/// Phases of a run: when a call started, relative to the fault.
pub const BEFORE: u8 = 0;
/// While the fault is being injected.
pub const DURING: u8 = 1;
/// After the fault.
pub const AFTER: u8 = 2;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The right result.
    Right,
    /// A clear error: a lost connection, one that could not be made, an expected error reply.
    Error,
    /// No reply, as the contract says (a request without `reply_to`).
    NoReply,
    /// A result that is not fib(n), or an error reply where none (or another) was due.
    Wrong,
    /// Should have been answered, but timed out or got no answer.
    Lost,
}

/// One call (or raw request) and how it ended.
#[derive(Debug, Clone)]
pub struct Call {
    /// The caller that made it (0 for a lone caller).
    pub caller: usize,
    /// Its argument (for raw requests, an index).
    pub n: u64,
    /// The phase in which it started.
    pub phase: u8,
    /// When it started, from the start of its caller(s).
    pub at: Duration,
    /// How long it took.
    pub elapsed: Duration,
    /// Timeout + grace (+ connects): a call that took longer is hung.
    pub budget: Duration,
    /// How it ended.
    pub outcome: Outcome,
    /// The error, or what was wrong.
    pub detail: String,
    /// The server that answered, if one did.
    pub server: Option<String>,
}

impl Call {
    /// A call of fib(n) that started at `started`, ended now, in phase [`BEFORE`].
    pub fn new(
        n: u64,
        outcome: Outcome,
        detail: String,
        started: Instant,
        budget: Duration,
    ) -> Call {
        Call {
            caller: 0,
            n,
            phase: BEFORE,
            at: Duration::ZERO,
            elapsed: started.elapsed(),
            budget,
            outcome,
            detail,
            server: None,
        }
    }

    /// It took longer than its budget.
    pub fn hung(&self) -> bool {
        self.elapsed > self.budget
    }

    /// Wrong, lost or hung.
    pub fn bad(&self) -> bool {
        matches!(self.outcome, Outcome::Wrong | Outcome::Lost) || self.hung()
    }

    /// One line for the list of bad calls.
    pub fn describe(&self) -> String {
        format!(
            "{:?}: c{} fib({}) at {:.2}s took {:.2}s (budget {:.0}s): {}",
            self.outcome,
            self.caller + 1,
            self.n,
            secs(self.at),
            secs(self.elapsed),
            secs(self.budget),
            self.detail
        )
    }
}

/// Right answers of `calls`.
pub fn right_answers(calls: &[Call]) -> u64 {
    calls.iter().filter(|c| c.outcome == Outcome::Right).count() as u64
}

/// How many calls ended which way.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub calls: u64,
    pub right: u64,
    pub errors: u64,
    pub no_reply: u64,
    pub wrong: u64,
    pub lost: u64,
    pub hung: u64,
    /// The longest call.
    pub longest: Duration,
}

impl Tally {
    /// The tally of `calls`.
    pub fn of<'a>(calls: impl IntoIterator<Item = &'a Call>) -> Tally {
        let mut tally = Tally::default();
        for call in calls {
            tally.count(call);
        }
        tally
    }

    /// Counts one call.
    pub fn count(&mut self, call: &Call) {
        self.calls += 1;
        match call.outcome {
            Outcome::Right => self.right += 1,
            Outcome::Error => self.errors += 1,
            Outcome::NoReply => self.no_reply += 1,
            Outcome::Wrong => self.wrong += 1,
            Outcome::Lost => self.lost += 1,
        }
        if call.hung() {
            self.hung += 1;
        }
        self.longest = self.longest.max(call.elapsed);
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Tally) {
        self.calls += other.calls;
        self.right += other.right;
        self.errors += other.errors;
        self.no_reply += other.no_reply;
        self.wrong += other.wrong;
        self.lost += other.lost;
        self.hung += other.hung;
        self.longest = self.longest.max(other.longest);
    }
}

/// One row of a results table: a label, its tally and, if it makes sense, how long it took.
pub struct Row {
    pub label: String,
    pub tally: Tally,
    pub took: Option<Duration>,
}

impl Row {
    pub fn new(label: impl Into<String>, tally: Tally, took: Option<Duration>) -> Row {
        Row {
            label: label.into(),
            tally,
            took,
        }
    }
}

/// Prints `rows` under `title` (e.g. "fault run: results"), the last one (the total) after a
/// rule: calls, right, error, no-reply, wrong, lost, hung, the longest call and the time.
pub fn print_table(title: &str, first_column: &str, rows: &[Row]) {
    let header = format!(
        "{first_column:<44} {:>6} {:>6} {:>6} {:>8} {:>6} {:>5} {:>5} {:>8} {:>8}",
        "calls", "right", "error", "no-reply", "wrong", "lost", "hung", "longest", "time"
    );
    let rule = "-".repeat(header.len());
    println!("\n{title}\n{header}\n{rule}");
    for (i, row) in rows.iter().enumerate() {
        if i + 1 == rows.len() {
            println!("{rule}");
        }
        let t = &row.tally;
        let took = row
            .took
            .map_or_else(String::new, |d| format!("{:.1}s", secs(d)));
        println!(
            "{:<44} {:>6} {:>6} {:>6} {:>8} {:>6} {:>5} {:>5} {:>7.2}s {took:>8}",
            row.label,
            t.calls,
            t.right,
            t.errors,
            t.no_reply,
            t.wrong,
            t.lost,
            t.hung,
            secs(t.longest)
        );
    }
    println!();
}

/// The checks and notes of a run (or of one scenario of it): a failed check is recorded and
/// the run goes on; the test asserts at the end that none failed.
pub struct Checks {
    /// Prefix of the lines printed as checks fail (and notes are taken).
    pub name: String,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

impl Checks {
    /// Checks that print each note as it is taken.
    pub fn new(name: impl Into<String>) -> Checks {
        Checks {
            name: name.into(),
            failures: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Records a failed check (`what` says what failed) without stopping the run.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("{}: FAILED: {what}", self.name);
            self.failures.push(what);
        }
    }

    /// A note for the report, printed as it is taken.
    pub fn note(&mut self, note: String) {
        println!("{}: {note}", self.name);
        self.notes.push(note);
    }
}
