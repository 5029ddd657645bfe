//! The stderr logger both binaries install: their own log targets at the level the caller
//! chooses, dependencies at warn and above, `RUST_LOG` winning over both; lines as text (the
//! default) or as JSON objects (`--log-format json`, env `RPC_LOG_FORMAT`).
//!
//! A JSON line is one object: `timestamp` (RFC 3339, UTC, microseconds), `level`, `target`,
//! `message`, then the record's key-values (a server's per-request line: `correlation_id`,
//! `trace_id` when the request was traced, `outcome`, `duration_ms`): numbers and booleans as JSON numbers and booleans,
//! anything else as a string. Strings are escaped by [`super::json`], so a line stays one
//! line whatever it holds; text from the network is made printable where it is logged, in
//! both formats.
//!
//! Lines the binaries write to stderr themselves (the final error, `prog: message`; a
//! signal's note; bench progress; a panic) go through [`stderr_line`], so in JSON every
//! stderr line is one object, whatever wrote it. A command-line error (clap's usage message)
//! is one object too when `--log-format json` or `RPC_LOG_FORMAT=json` can be read from the
//! arguments or the environment ([`format_from_args`]).

use super::json;
use log::kv::{self, VisitSource};
use log::{Level, LevelFilter};
use std::ffi::OsString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Whether lines are JSON objects (set by [`init`] or [`set_format`]).
static JSON: AtomicBool = AtomicBool::new(false);

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
/// `RUST_LOG`, when set, wins; the AMQP library's handshake module stays at info whatever is asked,
/// since at debug it logs the SASL response, password included. A second call is harmless.
pub fn init(level: LevelFilter, format: LogFormat, targets: &[(&str, LevelFilter)]) {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level.min(LevelFilter::Warn))
        // The AMQP library warns about channel closes we provoke on purpose (a 404 on a
        // passive declare) and reports real failures as errors we log ourselves.
        .filter_module(crate::amqp::LIBRARY_LOG, level.min(LevelFilter::Error))
        .target(env_logger::Target::Stderr);
    for (target, target_level) in targets {
        builder.filter_module(target, *target_level);
    }
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    crate::amqp::hide_passwords(&mut builder);
    set_format(format);
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

/// Sets the format of [`stderr_line`] (which [`init`] does); in JSON, a panic's message is
/// a JSON line too.
pub fn set_format(format: LogFormat) {
    let json = format == LogFormat::Json;
    if JSON.swap(json, Ordering::Relaxed) != json && json {
        std::panic::set_hook(Box::new(|info| {
            let thread = std::thread::current();
            let message = format!("thread '{}' {info}", thread.name().unwrap_or("<unnamed>"));
            stderr_line(Level::Error, "panic", &message);
        }));
    }
}

/// Whether lines are JSON objects.
pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// The format that `args` (a binary's arguments, its name first) and `RPC_LOG_FORMAT` ask
/// for, read without parsing the rest: for a line written before the command line is parsed
/// or when it is refused. The last `--log-format` before a lone `--` wins over the variable.
pub fn format_from_args(args: impl IntoIterator<Item = OsString>) -> LogFormat {
    let pick = |value: &str| match value {
        "json" => Some(LogFormat::Json),
        "text" => Some(LogFormat::Text),
        _ => None,
    };
    let mut chosen = std::env::var("RPC_LOG_FORMAT")
        .ok()
        .and_then(|value| pick(&value));
    let mut args = args.into_iter().skip(1);
    while let Some(arg) = args.next() {
        let Some(arg) = arg.to_str() else { continue };
        if arg == "--" {
            break;
        }
        if arg == "--log-format" {
            let value = args.next();
            chosen = value
                .as_ref()
                .and_then(|v| v.to_str())
                .and_then(pick)
                .or(chosen);
        } else if let Some(value) = arg.strip_prefix("--log-format=") {
            chosen = pick(value).or(chosen);
        }
    }
    chosen.unwrap_or_default()
}

/// Writes `message` on stderr as the binaries' own line: `program: message` as text, or one
/// JSON object (`target` is `program`) in the chosen format.
pub fn stderr_line(level: Level, program: &str, message: &str) {
    let line = if is_json() {
        json_line(
            &rfc3339_micros(SystemTime::now()),
            &log::Record::builder()
                .args(format_args!("{message}"))
                .level(level)
                .target(program)
                .build(),
        )
    } else {
        format!("{program}: {message}\n")
    };
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `time` as RFC 3339 in UTC with microseconds, as the logger writes it
/// (`2026-12-02T10:00:00.000000Z`).
fn rfc3339_micros(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm), in eras of 400 years.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_micros()
    )
}

/// `record` as one JSON object and a newline.
pub(super) fn json_line(timestamp: &str, record: &log::Record<'_>) -> String {
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
    fn timestamps_are_rfc3339_in_utc() {
        let at = |secs: u64, micros: u64| {
            rfc3339_micros(UNIX_EPOCH + std::time::Duration::from_micros(secs * 1_000_000 + micros))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_796_205_599, 999_999), "2026-12-02T09:59:59.999999Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn the_format_is_read_from_the_arguments_up_to_a_lone_double_dash() {
        let args = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        // (RPC_LOG_FORMAT is not set by the tests.)
        let read = |list: &[&str]| format_from_args(args(list));
        assert_eq!(
            read(&["x", "--log-format", "json", "--bad"]),
            LogFormat::Json
        );
        assert_eq!(read(&["x", "--log-format=json", "-v"]), LogFormat::Json);
        assert_eq!(
            read(&["x", "--log-format=json", "--log-format", "text"]),
            LogFormat::Text
        );
        assert_eq!(
            read(&["x", "--", "cmd", "--log-format", "json"]),
            LogFormat::Text
        );
        assert_eq!(read(&["--log-format", "json"]), LogFormat::Text);
    }

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
