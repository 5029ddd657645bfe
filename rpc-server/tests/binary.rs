//! The `rpc-server` binary: starts, serves, logs each request, stops cleanly on SIGTERM.

use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::{ClientOptions, FibonacciRpcClient};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn spawn_server(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rpc-server"))
        .args(args)
        .env(
            "AMQP_URI",
            format!(
                "amqp://{}:{}@{}:{}",
                "guest",
                "guest",
                testing::broker().host,
                testing::broker().port
            ),
        )
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rpc-server")
}

/// Waits for the child and shows its output, so a failing assertion explains itself.
fn finish(child: Child) -> (Output, String) {
    let output = child.wait_with_output().expect("wait for rpc-server");
    let shown = format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, shown)
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
}

#[test]
fn serves_and_stops_cleanly_on_sigterm() {
    let queue = QueueGuard::new("bin-server");
    let server = spawn_server(&["--queue", queue.name(), "--name", "bin-1"]);
    let mut admin = Admin::connect().expect("admin");
    if let Err(err) = admin.wait_for_consumers(queue.name(), 1) {
        terminate(&server);
        panic!("{err}\n{}", finish(server).1);
    }
    let mut client = FibonacciRpcClient::connect(&ClientOptions {
        brokers: vec![testing::broker()],
        queue: queue.name().to_string(),
        timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    })
    .expect("client");
    let reply = client.call_reply(30);
    terminate(&server);
    let (output, shown) = finish(server);
    let reply = reply.unwrap_or_else(|e| panic!("call failed: {e}\n{shown}"));
    assert_eq!(reply.value, "832040", "{shown}");
    assert_eq!(reply.server.as_deref(), Some("bin-1"), "{shown}");
    assert!(output.status.success(), "{shown}");
    assert!(output.stdout.is_empty(), "logs belong on stderr\n{shown}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(" [.] fib(30)"), "{shown}");
    assert!(!stderr.contains(":guest@"), "password printed\n{shown}");
    admin
        .wait_for_consumers(queue.name(), 0)
        .expect("consumer gone");
}

#[test]
fn bad_arguments_fail_with_one_line_and_exit_2() {
    for args in [
        &["--prefetch", "0"][..],
        &["--max-n", "-5"],
        &["--uri", "amqp://u:secret@h:notaport"],
        &["--queue-type", "stream"],
        &["--queue", &"q".repeat(256)],
    ] {
        let (output, shown) = finish(spawn_server(args));
        assert_eq!(output.status.code(), Some(2), "{args:?}\n{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}

#[test]
fn unreachable_broker_fails_fast_with_a_masked_uri() {
    let child = Command::new(env!("CARGO_BIN_EXE_rpc-server"))
        .args([
            "--uri",
            "amqp://guest:hunter2@127.0.0.1:1/",
            "--connect-timeout",
            "2",
            "--max-retries",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (output, shown) = finish(child);
    assert_eq!(output.status.code(), Some(1), "{shown}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("rpc-server: cannot connect to amqp://guest:****@127.0.0.1:1/"),
        "{shown}"
    );
    assert_eq!(stderr.lines().count(), 1, "{shown}");
    assert!(!stderr.contains("hunter2"), "{shown}");
}
