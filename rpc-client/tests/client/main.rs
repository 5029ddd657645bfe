//! The client library and the `rpc-client` binary against a real broker.
//!
//! The peer here is a small responder written directly on amiquip (a real consumer on a real
//! queue) whose misbehaviour we control: stray replies, malformed replies, error replies and
//! silence. The rpc-server crate's tests cover the two together.
//!
//! One test binary, a module per area: `library` (the calling API), `binary` (the `rpc-client`
//! command line), `call` (raw calls, by library and binary); `util` holds the stand-in
//! server and the helpers.

mod binary;
mod call;
mod library;
mod util;
