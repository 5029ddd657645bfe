//! `rpc-client call` against command servers: by argument, stdin and `--json`; JSON logs and
//! the trace from rpc-client's environment.

use super::{logs, Served};
use crate::common::rpc_client_bin;
use rpc_client::testing;
use std::process::{Command, Output, Stdio};

/// `rpc-client --queue QUEUE ARGS...` on the test broker, with `stdin`.
fn rpc_client(queue: &str, args: &[&str], stdin: &[u8]) -> Output {
    rpc_client_env(queue, args, stdin, &[])
}

/// [`rpc_client`] with `env` added to its environment.
fn rpc_client_env(queue: &str, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let broker = testing::broker();
    let mut child = Command::new(rpc_client_bin())
        .env_remove("TRACEPARENT")
        .env_remove("TRACESTATE")
        .envs(env.iter().copied())
        .args(["--host", &broker.host, "--port", &broker.port.to_string()])
        .args(["--vhost", &broker.vhost, "--user", &broker.user])
        .args(["--queue", queue, "--timeout", "20"])
        .args(args)
        .env("AMQP_PASSWORD", &broker.password)
        .env_remove("AMQP_PASSWORD_FILE")
        .env_remove("AMQP_URI")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rpc-client");
    if let Some(mut input) = child.stdin.take() {
        use std::io::Write;
        input.write_all(stdin).expect("write stdin");
    }
    child.wait_with_output().expect("rpc-client output")
}

