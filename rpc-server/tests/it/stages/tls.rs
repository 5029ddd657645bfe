//! TLS end to end (issue 5), run by `scripts/tls-test.sh`: rpc-server and rpc-client over
//! amqps:// against the throwaway node that script starts (plain AMQP on `TLS_PLAIN_PORT`,
//! TLS on `TLS_PORT`) with a certificate for "localhost" only (SAN DNS:localhost, no IP SAN)
//! from the CA in `TLS_DIR/ca.pem` (`TLS_DIR/other.pem`: an unrelated CA). `RABBITMQCTL`
//! reaches the node, `TLS_NODE_LOG` is its log. The checks:
//!
//! - (a) rpc-server consumes over amqps:// with --tls-ca; rpc-client --tls-ca … 30 -> 832040
//! - (b) without --tls-ca the CA is untrusted: exit 3, a message about the certificate, fast
//! - (c) amqps://…@127.0.0.1 (the certificate names only localhost): exit 3, name mismatch
//! - (d) --tls --host localhost --port TLS_PORT --tls-ca … 10 -> 55
//! - (e) passwords never appear in logs or error messages (another user with a random
//!   password, trace-level client logging, a refused login; masked URIs are shown instead)
//! - (f) TLS against the plain AMQP port, and plain AMQP against the TLS port: exit 3, fast
//! - (g) a CA bundle: every certificate in the --tls-ca file is trusted, not just the first
//! - (h) a missing --tls-ca file is a usage error (exit 2)
//!
//! Logs (server.log, client-NAME.err) are written to `TLS_DIR`.

use super::proc::{self, Bg, Output};
use super::{await_consumers, rpc_server_bin, Tally};
use crate::common::broker::Ctl;
use crate::common::server::INHERITED;
use rpc_client::BrokerOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const QUEUE: &str = "rpc_tls";
/// A failed connection must end (exit 3) within this.
const FAST: Duration = Duration::from_millis(5000);

/// Where things are, from the environment `scripts/tls-test.sh` sets.
struct Setup {
    dir: PathBuf,
    ca: String,
    plain_port: u16,
    tls_port: u16,
}

fn setup() -> Setup {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is unset: run scripts/tls-test.sh"))
    };
    let port = |name: &str| {
        var(name)
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a port"))
    };
    let dir = PathBuf::from(var("TLS_DIR"));
    Setup {
        ca: dir.join("ca.pem").display().to_string(),
        dir,
        plain_port: port("TLS_PLAIN_PORT"),
        tls_port: port("TLS_PORT"),
    }
}

/// rpc-client --queue rpc_tls --timeout 10 ARGS with only `env` of the variables it reads; its
/// stderr also kept in `TLS_DIR/client-NAME.err`.
fn client(s: &Setup, name: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(crate::common::rpc_client_bin());
    for variable in INHERITED.iter().chain(&["RPC_URIS"]) {
        command.env_remove(variable);
    }
    command.envs(env.iter().copied());
    command
        .args(["--queue", QUEUE, "--timeout", "10"])
        .args(args);
    let out = proc::run(command, b"", Duration::from_secs(60));
    let _ = std::fs::write(s.dir.join(format!("client-{name}.err")), &out.stderr);
    out
}

/// The run ended with `code` and printed `stdout`; with `pattern`, its stderr contains it
/// (case-insensitive) and it took under [`FAST`].
fn want(t: &mut Tally, label: &str, out: &Output, code: i32, stdout: &str, pattern: Option<&str>) {
    let message_ok = pattern
        .is_none_or(|p| out.stderr.to_lowercase().contains(&p.to_lowercase()) && out.took < FAST);
    let first_line = proc::printable(out.stderr.lines().next().unwrap_or(""));
    let name = match pattern {
        Some(_) => format!(
            "{label}: exit {code} in {} ms: {first_line}",
            out.took.as_millis()
        ),
        None => format!("{label}: exit {code}, {stdout}"),
    };
    t.check(
        out.exited(code) && out.out() == stdout && message_ok,
        &name,
        || {
            let hint = pattern.map_or(String::new(), |p| {
                format!(", a message matching '{p}' within {} ms", FAST.as_millis())
            });
            format!(
                "  want exit {code}, stdout '{stdout}'{hint}\n{}",
                out.describe()
            )
        },
    );
}

