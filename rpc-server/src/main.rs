//! `rpc-server`: answers fib(n) requests from a RabbitMQ queue until SIGINT or SIGTERM. The
//! command line is in [`rpc_server::cli`]; this only runs it and turns its outcome into the
//! exit code.

use rpc_server::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::var_os(rpc_server::command::GUARDIAN_ENV).is_some_and(|v| v == "1") {
        // The guardian of a command server's commands (see `command::contain`).
        rpc_server::command::guard();
    }
    match cli::run(rpc_client::cli::parse::<Cli>()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // As text, or one JSON object with --log-format json.
            rpc_client::cli::stderr_line(log::Level::Error, "rpc-server", &format!("{err:#}"));
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
