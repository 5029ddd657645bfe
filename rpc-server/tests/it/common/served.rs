//! An `rpc-server` of a command (`-- CMD`) or a kept program (`--protocol lines|json`) on a
//! queue of its own, consuming, and called through the bytes-level client library: the
//! [`crate::command`] and [`crate::stream`] tests' server.

use super::server::ServerProc;
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::{ClientOptions, Error, RpcClient, RpcReply, RpcRequest};
use std::path::Path;
use std::time::Duration;

/// How long a server may take to exit by itself.
pub const EXIT_WITHIN: Duration = Duration::from_secs(30);

/// A server on its own queue, consuming.
pub struct Served {
    pub server: ServerProc,
    pub queue: QueueGuard,
}

impl Served {
    /// `rpc-server --name NAME ARGS...` on a fresh queue (ARGS end with `-- CMD...`), logging
    /// in `logs`, once it consumes.
    pub fn start(logs: &Path, name: &str, args: &[&str]) -> Served {
        let queue = QueueGuard::new(name);
        let mut server = ServerProc::on_broker(logs, name, queue.name(), &testing::broker(), args);
        let mut admin = Admin::connect().expect("admin");
        if let Err(err) = admin.wait_for_consumers(queue.name(), 1) {
            server.sigterm();
            panic!("{err}\n{}", server.finish(EXIT_WITHIN).1);
        }
        Served { server, queue }
    }

    pub fn client(&self, timeout: Duration) -> RpcClient {
        RpcClient::connect(&ClientOptions {
            brokers: vec![testing::broker()],
            queue: self.queue.name().to_string(),
            timeout,
            ..ClientOptions::default()
        })
        .expect("client connects")
    }

    /// One call with a 20 s timeout.
    pub fn call(&self, request: RpcRequest) -> Result<RpcReply, Error> {
        self.client(Duration::from_secs(20)).call(&request)
    }

    /// SIGTERM, then the exit status must be 0; what the server printed.
    pub fn stop(mut self) -> String {
        self.server.sigterm();
        let (status, shown) = self.server.finish(EXIT_WITHIN);
        assert!(status.success(), "{shown}");
        shown
    }
}