#[test]
#[ignore = "run by scripts/tls-test.sh, which starts the TLS node"]
fn tls() {
    let s = setup();
    let mut t = Tally::new("tls");
    let mut server = serving(&s, &mut t);
    trust(&s, &mut t);
    passwords(&s, &mut t);
    mixups(&s, &mut t);
    ca_files(&s, &mut t);
    let _ = server.stop(Duration::from_secs(10));
    t.finish();
}

/// amqps://guest:guest@localhost:TLS_PORT, the URI that works.
fn uri_ok(s: &Setup) -> String {
    format!("amqps://guest:guest@localhost:{}", s.tls_port)
}

/// (a) rpc-server over amqps:// (URI in the environment, not on the command line), and a call.
fn serving(s: &Setup, t: &mut Tally) -> Bg {
    let ca = s.ca.as_str();
    let mut server = Command::new(rpc_server_bin());
    for variable in INHERITED {
        server.env_remove(variable);
    }
    server
        .env("AMQP_URI", uri_ok(s))
        .args(["--tls-ca", ca, "--queue", QUEUE]);
    let mut server = Bg::spawn(server, &s.dir, "server");
    let plain = BrokerOptions::from_uri(&format!("amqp://guest:guest@127.0.0.1:{}", s.plain_port))
        .expect("the plain URI");
    let consuming = await_consumers(&plain, QUEUE, 1, Duration::from_secs(30), &mut server);
    let a = client(s, "a", &[("AMQP_URI", &uri_ok(s))], &["--tls-ca", ca, "30"]);
    match consuming {
        Err(why) => t.fail(
            "(a) rpc-server did not start consuming over TLS within 30 s",
            &why,
        ),
        Ok(()) => {
            let label =
                format!("(a) rpc-server consumes over amqps://; rpc-client --tls-ca {ca} 30");
            want(t, &label, &a, 0, "832040", None);
        }
    }
    server
}

/// (b) to (d): which certificates are trusted, for which names.
fn trust(s: &Setup, t: &mut Tally) {
    let ca = s.ca.as_str();
    // (b) Our CA is not among the system's: the certificate is untrusted without --tls-ca.
    let b = client(s, "b", &[("AMQP_URI", &uri_ok(s))], &["30"]);
    want(t, "(b) without --tls-ca", &b, 3, "", Some("certificate"));

    // (c) The certificate names localhost only (no IP SAN): 127.0.0.1 must not match.
    let uri_ip = format!("amqps://guest:guest@127.0.0.1:{}", s.tls_port);
    let c = client(s, "c", &[("AMQP_URI", &uri_ip)], &["--tls-ca", ca, "30"]);
    let label = "(c) amqps://...@127.0.0.1 (certificate for localhost only)";
    want(t, label, &c, 3, "", Some("mismatch"));

    // (d) --tls with the separate host/port flags.
    let port = s.tls_port.to_string();
    let args = [
        "--tls",
        "--host",
        "localhost",
        "--port",
        &port,
        "--tls-ca",
        ca,
        "10",
    ];
    let d = client(s, "d", &[], &args);
    let label = format!("(d) --tls --host localhost --port {port} --tls-ca {ca} 10");
    want(t, &label, &d, 0, "55", None);
}

/// (f) Protocol mix-ups fail fast with exit 3 rather than hang until --connect-timeout.
fn mixups(s: &Setup, t: &mut Tally) {
    let plain_port = s.plain_port.to_string();
    let args = [
        "--tls",
        "--host",
        "localhost",
        "--port",
        &plain_port,
        "--tls-ca",
        &s.ca,
        "30",
    ];
    let f1 = client(s, "f1", &[], &args);
    want(t, "(f) TLS to the plain port", &f1, 3, "", Some(""));
    let plain_to_tls = format!("amqp://guest:guest@localhost:{}", s.tls_port);
    let env = [("AMQP_URI", plain_to_tls.as_str())];
    let f2 = client(s, "f2", &env, &["--connect-timeout", "10", "30"]);
    want(t, "(f) plain AMQP to the TLS port", &f2, 3, "", Some(""));
}

