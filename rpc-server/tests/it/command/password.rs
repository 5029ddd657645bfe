//! The broker password: given by variable or file, found in nothing the command can read; a bad
//! password file is a one-line error in both binaries.

use super::{logs, EXIT_WITHIN};
use crate::common::rpc_client_bin;
use crate::common::server::ServerProc;
use rpc_client::testing::{self, Admin, QueueGuard};
use std::path::Path;
use std::process::Command;

/// How a test server gets the broker password.
enum PasswordFrom {
    Variable,
    File,
    FileVariable,
}

/// `rpc-server` on `queue` with the broker's user and password given as `from` says (never on
/// the command line), run without capabilities when the test runs as root (a process with
/// CAP_SYS_PTRACE reads every process's `/proc` files).
fn secret_server(name: &str, queue: &str, from: PasswordFrom, password_file: &Path) -> ServerProc {
    let broker = testing::broker();
    let port = broker.port.to_string();
    let file = password_file.display().to_string();
    let mut args = vec![
        "--host",
        &broker.host,
        "--port",
        &port,
        "--vhost",
        &broker.vhost,
    ];
    let mut env = vec![("AMQP_USER", broker.user.as_str())];
    match from {
        PasswordFrom::Variable => env.push(("AMQP_PASSWORD", &broker.password)),
        PasswordFrom::File => args.extend(["--password-file", &file]),
        PasswordFrom::FileVariable => env.push(("AMQP_PASSWORD_FILE", &file)),
    }
    let ca = broker.tls_ca.as_ref().map(|p| p.display().to_string());
    if broker.tls {
        args.push("--tls");
    }
    if let Some(ca) = &ca {
        env.push(("AMQP_TLS_CA", ca));
    }
    args.extend(["--queue", queue, "--name", name]);
    let script = "for f in environ cmdline maps auxv; do \
                    if cat /proc/$PPID/$f; then echo; echo \"read-$f\"; fi; \
                  done 2>/dev/null; f=exe; \
                  if readlink /proc/$PPID/$f /proc/$PPID/fd/*; then echo \"read-$f\"; fi; \
                  for d in /proc/[0-9]*; do \
                    if [ \"$(cut -d' ' -f4 $d/stat)\" = $PPID ] && [ $d != /proc/$$ ]; then \
                      f=sibling; cat $d/environ $d/cmdline && echo \"read-$f\"; \
                    fi; \
                  done 2>/dev/null; \
                  env | grep -v '^AMQP_USER='";
    args.extend(["--", "sh", "-c", script]);
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("0") && l.starts_with("Uid:"))
    });
    let wrapper: &[&str] = if root {
        &["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
    } else {
        &[]
    };
    ServerProc::spawn_wrapped(&logs(), name, wrapper, &args, &env)
}

#[test]
fn the_command_finds_the_password_in_nothing_it_can_read() {
    let broker = testing::broker();
    let password_file = logs().join(format!("password-{}", std::process::id()));
    std::fs::create_dir_all(logs()).expect("log dir");
    std::fs::write(&password_file, format!("{}\n", broker.password)).expect("password file");
    for (from, name) in [
        (PasswordFrom::Variable, "cmd-secret-env"),
        (PasswordFrom::File, "cmd-secret-file"),
        (PasswordFrom::FileVariable, "cmd-secret-file-env"),
    ] {
        let queue = QueueGuard::new(name);
        let mut server = secret_server(name, queue.name(), from, &password_file);
        let mut admin = Admin::connect().expect("admin");
        if let Err(err) = admin.wait_for_consumers(queue.name(), 1) {
            server.sigterm();
            panic!("{err}\n{}", server.finish(EXIT_WITHIN).1);
        }
        // rpc-client reads the password file too.
        let out = Command::new(rpc_client_bin())
            .args(["--host", &broker.host, "--port", &broker.port.to_string()])
            .args(["--vhost", &broker.vhost, "--user", &broker.user])
            .args(["--queue", queue.name(), "--timeout", "20", "call", "x"])
            .env("AMQP_PASSWORD_FILE", &password_file)
            .env_remove("AMQP_PASSWORD")
            .env_remove("AMQP_URI")
            .output()
            .expect("run rpc-client");
        let shown = server.shown();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}\n{shown}");
        let seen = String::from_utf8_lossy(&out.stdout);
        // It did read the command line, and nothing else of the server's.
        assert!(seen.contains("read-cmdline"), "{name}: {seen}\n{shown}");
        // The server's other child, its guardian, is readable, and holds no password.
        assert!(seen.contains("read-sibling"), "{name}: {seen}\n{shown}");
        assert!(
            seen.contains("RPC_SERVER_INTERNAL_GUARDIAN"),
            "{name}: {seen}"
        );
        assert!(seen.contains("rpc-server"), "{name}: {seen}\n{shown}");
        // (The markers are not in the script as such, which is in the command line.)
        for closed in ["read-environ", "read-maps", "read-auxv", "read-exe"] {
            assert!(!seen.contains(closed), "{name}: {seen}");
        }
        assert!(!seen.contains("AMQP_PASSWORD"), "{name}: {seen}");
        assert!(
            !seen.contains(&broker.password),
            "{name}: the password in {seen}"
        );
        server.sigterm();
        let (status, shown) = server.finish(EXIT_WITHIN);
        assert!(status.success(), "{shown}");
    }
    let _ = std::fs::remove_file(&password_file);
}

