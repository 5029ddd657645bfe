//! `rpc-server -- CMD`: a command run per request, against the real broker, called through the
//! bytes-level client library and the `rpc-client call` binary.
//!
//! Servers are started by the tests' common [`ServerProc`] (with the broker password in their
//! environment, which their commands must not see); their logs are in `target/tmp/command/`
//! and shown on failure.
//!
//! - [`replies`]: what a command's run makes of a request;
//! - [`processes`]: nothing a command starts outlives its request or its server;
//! - [`password`]: the broker password, out of the command's reach;
//! - [`cli`]: `rpc-client call`, JSON logs and trace context through the binaries.

mod cli;
mod password;
mod processes;
mod replies;

use crate::common::log_dir;
use crate::common::server::ServerProc;
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::{ClientOptions, Error, RpcClient, RpcReply, RpcRequest};
use std::path::PathBuf;
use std::time::Duration;

/// How long a server may take to exit by itself.
const EXIT_WITHIN: Duration = Duration::from_secs(30);

fn logs() -> PathBuf {
    log_dir("command")
}

/// A command server on its own queue, consuming.
struct Served {
    server: ServerProc,
    queue: QueueGuard,
}

impl Served {
    /// `rpc-server --name NAME ARGS...` on a fresh queue (ARGS end with `-- CMD...`), once it
    /// consumes.
    fn start(name: &str, args: &[&str]) -> Served {
        let queue = QueueGuard::new(name);
        let mut server =
            ServerProc::on_broker(&logs(), name, queue.name(), &testing::broker(), args);
        let mut admin = Admin::connect().expect("admin");
        if let Err(err) = admin.wait_for_consumers(queue.name(), 1) {
            server.sigterm();
            panic!("{err}\n{}", server.finish(EXIT_WITHIN).1);
        }
        Served { server, queue }
    }

    fn client(&self, timeout: Duration) -> RpcClient {
        RpcClient::connect(&ClientOptions {
            brokers: vec![testing::broker()],
            queue: self.queue.name().to_string(),
            timeout,
            ..ClientOptions::default()
        })
        .expect("client connects")
    }

    /// One call with a 20 s timeout.
    fn call(&self, request: RpcRequest) -> Result<RpcReply, Error> {
        self.client(Duration::from_secs(20)).call(&request)
    }

    /// SIGTERM, then the exit status must be 0.
    fn stop(mut self) -> String {
        self.server.sigterm();
        let (status, shown) = self.server.finish(EXIT_WITHIN);
        assert!(status.success(), "{shown}");
        shown
    }
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