/// (g) A CA bundle: every certificate in the --tls-ca file is trusted, not just the first;
/// (h) an unusable --tls-ca is a usage error (exit 2) before any connection attempt.
fn ca_files(s: &Setup, t: &mut Tally) {
    let bundle = s.dir.join("bundle.pem");
    let joined = [s.dir.join("other.pem"), PathBuf::from(&s.ca)]
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
        .collect::<Vec<_>>()
        .concat();
    std::fs::write(&bundle, joined).expect("write bundle.pem");
    let bundle = bundle.display().to_string();
    let uri = uri_ok(s);
    let env = [("AMQP_URI", uri.as_str())];
    let g = client(s, "g", &env, &["--tls-ca", &bundle, "12"]);
    want(
        t,
        "(g) --tls-ca with our CA second in a bundle",
        &g,
        0,
        "144",
        None,
    );

    let missing = s.dir.join("does-not-exist.pem").display().to_string();
    let h = client(s, "h", &env, &["--tls-ca", &missing, "12"]);
    want(t, "(h) a missing --tls-ca file", &h, 2, "", None);
}

/// (e) Passwords never appear. guest's password is its name, so also a second user with a
/// random password: a call with trace-level logging of everything, a refused login and an
/// untrusted-certificate failure; every message must show the masked URI instead.
fn passwords(s: &Setup, t: &mut Tally) {
    let mut bad: Vec<String> = Vec::new();
    let pw = format!("pw{}", uuid::Uuid::new_v4().simple());
    let wrong = format!("wrong{}", uuid::Uuid::new_v4().simple());
    let ctl = Ctl::from_env();
    let hide = |e: String| e.replace(&pw, "****");
    let user = ctl
        .run(&["-q", "add_user", "tlsuser", &pw])
        .and_then(|_| {
            ctl.run(&[
                "-q",
                "set_permissions",
                "-p",
                "/",
                "tlsuser",
                ".*",
                ".*",
                ".*",
            ])
        })
        .map_err(hide);
    let mut errs = Vec::new();
    if let Err(err) = user {
        bad.push(format!(
            "rabbitmqctl add_user/set_permissions tlsuser failed: {err}"
        ));
    } else {
        let uri = |password: &str| format!("amqps://tlsuser:{password}@localhost:{}", s.tls_port);
        let (good, refused) = (uri(&pw), uri(&wrong));
        let trace = "trace,amiquip=trace,rpc_client=trace";
        let env = [("AMQP_URI", good.as_str()), ("RUST_LOG", trace)];
        let e1 = client(s, "e1", &env, &["--tls-ca", &s.ca, "-v", "7"]);
        if !(e1.exited(0) && e1.out() == "13") {
            bad.push(format!(
                "tlsuser call with RUST_LOG=trace (want 0, 13): {}",
                e1.describe()
            ));
        }
        let e2 = client(
            s,
            "e2",
            &[("AMQP_URI", &refused)],
            &["--tls-ca", &s.ca, "7"],
        );
        let e3 = client(s, "e3", &[("AMQP_URI", &good)], &["7"]);
        for (what, out) in [("wrong password", &e2), ("untrusted CA", &e3)] {
            if !out.exited(3) {
                bad.push(format!("{what}: want exit 3: {}", out.describe()));
            }
            if !out.stderr.contains("tlsuser:****@") {
                bad.push(format!(
                    "{what}: no masked URI (tlsuser:****@) in its stderr"
                ));
            }
        }
        errs = vec![e1.stderr, e2.stderr, e3.stderr];
    }
    let server_log = proc::read_text(&s.dir.join("server.err"));
    if !server_log.contains("guest:****@") {
        bad.push("no masked URI (guest:****@) in the server's log".into());
    }
    let secrets = [pw.as_str(), wrong.as_str(), "guest:guest", ":guest@"];
    let server_out = proc::read_text(&s.dir.join("server.out"));
    let node_log = std::env::var("TLS_NODE_LOG")
        .map_or_else(|_| String::new(), |p| proc::read_text(Path::new(&p)));
    let mut texts = vec![
        ("the server log", server_log),
        ("the server's stdout", server_out),
        ("the node log", node_log),
    ];
    texts.extend(errs.into_iter().map(|e| ("a client's stderr", e)));
    for (place, text) in &texts {
        if secrets.iter().any(|secret| text.contains(secret)) {
            bad.push(format!("a password appears in {place}"));
        }
    }
    t.check(
        bad.is_empty(),
        "(e) no password in the server log, the node log or any client message (masked URIs shown)",
        || format!("  (e) password hygiene:\n    {}", bad.join("\n    ")).replace(&pw, "****"),
    );
}
