//! The `rpc-client` binary: results, exit codes, and what reaches the terminal.

use crate::util::*;
use rpc_client::exit_code;
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::{ClientOptions, Error, FibonacciRpcClient};
use std::process::Command;
use std::time::Duration;

#[test]
fn binary_prints_results_and_exit_codes() {
    let queue = QueueGuard::new("bin-client");
    let responder = Responder::start(queue.name(), true);
    let q = queue.name();

    let (out, shown) = rpc_client(&["--queue", q, "30"]);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(out.stdout, b"832040\n", "{shown}");
    assert!(out.stderr.is_empty(), "{shown}");

    let (out, shown) = rpc_client(&["--queue", q, "10", "20", "30"]);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(out.stdout, b"55\n6765\n832040\n", "{shown}");

    let cases: [(&[&str], u8); 6] = [
        (&["--queue", q, "999"], exit_code::SERVER_ERROR),
        (&["--queue", q, "666"], exit_code::OTHER),
        (
            &["--queue", q, "--timeout", "0.5", "777"],
            exit_code::TIMEOUT,
        ),
        (&["--queue", q, "-1"], exit_code::USAGE),
        (&["--queue", q, "thirty"], exit_code::USAGE),
        (&["--queue", q, "--timeout", "0", "1"], exit_code::USAGE),
    ];
    for (args, code) in cases {
        let (out, shown) = rpc_client(args);
        assert_eq!(out.status.code(), Some(i32::from(code)), "{shown}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("rpc-client: ") || stderr.starts_with("error: "),
            "{shown}"
        );
    }
    // Results before a failure are printed; the failure stops the rest.
    let (out, shown) = rpc_client(&["--queue", q, "5", "999", "6"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::SERVER_ERROR)),
        "{shown}"
    );
    assert_eq!(out.stdout, b"5\n", "{shown}");
    responder.stop();
}

