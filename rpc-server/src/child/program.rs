//! The program a command handler runs: found once ([`find_program`]), shown as typed
//! ([`quoted`]), and started per request with its environment ([`command`]).

use super::{ENV_CONTENT_TYPE, ENV_CORRELATION_ID, ENV_TRACEPARENT, ENV_TRACESTATE};
use crate::handler::Request;
use rpc_client::{wire, TraceContext};
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Environment variables of the server the command does not get: they hold broker
/// credentials (see `rpc_client::cli::BrokerArgs`).
pub(crate) const HIDDEN_ENV: &[&str] = &["AMQP_URI", "AMQP_PASSWORD", "AMQP_PASSWORD_FILE"];

/// Environment values from a request longer than this are not passed on.
const MAX_ENV_VALUE: usize = 4096;

/// `program` (found at `path`, argv\[0\] as typed) with `args`: stdin, stdout and stderr piped,
/// in a process group of its own, with the server's environment less [`HIDDEN_ENV`], plus the
/// server's id for its guardian (`INSTANCE_ENV`) once it has one. What `-- CMD` runs per
/// request, and what `--protocol lines|json` keeps.
pub(crate) fn piped(path: &Path, program: &OsStr, args: &[OsString]) -> std::process::Command {
    let mut command = std::process::Command::new(path);
    command
        .arg0(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for name in HIDDEN_ENV {
        command.env_remove(name);
    }
    if let Some(instance) = super::guardian::instance() {
        command.env(super::guardian::INSTANCE_ENV, instance);
    }
    command
}

/// The command line to run `program` (found at `path`) with `args` for `request`: its pipes,
/// and the server's environment without the credentials, with the request's values.
pub(crate) fn command(
    path: &Path,
    program: &OsStr,
    args: &[OsString],
    request: &Request<'_>,
) -> std::process::Command {
    let mut command = piped(path, program, args);
    let properties = request.properties;
    let traceparent = request.trace.map(TraceContext::traceparent);
    let values = [
        (ENV_CORRELATION_ID, properties.correlation_id()),
        (ENV_CONTENT_TYPE, properties.content_type()),
        (ENV_TRACEPARENT, traceparent.as_deref()),
        (
            ENV_TRACESTATE,
            request.trace.and_then(|t| t.state.as_deref()),
        ),
    ];
    for (name, value) in values {
        match value {
            Some(value) if value.len() <= MAX_ENV_VALUE && !value.contains('\0') => {
                command.env(name, value);
            }
            Some(_) => {
                log::warn!("not passing {name}: over {MAX_ENV_VALUE} bytes or with a NUL");
                command.env_remove(name);
            }
            None => {
                command.env_remove(name);
            }
        }
    }
    command
}

/// `word` as it would be typed in a shell: as is when it is plain, else in single quotes.
pub(crate) fn quoted(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// Finds `program` as a shell would (a path if it has a `/`, else the first executable file of
/// that name in `PATH`) and checks it can be run.
pub(crate) fn find_program(program: &OsStr) -> Result<PathBuf, String> {
    let shown = wire::printable(&program.to_string_lossy());
    if program.is_empty() {
        return Err("the command after -- is empty".into());
    }
    let path = Path::new(program);
    if program.as_encoded_bytes().contains(&b'/') {
        return match executable(path) {
            Ok(()) => Ok(path.to_path_buf()),
            Err(why) => Err(format!("cannot run the command '{shown}': {why}")),
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join(path))
        .find(|candidate| executable(candidate).is_ok())
        .ok_or_else(|| format!("cannot run the command '{shown}': not found in PATH"))
}

fn executable(path: &Path) -> Result<(), String> {
    let metadata = std::fs::metadata(path).map_err(|err| err.to_string())?;
    if !metadata.is_file() {
        return Err("not a file".into());
    }
    if metadata.permissions().mode() & 0o111 == 0 {
        return Err("not executable".into());
    }
    Ok(())
}
