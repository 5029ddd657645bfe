//! The bench's settings, from its `BENCH_*` environment variables (defaults of a full run;
//! in parentheses those of the quick smoke run, `BENCH_QUICK=1` or `--quick`):
//!
//! | variable | default | what |
//! |---|---|---|
//! | `BENCH_REPEAT` | 3 (1) | runs of each calls/s row (the best is shown) |
//! | `BENCH_CALLS` | 20000 (2000) | sequential calls (echo floor a1, rpc-client c, m1) |
//! | `BENCH_INFLIGHT_CALLS` | 100000 (5000) | calls per in-flight row (a, d, m64) |
//! | `BENCH_PY_CALLS` | 10000 (1000) | calls per Python pika row (b) |
//! | `BENCH_DEPTHS` | "8 64" | in-flight depths of rows a and d |
//! | `BENCH_PREFETCH` | 100 | server and echo prefetch of the in-flight rows |
//! | `BENCH_ONESHOT_RUNS` | 20 (5) | runs of each one-shot client (e) |
//! | `BENCH_FIB_NS` | "10000 100000 1000000 10000000" (without 10^7) | the n of rows f |
//! | `BENCH_H_CALLS` | 2000 (300) | calls per sequential row h (a process per call) |
//! | `BENCH_H_INFLIGHT_CALLS` | 4000 (600) | calls per in-flight row h |
//! | `BENCH_ONLY` | all groups | measure only these row groups, e.g. `BENCH_ONLY=cd` |
//! | `BENCH_BROKER_WAIT` | 120 | seconds to wait for the broker before a retry |

use anyhow::{bail, Context as _, Result};

/// The row groups, by the first letter of their ids (`BENCH_ONLY` picks some).
pub const GROUPS: &str = "abcdefghims";

#[derive(Clone, Debug)]
pub struct Settings {
    pub quick: bool,
    /// Untimed calls before each calls/s row.
    pub warmup: u64,
    /// The row groups measured (letters of [`GROUPS`]).
    pub only: String,
    pub repeat: u64,
    pub seq_calls: u64,
    pub inflight_calls: u64,
    pub py_calls: u64,
    pub h_seq_calls: u64,
    pub h_inflight_calls: u64,
    pub oneshot_runs: u64,
    pub prefetch: u64,
    pub broker_wait_secs: u64,
    pub depths: Vec<u64>,
    pub fib_ns: Vec<u64>,
}

impl Settings {
    /// From the environment; `quick` (the `--quick` flag) as `BENCH_QUICK=1`.
    pub fn from_env(quick: bool) -> Result<Settings> {
        Settings::from_vars(quick, |name| {
            std::env::var(name)
                .ok()
                .filter(|value| !value.trim().is_empty())
        })
    }

    /// Is any of these row groups (letters) to be measured?
    pub fn want(&self, groups: &str) -> bool {
        groups.chars().any(|c| self.only.contains(c))
    }

