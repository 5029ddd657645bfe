//! `-v`/`-q` flags and the logger both binaries share: everything goes to stderr.

use log::LevelFilter;

/// Verbosity flags (flatten into a clap parser). `RUST_LOG`, when set, wins over both.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct LogArgs {
    /// More log output on stderr (repeatable: -vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less log output on stderr (repeatable: -qq).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
}

impl LogArgs {
    /// The level these flags select, starting from `default`.
    pub fn level(&self, default: LevelFilter) -> LevelFilter {
        const LEVELS: [LevelFilter; 6] = [
            LevelFilter::Off,
            LevelFilter::Error,
            LevelFilter::Warn,
            LevelFilter::Info,
            LevelFilter::Debug,
            LevelFilter::Trace,
        ];
        let start = LEVELS.iter().position(|l| *l == default).unwrap_or(2) as i32;
        let index = (start + i32::from(self.verbose) - i32::from(self.quiet)).clamp(0, 5);
        LEVELS[index as usize]
    }

    /// Installs the stderr logger. Our crates log at the selected level; dependencies only
    /// at warn and above unless `RUST_LOG` says otherwise.
    pub fn init(&self, default: LevelFilter) {
        init_levels(self.level(default), &[]);
    }
}

/// Installs the stderr logger with our crates at `level`, the log targets in `overrides` at
/// their own levels, dependencies at warn and above; `RUST_LOG`, when set, wins.
pub fn init_levels(level: LevelFilter, overrides: &[(&str, LevelFilter)]) {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level.min(LevelFilter::Warn))
        .filter_module("rpc_client", level)
        .filter_module("rpc_server", level)
        // amiquip warns about channel closes we provoke on purpose (a 404 on a
        // passive declare) and reports real failures as errors we log ourselves.
        .filter_module("amiquip", level.min(LevelFilter::Error))
        .target(env_logger::Target::Stderr);
    for (target, target_level) in overrides {
        builder.filter_module(target, *target_level);
    }
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    // amiquip logs the SASL response, password included, at debug level.
    builder.filter_module("amiquip::io_loop::handshake_state", LevelFilter::Info);
    // A second init (tests) is harmless.
    let _ = builder.try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_move_the_level() {
        let args = |verbose, quiet| LogArgs { verbose, quiet };
        assert_eq!(args(0, 0).level(LevelFilter::Info), LevelFilter::Info);
        assert_eq!(args(1, 0).level(LevelFilter::Info), LevelFilter::Debug);
        assert_eq!(args(9, 0).level(LevelFilter::Info), LevelFilter::Trace);
        assert_eq!(args(0, 1).level(LevelFilter::Warn), LevelFilter::Error);
        assert_eq!(args(0, 9).level(LevelFilter::Warn), LevelFilter::Off);
    }
}
