//! The stderr logger both binaries install: their own log targets at the level the caller
//! chooses, dependencies at warn and above, `RUST_LOG` winning over both.

use log::LevelFilter;

/// Installs the stderr logger: each `(target, level)` of `targets` at its level (the caller's
/// crates, and any target it wants apart), everything else at `level` but at most warn.
/// `RUST_LOG`, when set, wins; amiquip's handshake module stays at info whatever is asked,
/// since at debug it logs the SASL response, password included. A second call is harmless.
pub fn init(level: LevelFilter, targets: &[(&str, LevelFilter)]) {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level.min(LevelFilter::Warn))
        // amiquip warns about channel closes we provoke on purpose (a 404 on a
        // passive declare) and reports real failures as errors we log ourselves.
        .filter_module("amiquip", level.min(LevelFilter::Error))
        .target(env_logger::Target::Stderr);
    for (target, target_level) in targets {
        builder.filter_module(target, *target_level);
    }
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.filter_module("amiquip::io_loop::handshake_state", LevelFilter::Info);
    let _ = builder.try_init();
}
