//! The metrics endpoint with the real tools, run by `scripts/metrics-test.sh` (which installs
//! Prometheus): an rpc-server with --metrics-addr on a fresh queue, `promtool check metrics` on
//! the exposition, the counters moved by exactly the calls made (read from the endpoint and
//! from Prometheus' own query API, Prometheus scraping the server from a private port),
//! /healthz and /readyz. `PROMETHEUS` and `PROMTOOL` name the programs (default: from PATH).
//! The probes under broker faults are fault scenario 11.

use super::proc::{self, Bg};
use super::{await_consumers, env_or, rpc_server_bin};
use crate::common::http::{free_port, get, sample};
use crate::common::{fresh_log_dir, rpc_client_bin};
use rpc_client::testing::{self, QueueGuard};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const STEP: Duration = Duration::from_secs(5);
const ANSWERED: &str = "rpc_server_requests_total{outcome=\"answered\",code=\"\"}";
const REFUSED: &str = "rpc_server_requests_total{outcome=\"refused\",code=\"too-large\"}";
const COUNT: &str = "rpc_server_request_duration_seconds_count";

/// GET `path` from the server: its body, which must come with 200.
fn body(addr: SocketAddr, path: &str) -> String {
    match get(addr, path, STEP) {
        Ok((200, body)) => body,
        other => panic!("GET {path}: {other:?} (want 200)"),
    }
}

/// The values of answered, refused{too-large} and the durations' count on the endpoint.
fn counters(addr: SocketAddr) -> [f64; 3] {
    let exposition = body(addr, "/metrics");
    [ANSWERED, REFUSED, COUNT].map(|series| sample(&exposition, series).unwrap_or(0.0))
}

/// `promtool ARGS` with `stdin`: must exit 0.
fn promtool(args: &[&str], stdin: &[u8]) {
    let mut command = Command::new(env_or("PROMTOOL", "promtool"));
    command.args(args);
    let out = proc::run(command, stdin, Duration::from_secs(60));
    assert!(out.exited(0), "promtool failed:\n{}", out.describe());
}

#[test]
#[ignore = "run by scripts/metrics-test.sh, which installs Prometheus"]
fn metrics() {
    let logs = fresh_log_dir("metrics");
    let guard = QueueGuard::new("rpc-metrics");
    let queue = guard.name();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let maddr = addr.to_string();
    let mut command = Command::new(rpc_server_bin());
    command.args([
        "--queue",
        queue,
        "--metrics-addr",
        &maddr,
        "--max-n",
        "1000",
        "-q",
    ]);
    let mut server = Bg::spawn(command, &logs, "server");
    let within = Duration::from_secs(20);
    if let Err(why) = await_consumers(&testing::broker(), queue, 1, within, &mut server) {
        panic!("the server does not consume: {why}");
    }

    for path in ["/healthz", "/readyz"] {
        let got = get(addr, path, STEP);
        assert!(
            matches!(got, Ok((200, _))),
            "{path}: {got:?} (want 200 while consuming)"
        );
    }
    println!("metrics: ok: /healthz 200, /readyz 200 while consuming");

    let exposition = body(addr, "/metrics");
    std::fs::write(logs.join("metrics.txt"), &exposition).expect("write metrics.txt");
    promtool(&["check", "metrics"], exposition.as_bytes());
    println!("metrics: ok: promtool check metrics");

    let before = counters(addr);
    let client = |args: &[&str]| {
        let mut command = Command::new(rpc_client_bin());
        command
            .args(["--queue", queue, "--timeout", "10"])
            .args(args);
        proc::run(command, b"", Duration::from_secs(60))
    };
    let out = client(&["10", "20", "30"]);
    assert!(
        out.exited(0) && out.out() == "55\n6765\n832040",
        "rpc-client 10 20 30:\n{}",
        out.describe()
    );
    let out = client(&["5000"]);
    assert!(
        out.exited(5),
        "a call over --max-n (want exit 5, an error reply):\n{}",
        out.describe()
    );
    let after = counters(addr);
    let moved: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(
        moved,
        [3.0, 1.0, 4.0],
        "after 3 answered calls and 1 refused: answered, refused, handled went {before:?} -> {after:?}"
    );
    println!(
        "metrics: ok: answered +3, refused{{code=too-large}} +1, durations +4 for the 4 calls made"
    );

    prometheus(&logs, &maddr, after[0]);
    drop(server);
}

/// A real Prometheus scraping `maddr` every second: it sees the server up, `answered` calls
/// answered and the build info.
fn prometheus(logs: &Path, maddr: &str, answered: f64) {
    let config = logs.join("prometheus.yml");
    let yml = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: rpc-server\n    static_configs:\n      - targets: ['{maddr}']\n"
    );
    std::fs::write(&config, yml).expect("write prometheus.yml");
    let config = config.display().to_string();
    promtool(&["check", "config", &config], b"");
    let paddr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut command = Command::new(env_or("PROMETHEUS", "prometheus"));
    command.args([
        format!("--config.file={config}"),
        format!("--storage.tsdb.path={}", logs.join("data").display()),
        format!("--web.listen-address={paddr}"),
        "--log.level=warn".into(),
    ]);
    let mut prom = Bg::spawn(command, logs, "prometheus");
    let up = testing::poll_until(
        "a successful scrape by Prometheus",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            if prom.exited().is_some() {
                return Ok(true);
            }
            Ok(query(paddr, "up{job=\"rpc-server\"}").ok().flatten() == Some(1.0))
        },
    );
    assert!(
        prom.exited().is_none(),
        "prometheus exited:\n{}",
        prom.describe()
    );
    if let Err(err) = up {
        panic!("{err}\n{}", prom.describe());
    }
    println!("metrics: ok: Prometheus scraped the server (up == 1)");
    let got = query(
        paddr,
        "sum(rpc_server_requests_total{job=\"rpc-server\",outcome=\"answered\"})",
    );
    assert_eq!(
        got,
        Ok(Some(answered)),
        "Prometheus' answered count (the endpoint says {answered})"
    );
    let info = query(paddr, "rpc_server_build_info{job=\"rpc-server\"}");
    assert_eq!(info, Ok(Some(1.0)), "Prometheus' rpc_server_build_info");
    println!("metrics: ok: Prometheus reads answered = {answered} calls and the build info");
}

/// The first result's value of `promql` from Prometheus' query API (`None`: no result).
fn query(prometheus: SocketAddr, promql: &str) -> Result<Option<f64>, String> {
    let path = format!("/api/v1/query?query={}", percent_encode(promql));
    let (status, body) = get(prometheus, &path, STEP)?;
    if status != 200 {
        return Err(format!("{path}: status {status}"));
    }
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{path}: {e}"))?;
    let value = json["data"]["result"][0]["value"][1].as_str();
    value
        .map(|v| v.parse().map_err(|e| format!("{path}: value {v:?}: {e}")))
        .transpose()
}

/// `text` for a URL's query string: everything but unreserved characters percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
