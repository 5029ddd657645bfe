//! The command line (feature `cli`, on by default): the flags both binaries share
//! ([`CommonArgs`]: the broker, logging, `--generate`), the stderr logger ([`init_logging`]),
//! and `rpc-client`'s own command line ([`Cli`], [`run`]) with what it prints (values, reply
//! bodies, JSON lines) and `rpc-client bench`.
//!
//! Only this module knows flag names; the library takes plain options ([`crate::ClientOptions`],
//! [`crate::BrokerOptions`]) and reports typed errors.

mod args;
mod bench;
mod command;
mod json;
mod logging;
mod output;

#[cfg(any(test, feature = "test-support"))]
pub use args::check_command;
pub use args::{parse, parse_seconds, BrokerArgs, CommonArgs, Generate, GenerateArgs, LogArgs};
pub use bench::{TsvRow as BenchTsvRow, TSV_COLUMNS as BENCH_TSV_COLUMNS};
pub use command::{exit_code, run, Cli, Command, MAX_STDIN_BODY};
pub use logging::{
    format_from_args, init as init_logging, is_json, set_format, stderr_line, LogFormat,
};
