//! The stderr logger both binaries install: their own log targets at the level the caller
//! chooses, dependencies at warn and above, `RUST_LOG` winning over both; lines as text (the
//! default) or as JSON objects (`--log-format json`, env `RPC_LOG_FORMAT`).
//!
//! A JSON line is one object: `timestamp` (RFC 3339, UTC, microseconds), `level`, `target`,
//! `message`, then the record's key-values (a server's per-request line: `correlation_id`,
//! `trace_id`, `outcome`, `duration_ms`): numbers and booleans as JSON numbers and booleans,
//! anything else as a string. Strings are escaped by [`crate::json`], so a line stays one
//! line whatever it holds; text from the network is made printable where it is logged, in
//! both formats.

use super::json;
use log::kv::{self, VisitSource};
use log::LevelFilter;
use std::io::Write;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `[timestamp LEVEL target] message`, for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the stderr logger: each `(target, level)` of `targets` at its level (the caller's
/// crates, and any target it wants apart), everything else at `level` but at most warn.
/// `RUST_LOG`, when set, wins; amiquip's handshake module stays at info whatever is asked,
/// since at debug it logs the SASL response, password included. A second call is harmless.
pub fn init(level: LevelFilter, format: LogFormat, targets: &[(&str, LevelFilter)]) {
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
    crate::amqp::hide_passwords(&mut builder);
    match format {
        // Key-values are for JSON: text lines say what matters in their message.
        LogFormat::Text if std::io::IsTerminal::is_terminal(&std::io::stderr()) => {
            builder.format_key_values(env_logger::fmt::hidden_kv_format);
        }
        // Not a terminal: the same line without styles, passed through as written (with
        // its default style, env_logger would run every byte through an ANSI stripper).
        LogFormat::Text => {
            builder
                .write_style(env_logger::WriteStyle::Always)
                .format(|buf, record| {
                    writeln!(
                        buf,
                        "[{} {:<5} {}] {}",
                        buf.timestamp(),
                        record.level(),
                        record.target(),
                        record.args()
                    )
                });
        }
        LogFormat::Json => {
            builder.format(|buf, record| {
                let line = json_line(&buf.timestamp_micros().to_string(), record);
                buf.write_all(line.as_bytes())
            });
        }
    }
    let _ = builder.try_init();
}

/// `record` as one JSON object and a newline.
pub fn json_line(timestamp: &str, record: &log::Record<'_>) -> String {
    let mut line = String::with_capacity(160);
    line.push_str("{\"timestamp\": ");
    json::push_string(&mut line, timestamp);
    line.push_str(", \"level\": ");
    json::push_string(&mut line, record.level().as_str());
    line.push_str(", \"target\": ");
    json::push_string(&mut line, record.target());
    line.push_str(", \"message\": ");
    match record.args().as_str() {
        Some(message) => json::push_string(&mut line, message),
        None => json::push_string(&mut line, &record.args().to_string()),
    }
    let _ = record.key_values().visit(&mut JsonFields(&mut line));
    line.push_str("}\n");
    line
}

/// Appends key-values as JSON members.
struct JsonFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> Result<(), kv::Error> {
        let out = &mut *self.0;
        out.push_str(", ");
        json::push_string(out, key.as_str());
        out.push_str(": ");
        if let Some(b) = value.to_bool() {
            out.push_str(if b { "true" } else { "false" });
        } else if let Some(n) = value.to_u64() {
            out.push_str(&n.to_string());
        } else if let Some(n) = value.to_i64() {
            out.push_str(&n.to_string());
        } else if let Some(x) = value.to_f64().filter(|x| x.is_finite()) {
            out.push_str(&format!("{x:.3}"));
        } else {
            json::push_string(out, &value.to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_one_line_with_their_fields() {
        let kvs: [(&str, kv::Value<'_>); 4] = [
            ("correlation_id", kv::Value::from("id\n\"1\"")),
            ("outcome", kv::Value::from("answered")),
            ("duration_ms", kv::Value::from(1.5f64)),
            ("n", kv::Value::from(3u64)),
        ];
        let record = log::Record::builder()
            .args(format_args!("a \u{1b}[2J line\nforged"))
            .level(log::Level::Info)
            .target("rpc_server::request")
            .key_values(&kvs)
            .build();
        let line = json_line("2026-12-02T10:00:00.000000Z", &record);
        assert_eq!(
            line,
            "{\"timestamp\": \"2026-12-02T10:00:00.000000Z\", \"level\": \"INFO\", \
             \"target\": \"rpc_server::request\", \"message\": \"a \\u001b[2J line\\nforged\", \
             \"correlation_id\": \"id\\n\\\"1\\\"\", \"outcome\": \"answered\", \
             \"duration_ms\": 1.500, \"n\": 3}\n"
        );
    }
}
