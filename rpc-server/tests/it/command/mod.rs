//! `rpc-server -- CMD`: a command run per request, against the real broker, called through the
//! bytes-level client library and the `rpc-client call` binary.
//!
//! Servers are started by the tests' common [`Served`] (with the broker password in their
//! environment, which their commands must not see); their logs are in `target/tmp/command/`
//! and shown on failure.
//!
//! - [`replies`]: what a command's run makes of a request;
//! - [`processes`]: nothing a command starts outlives its request or its server;
//! - [`deadline`]: the caller's deadline ends the command, which sees its time left;
//! - [`password`]: the broker password, out of the command's reach;
//! - [`cli`]: `rpc-client call`, JSON logs and trace context through the binaries.

mod cli;
mod deadline;
mod password;
mod processes;
mod replies;

use crate::common::log_dir;
use crate::common::served::{Served, EXIT_WITHIN};
use rpc_client::{Error, RpcReply};
use std::path::PathBuf;

fn logs() -> PathBuf {
    log_dir("command")
}

fn text(reply: &RpcReply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The error reply's code and message, or a panic saying what came instead.
fn refusal(result: Result<RpcReply, Error>, shown: &str) -> (String, String) {
    match result {
        Err(Error::Server { code, message }) => (code, message),
        other => panic!("expected an error reply, got {other:?}\n{shown}"),
    }
}