    /// From `var` (the value of a `BENCH_*` variable, if set and not blank).
    pub fn from_vars(quick: bool, var: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        let quick = quick
            || match var("BENCH_QUICK").as_deref() {
                None | Some("0") => false,
                Some("1") => true,
                Some(other) => bail!("BENCH_QUICK must be 0 or 1, got '{other}'"),
            };
        let only = var("BENCH_ONLY").unwrap_or_else(|| GROUPS.into());
        if only.is_empty() || !only.chars().all(|c| GROUPS.contains(c)) {
            bail!(
                "BENCH_ONLY must be letters of row groups among '{GROUPS}' (e.g. h), got '{only}'"
            );
        }
        let pick = |full: &'static str, fast: &'static str| if quick { fast } else { full };
        let numbers = |variable: &str, default: &str, max: u64| -> Result<Vec<u64>> {
            let text = var(variable).unwrap_or_else(|| default.into());
            text.split_whitespace()
                .map(|v| v.parse::<u64>().ok().filter(|&n| n >= 1 && n <= max))
                .collect::<Option<Vec<_>>>()
                .filter(|values| !values.is_empty())
                .with_context(|| {
                    let limit = if max < u64::MAX {
                        format!(" up to {max}")
                    } else {
                        String::new()
                    };
                    format!("{variable} must be a positive integer{limit}, got '{text}'")
                })
        };
        let one = |variable: &str, default: &str, max: u64| -> Result<u64> {
            match numbers(variable, default, max)?[..] {
                [value] => Ok(value),
                _ => bail!("{variable} must be one positive integer"),
            }
        };
        let depths = numbers("BENCH_DEPTHS", "8 64", 65535)?;
        if depths.contains(&1) {
            bail!("BENCH_DEPTHS: in-flight depths must be 2..65535 (1 is the sequential row)");
        }
        Ok(Settings {
            quick,
            warmup: if quick { 200 } else { 500 },
            only,
            repeat: one("BENCH_REPEAT", pick("3", "1"), u64::MAX)?,
            seq_calls: one("BENCH_CALLS", pick("20000", "2000"), u64::MAX)?,
            inflight_calls: one("BENCH_INFLIGHT_CALLS", pick("100000", "5000"), u64::MAX)?,
            py_calls: one("BENCH_PY_CALLS", pick("10000", "1000"), u64::MAX)?,
            h_seq_calls: one("BENCH_H_CALLS", pick("2000", "300"), u64::MAX)?,
            h_inflight_calls: one("BENCH_H_INFLIGHT_CALLS", pick("4000", "600"), u64::MAX)?,
            oneshot_runs: one("BENCH_ONESHOT_RUNS", pick("20", "5"), u64::MAX)?,
            prefetch: one("BENCH_PREFETCH", "100", 65535)?,
            broker_wait_secs: one("BENCH_BROKER_WAIT", "120", u64::MAX)?,
            depths,
            fib_ns: numbers(
                "BENCH_FIB_NS",
                pick("10000 100000 1000000 10000000", "10000 100000 1000000"),
                u64::MAX,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(var: &'static str, value: &'static str) -> Result<Settings> {
        Settings::from_vars(false, move |name| (name == var).then(|| value.into()))
    }

    #[test]
    fn defaults_quick_and_full() {
        let quick = with("BENCH_QUICK", "1").expect("ok");
        assert!(quick.quick && quick.warmup == 200 && quick.only == GROUPS);
        assert_eq!(
            (quick.repeat, quick.h_seq_calls, quick.h_inflight_calls),
            (1, 300, 600)
        );
        assert_eq!(quick.depths, [8, 64]);
        assert_eq!(quick.fib_ns, [10000, 100000, 1000000]);
        let flag = Settings::from_vars(true, |_| None).expect("ok");
        assert!(flag.quick && flag.seq_calls == 2000);
        let full = Settings::from_vars(false, |_| None).expect("ok");
        assert_eq!(
            (full.repeat, full.h_seq_calls, full.h_inflight_calls),
            (3, 2000, 4000)
        );
        assert_eq!(
            (full.seq_calls, full.inflight_calls, full.warmup),
            (20000, 100000, 500)
        );
        let only = with("BENCH_ONLY", "h").expect("ok");
        assert!(only.want("hm") && !only.want("abc"));
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = |var, value| format!("{:#}", with(var, value).expect_err(value));
        assert!(bad("BENCH_PREFETCH", "70000").contains("integer up to 65535"));
        assert!(bad("BENCH_DEPTHS", "1 8").contains("1 is the sequential row"));
        bad("BENCH_CALLS", "many");
        assert!(bad("BENCH_REPEAT", "1 2").contains("one positive integer"));
        bad("BENCH_QUICK", "yes");
        bad("BENCH_H_CALLS", "0");
        bad("BENCH_H_INFLIGHT_CALLS", "-5");
        assert!(bad("BENCH_ONLY", "hx").contains("among 'abcdefghims'"));
        bad("BENCH_ONLY", "h;rm");
    }
}