#[test]
fn overflowed_answers_fail_as_bad_replies() {
    let queue = QueueGuard::new("bin-overflow");
    let responder = Responder::start_overflowing(queue.name());
    let q = queue.name();
    let (out, shown) = rpc_client(&["--queue", q, "47", "91"]);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(out.stdout, b"2971215073\n4660046610375530309\n", "{shown}");
    for n in ["48", "92", "94", "100"] {
        let (out, shown) = rpc_client(&["--queue", q, n]);
        assert_eq!(
            out.status.code(),
            Some(i32::from(exit_code::OTHER)),
            "{shown}"
        );
        assert!(out.stdout.is_empty(), "a wrong number printed: {shown}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("bad reply"), "{shown}");
        assert!(stderr.contains(&format!("fib({n})")), "{shown}");
    }
    // The library: the same error, for one call and in a batch.
    let mut client =
        FibonacciRpcClient::connect(&options(q, Duration::from_secs(10))).expect("client connects");
    assert!(matches!(client.call(100), Err(Error::BadReply(_))));
    let mut results = Vec::new();
    client
        .call_many([10, 48], 2, |_, n, result| {
            results.push((n, result.map(|reply| reply.value)));
            std::ops::ControlFlow::Continue(())
        })
        .expect("batch");
    results.sort_by_key(|(n, _)| *n);
    assert!(
        matches!(&results[0], (10, Ok(v)) if v == "55"),
        "{results:?}"
    );
    assert!(
        matches!(&results[1], (48, Err(Error::BadReply(_)))),
        "{results:?}"
    );
    responder.stop();
}

#[test]
fn binary_connection_failures_exit_3_without_the_password() {
    let broker = testing::broker();
    let refused = format!("amqp://guest:sesame@{}:1/", broker.host);
    let wrong_password = format!("amqp://guest:sesame@{}:{}/", broker.host, broker.port);
    for (uri, reason) in [(refused, "refused"), (wrong_password, "login refused")] {
        let output = Command::new(env!("CARGO_BIN_EXE_rpc-client"))
            .args(["--uri", &uri, "--connect-timeout", "2", "30"])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(i32::from(exit_code::CONNECTION)),
            "{stderr}"
        );
        assert!(
            stderr.contains(reason) && !stderr.contains("sesame"),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn hostile_replies_reach_the_terminal_printable_and_bounded() {
    let queue = QueueGuard::new("hostile");
    let responder = Responder::start(queue.name(), false);
    let (output, _) = rpc_client(&["-v", "--queue", queue.name(), "--timeout", "10", "888"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(i32::from(exit_code::SERVER_ERROR)),
        "{stderr}"
    );
    assert!(
        !output.stderr.contains(&0x1b),
        "an escape reached stderr: {stderr:?}"
    );
    assert!(
        !output.stderr.contains(&b'\r'),
        "a CR reached stderr: {stderr:?}"
    );
    assert!(
        !stderr.contains("\n[ERROR] forged"),
        "a forged line: {stderr:?}"
    );
    assert!(stderr.len() < 4_000, "{} bytes of stderr", stderr.len());
    responder.stop();
}

#[test]
fn an_empty_queue_name_is_a_usage_error() {
    let (out, shown) = rpc_client(&["--queue", "", "30"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::USAGE)),
        "{shown}"
    );
    let options = ClientOptions {
        queue: String::new(),
        ..options("unused", Duration::from_secs(1))
    };
    match FibonacciRpcClient::connect(&options) {
        Err(err @ Error::Config(_)) => assert_eq!(err.exit_code(), exit_code::USAGE),
        other => panic!("expected a configuration error, got {:?}", other.err()),
    }
}

#[test]
fn queue_names_are_printed_printable_and_checked_up_front() {
    // No such queue (exit 6), then one without a consumer (exit 4): both messages name it.
    let mut queue = QueueGuard::new("esc\t[ERROR] forged\u{1b}[2J");
    let q = queue.name().to_string();
    let (out, shown) = rpc_client(&["--queue", &q, "--timeout", "0.5", "30"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::NO_ROUTE)),
        "{shown}"
    );
    let admin = Admin::connect().expect("admin");
    admin.declare(&q, false).expect("declare");
    let (out2, shown2) = rpc_client(&["--queue", &q, "--timeout", "0.5", "30"]);
    assert_eq!(
        out2.status.code(),
        Some(i32::from(exit_code::TIMEOUT)),
        "{shown2}"
    );
    for stderr in [&out.stderr, &out2.stderr] {
        let stderr = String::from_utf8_lossy(stderr);
        assert!(stderr.contains("'esc?[ERROR] forged?[2J-"), "{stderr:?}");
        assert!(!stderr.contains(['\u{1b}', '\t']), "{stderr:?}");
    }
    queue.delete().expect("delete");
    // 80 '☃' (240 bytes): RabbitMQ would cut its messages quoting the name inside a character.
    let (out, shown) = rpc_client(&["--queue", &"☃".repeat(80), "30"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::USAGE)),
        "{shown}"
    );
    assert!(shown.contains("beyond ASCII"), "{shown}");
    let (out, shown) = rpc_client(&["--queue", "a\nb", "30"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit_code::USAGE)),
        "{shown}"
    );
    assert!(shown.contains("line break"), "{shown}");
    // A refused name is quoted in the error: escape sequences and a CR never reach the
    // terminal (an OSC sequence would set its title).
    let (out, _) = rpc_client(&["--queue", "a\x1b]0;owned\x07\rb\x1b[31m\nc", "30"]);
    assert_eq!(out.status.code(), Some(i32::from(exit_code::USAGE)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line break"), "{stderr:?}");
    assert!(!stderr.contains(['\u{1b}', '\r', '\u{7}']), "{stderr:?}");
}

#[test]
fn wait_for_server_waits_for_a_late_server_and_keeps_exit_6() {
    use std::io::BufRead as _;
    use std::process::Stdio;
    use std::time::Instant;
    let queue = QueueGuard::new("wait-bin");
    let q = queue.name();
    // Without the flag, a missing queue fails at once (exit 6); with it, after the wait.
    for (wait, at_least, at_most) in [(None, 0.0, 5.0), (Some("1.5"), 1.5, 8.0)] {
        let mut args = vec!["--queue", q, "call", "x"];
        args.extend(wait.iter().flat_map(|secs| ["--wait-for-server", *secs]));
        let started = Instant::now();
        let (out, shown) = rpc_client(&args);
        let took = started.elapsed().as_secs_f64();
        assert_eq!(
            out.status.code(),
            Some(i32::from(exit_code::NO_ROUTE)),
            "{shown}"
        );
        assert!((at_least..at_most).contains(&took), "{took} s: {shown}");
        assert!(shown.contains(&format!("no queue '{q}' exists")), "{shown}");
        assert_eq!(wait.is_some(), shown.contains("still no queue"), "{shown}");
    }
    // A server that starts after the client began waiting is found, and answers.
    let broker = testing::broker();
    let mut client = Command::new(env!("CARGO_BIN_EXE_rpc-client"))
        .args(["--host", &broker.host, "--port", &broker.port.to_string()])
        .args(["--queue", q, "--wait-for-server", "30", "-v", "30"])
        .env_remove("AMQP_URI")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rpc-client");
    let mut stderr = std::io::BufReader::new(client.stderr.take().expect("stderr"));
    let mut shown = String::new();
    while !shown.contains("waiting up to 30.0 s for a server") {
        let mut line = String::new();
        let read = stderr.read_line(&mut line).expect("stderr");
        assert!(read > 0, "rpc-client ended before waiting: {shown}");
        shown.push_str(&line);
    }
    let responder = Responder::start(q, false);
    let started = Instant::now();
    let out = client.wait_with_output().expect("wait for rpc-client");
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert_eq!(out.stdout, b"832040\n");
    assert!(started.elapsed() < Duration::from_secs(10));
    responder.stop();
}
