//! rpc-server's integration tests: one test binary (`--test it`), a module per area, one
//! harness ([`common`]), compiled once.
//!
//! Run by default (`cargo test -p rpc-server`), against the test broker (`AMQP_URI`, default
//! `amqp://guest:guest@127.0.0.1:5672`), each test on its own uuid-named queue that it deletes:
//!
//! - [`rpc`]: in-process servers (`rpc_server::run`/`serve`, Rust handlers) called through the
//!   rpc-client library and raw AMQP;
//! - [`binary`]: the `rpc-server` binary: starts, serves, logs, stops on SIGTERM, refuses bad
//!   arguments;
//! - [`endpoint`]: the `--metrics-addr` endpoint under slow and careless clients;
//! - [`command`]: `rpc-server -- CMD`, a command run per request, called by the library and
//!   `rpc-client call`;
//! - [`deep_headers`]: headers nested as deep as a frame allows, to a server and to a client;
//! - [`poison`]: requests that kill their server; acks held during a long request;
//! - [`stream`]: `rpc-server --protocol lines|json -- CMD`, a program kept per worker.
//!
//! Ignored, each run by a script (faults and cluster on brokers of their own), by module path:
//!
//! - [`faults`]: the fault run (`cargo test --release -p rpc-server --test it faults:: --
//!   --ignored`; `scripts/test.sh`'s last stage but one), which restarts its broker;
//! - [`cluster`]: the cluster test (`cargo test --release -p rpc-server --test it cluster:: --
//!   --ignored`; `scripts/cluster-test.sh`), on the local three-node cluster of
//!   `scripts/cluster.sh`;
//! - [`stages`]: the assertions of the stages of `scripts/test.sh` that need OS work first
//!   (TLS, interop, metrics, the scripts end to end, the 4.x refusals), each run by its script
//!   (`cargo test --release -p rpc-server --test it stages::MODULE -- --ignored`).
//!
//! One test: `cargo test -p rpc-server --test it skewed_clocks`; one area: `cargo test -p
//! rpc-server --test it command::`.

mod common;

mod binary;
mod command;
mod deep_headers;
mod endpoint;
mod poison;
mod rpc;
mod stream;

mod cluster;
mod faults;
mod stages;