#[test]
fn a_bad_password_file_is_a_one_line_error_exit_2_in_both_binaries() {
    let missing = logs().join("no-such-password-file");
    let empty = logs().join(format!("empty-password-{}", std::process::id()));
    std::fs::create_dir_all(logs()).expect("log dir");
    std::fs::write(&empty, "\n").expect("empty file");
    for (file, why) in [(&missing, "No such file"), (&empty, "empty")] {
        let path = file.display().to_string();
        let mut server = ServerProc::spawn_args(
            &logs(),
            "cmd-bad-password-file",
            &["--password-file", &path, "--", "cat"],
            &[],
        );
        let (status, shown) = server.finish(EXIT_WITHIN);
        assert_eq!(status.code(), Some(2), "{shown}");
        let log = server.log_text();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(
            log.contains(&format!("--password-file '{path}': {why}")),
            "{log}"
        );

        let out = Command::new(rpc_client_bin())
            .args(["call", "x"])
            .env("AMQP_PASSWORD_FILE", &path)
            .env_remove("AMQP_PASSWORD")
            .env_remove("AMQP_URI")
            .output()
            .expect("run rpc-client");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("--password-file '{path}': {why}")),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_file(&empty);
}

#[test]
fn a_password_file_that_is_not_a_regular_file_exits_2_at_once_in_both_binaries() {
    let dir = logs().join(format!("special-password-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory");
    // A FIFO with no writer: opening it for reading would wait for ever.
    let fifo = dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let socket = dir.join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("a socket");
    let link = dir.join("link-to-fifo");
    std::os::unix::fs::symlink(&fifo, &link).expect("a symlink");
    let at_once = std::time::Duration::from_secs(5);
    for (file, why) in [
        (fifo.as_path(), "not a regular file (a FIFO)"),
        (&link, "not a regular file (a FIFO)"),
        (&dir, "not a regular file (a directory)"),
        (
            Path::new("/dev/null"),
            "not a regular file (a character device)",
        ),
        // A socket cannot be opened at all.
        (&socket, "No such device or address"),
    ] {
        let path = file.display().to_string();
        let started = std::time::Instant::now();
        let mut server = ServerProc::spawn_args(
            &logs(),
            "cmd-special-password-file",
            &["--password-file", &path, "--", "cat"],
            &[],
        );
        let (status, shown) = server.finish(at_once);
        assert_eq!(status.code(), Some(2), "{path}: {shown}");
        let log = server.log_text();
        assert_eq!(log.lines().count(), 1, "{path}: {log}");
        assert!(
            log.contains(&format!("--password-file '{path}': {why}")),
            "{path}: {log}"
        );

        let mut client = Command::new(rpc_client_bin())
            .args(["call", "x"])
            .env("AMQP_PASSWORD_FILE", &path)
            .env_remove("AMQP_PASSWORD")
            .env_remove("AMQP_URI")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run rpc-client");
        let exited = testing::wait_until("rpc-client to exit", at_once, || {
            Ok(client.try_wait().is_ok_and(|status| status.is_some()))
        });
        if exited.is_err() {
            let _ = client.kill();
        }
        let out = client.wait_with_output().expect("rpc-client's output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        exited.unwrap_or_else(|e| panic!("{path}: {e}: it blocks ({stderr})"));
        assert_eq!(out.status.code(), Some(2), "{path}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{path}: {stderr}");
        assert!(
            stderr.contains(&format!("--password-file '{path}': {why}")),
            "{path}: {stderr}"
        );
        assert!(
            started.elapsed() < 2 * at_once,
            "{path}: {:?}",
            started.elapsed()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
