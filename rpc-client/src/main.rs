//! `rpc-client N...`: prints fib(N) for each argument, one per line, computed by an rpc-server.
//! `rpc-client bench`: measures calls/s and latency. `rpc-client call BODY...`: sends raw
//! requests and prints the reply bodies. The command line is in [`rpc_client::cli`]; this only
//! runs it and turns its outcome into the exit code.

use rpc_client::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run(cli::parse::<Cli>()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // As text, or one JSON object with --log-format json.
            cli::stderr_line(log::Level::Error, "rpc-client", &format!("{err:#}"));
            ExitCode::from(cli::exit_code(&err))
        }
    }
}