#[test]
fn rpc_client_call_against_a_tr_server_by_argument_stdin_and_json() {
    let served = Served::start(&logs(), "cmd-cli", &["--", "tr", "a-z", "A-Z"]);
    let queue = served.queue.name().to_string();
    let shown = served.server.shown();
    let out = rpc_client(&queue, &["call", "hello"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{shown}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\n");

    let out = rpc_client(&queue, &["call", "one", "-", "three"], b"from stdin\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "ONE\nFROM STDIN\nTHREE\n"
    );

    let out = rpc_client(&queue, &["call", "--json", "hello"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8_lossy(&out.stdout);
    assert_eq!(json.lines().count(), 1, "{json}");
    for field in [
        "\"body\": \"HELLO\"",
        "\"encoding\": \"utf-8\"",
        "\"server\": \"cmd-cli\"",
        "\"elapsed_ms\": ",
    ] {
        assert!(json.contains(field), "{field} missing in {json}");
    }
    served.stop();

    let failing = Served::start(
        &logs(),
        "cmd-cli-fail",
        &["--", "sh", "-c", "echo broken >&2; exit 3"],
    );
    let out = rpc_client(failing.queue.name(), &["call", "x"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("exec-failed"), "{stderr}");
    assert!(stderr.contains("status 3: broken"), "{stderr}");
    failing.stop();
}

/// Each line of `stderr` as a JSON object with the fields every line has.
fn json_log_lines(stderr: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    stderr
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            let object = value.as_object().expect("an object").clone();
            for field in ["timestamp", "level", "target", "message"] {
                assert!(object[field].is_string(), "{field} in {line}");
            }
            let timestamp = object["timestamp"].as_str().unwrap_or("");
            // RFC 3339, UTC: 2026-12-02T10:00:00.123456Z
            assert!(
                timestamp.len() >= 20 && &timestamp[10..11] == "T" && timestamp.ends_with('Z'),
                "{timestamp}"
            );
            object
        })
        .collect()
}

#[test]
fn json_logs_and_the_trace_from_rpc_clients_environment() {
    let served = Served::start(
        &logs(),
        "cmd-json",
        &[
            "--log-format",
            "json",
            "--",
            "sh",
            "-c",
            "printf %s \"$TRACEPARENT\"",
        ],
    );
    let queue = served.queue.name().to_string();
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let out = rpc_client_env(
        &queue,
        &["-v", "call", "--json", "x"],
        b"",
        &[
            ("TRACEPARENT", parent),
            ("TRACESTATE", "rojo=00f067aa0ba902b7"),
            ("RPC_LOG_FORMAT", "json"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let server_log = served.server.log_text();
    let shown = served.stop();
    assert!(out.status.success(), "{stderr}\n{shown}");
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    // stdout: the reply (the command's TRACEPARENT: the server's span, in our trace) and the
    // call's trace id.
    let reply: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("call --json is JSON");
    assert_eq!(reply["trace_id"], trace_id, "{reply}");
    let body = reply["body"].as_str().expect("body");
    assert!(body.starts_with(&parent[..36]) && body != parent, "{body}");
    assert_eq!(reply["headers"]["traceparent"], body, "{reply}");
    assert_eq!(reply["headers"]["tracestate"], "rojo=00f067aa0ba902b7");
    // The client's log (JSON, -v): the call's line has the trace id.
    let client_lines = json_log_lines(&stderr);
    assert!(
        client_lines
            .iter()
            .any(|l| l.get("trace_id").and_then(|v| v.as_str()) == Some(trace_id)),
        "{stderr}"
    );
    // The server's log: every line JSON; the per-request line has its fields.
    let server_lines = json_log_lines(&server_log);
    let request = server_lines
        .iter()
        .find(|l| l["target"] == "rpc_server::request")
        .unwrap_or_else(|| panic!("no per-request line\n{server_log}"));
    assert_eq!(request["trace_id"], trace_id, "{request:?}");
    assert_eq!(request["outcome"], "answered", "{request:?}");
    assert!(request["duration_ms"].as_f64().is_some(), "{request:?}");
    assert!(
        request["correlation_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{request:?}"
    );
    let password = format!(":{}@", testing::broker().password);
    assert!(!stderr.contains(&password) && !server_log.contains(&password));
}

#[test]
fn no_trace_context_by_default_and_trace_starts_one() {
    let served = Served::start(
        &logs(),
        "cmd-untraced",
        &[
            "--log-format",
            "json",
            "--",
            "sh",
            "-c",
            "printf %s \"${TRACEPARENT-none}\"",
        ],
    );
    let queue = served.queue.name().to_string();
    let json = [("RPC_LOG_FORMAT", "json")];
    let plain = rpc_client_env(&queue, &["-v", "call", "--json", "x"], b"", &json);
    let traced = rpc_client_env(
        &queue,
        &["-v", "--trace", "call", "--json", "y"],
        b"",
        &json,
    );
    let server_log = served.server.log_text();
    let shown = served.stop();
    let (plain_err, traced_err) = (
        String::from_utf8_lossy(&plain.stderr),
        String::from_utf8_lossy(&traced.stderr),
    );
    assert!(plain.status.success(), "{plain_err}\n{shown}");
    assert!(traced.status.success(), "{traced_err}\n{shown}");
    // Without TRACEPARENT or --trace: no traceparent sent, none on the reply, no trace id in
    // the output or either log.
    let reply: serde_json::Value = serde_json::from_slice(&plain.stdout).expect("JSON");
    assert_eq!(reply["body"], "none", "{reply}");
    assert!(reply.get("trace_id").is_none(), "{reply}");
    assert!(reply["headers"].get("traceparent").is_none(), "{reply}");
    assert!(json_log_lines(&plain_err)
        .iter()
        .all(|l| l.get("trace_id").is_none()));
    // --trace: the call starts a trace; the command's TRACEPARENT is the server's span of it.
    let reply: serde_json::Value = serde_json::from_slice(&traced.stdout).expect("JSON");
    let trace_id = reply["trace_id"].as_str().expect("a trace id").to_string();
    let body = reply["body"].as_str().expect("body");
    assert_eq!(&body[3..35], trace_id, "{reply}");
    assert_eq!(reply["headers"]["traceparent"], body, "{reply}");
    assert!(json_log_lines(&traced_err)
        .iter()
        .any(|l| l.get("trace_id").and_then(|v| v.as_str()) == Some(&trace_id)));
    // The server's per-request lines: a trace id on the traced one only.
    let requests: Vec<_> = json_log_lines(&server_log)
        .into_iter()
        .filter(|l| l["target"] == "rpc_server::request")
        .collect();
    assert_eq!(requests.len(), 2, "{server_log}");
    let ids: Vec<_> = requests
        .iter()
        .map(|l| l.get("trace_id").cloned())
        .collect();
    assert!(ids.contains(&None), "{server_log}");
    assert!(
        ids.contains(&Some(serde_json::Value::from(trace_id))),
        "{server_log}"
    );
}

#[test]
fn with_log_format_json_every_stderr_line_of_both_binaries_is_one_json_object() {
    // The command's stderr (network text, to the client) has a quote, a backslash and an
    // escape sequence.
    let served = Served::start(
        &logs(),
        "cmd-json-errors",
        &[
            "--log-format",
            "json",
            "--",
            "sh",
            "-c",
            "printf 'bad \"quote\" \\\\ \\033[2J\\n' >&2; exit 3",
        ],
    );
    let queue = served.queue.name().to_string();
    let out = rpc_client(&queue, &["--log-format", "json", "call", "x"], b"");
    let client_err = String::from_utf8_lossy(&out.stderr).into_owned();
    let shown = served.stop();
    assert_eq!(out.status.code(), Some(5), "{client_err}\n{shown}");
    let lines = json_log_lines(&client_err);
    let last = lines.last().unwrap_or_else(|| panic!("no line\n{shown}"));
    assert_eq!(last["level"], "ERROR", "{client_err}");
    assert_eq!(last["target"], "rpc-client", "{client_err}");
    let message = last["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("server error ("), "{client_err}");
    assert!(message.contains("bad \"quote\" \\"), "{client_err}");
    assert!(!client_err.contains('\u{1b}'), "{client_err:?}");

    // The server's final error line.
    let mut server = crate::common::server::ServerProc::spawn_args(
        &logs(),
        "cmd-json-unreachable",
        &[
            "--log-format",
            "json",
            "--uri",
            "amqp://guest:hunter2@127.0.0.1:1/",
            "--connect-timeout",
            "2",
            "--max-retries",
            "0",
        ],
        &[],
    );
    let (status, shown) = server.finish(super::EXIT_WITHIN);
    assert_eq!(status.code(), Some(1), "{shown}");
    let log = server.log_text();
    let lines = json_log_lines(&log);
    let last = lines.last().unwrap_or_else(|| panic!("no line\n{shown}"));
    assert_eq!(
        (&last["level"], &last["target"]),
        (&"ERROR".into(), &"rpc-server".into())
    );
    let message = last["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("cannot connect to amqp://guest:****@127.0.0.1:1/"),
        "{log}"
    );
    assert!(!log.contains("hunter2"), "{log}");

    // Usage errors, with the format from a flag or the environment: one object.
    for (program, args, env) in [
        (
            rpc_client_bin(),
            &["--log-format", "json", "--bogus"][..],
            None,
        ),
        (
            env!("CARGO_BIN_EXE_rpc-server").into(),
            &["--queue", "", "--log-format=json"][..],
            None,
        ),
        (
            rpc_client_bin(),
            &["--in-flight", "x", "1"][..],
            Some("json"),
        ),
    ] {
        let mut command = Command::new(program);
        command.args(args).env_remove("RPC_LOG_FORMAT");
        if let Some(format) = env {
            command.env("RPC_LOG_FORMAT", format);
        }
        let out = command.output().expect("run the binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let lines = json_log_lines(&stderr);
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert_eq!(lines[0]["level"], "ERROR", "{stderr}");
        assert!(lines[0]["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("error: "));
    }
}
