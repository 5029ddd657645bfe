//! Requests that kill their server, and acks of answered requests while a long one runs, with
//! real `rpc-server` processes killed by SIGKILL (by their own command, or by the test) on the
//! test broker (`AMQP_URI`: both RabbitMQ 3.10 and 4.x in `scripts/test.sh`).
//!
//! Every command here records its pid, and each test checks at its end that none of them is
//! left running. Server logs are in `target/tmp/poison/`.

use crate::common::broker::Ctl;
use crate::common::server::ServerProc;
use crate::common::{log_dir, rpc_client_bin};
use amiquip::{AmqpProperties, ConsumerOptions, QueueDeclareOptions};
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_server::{ATTEMPTS_HEADER, MAX_DELIVERIES};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to exit by itself.
const EXIT_WITHIN: Duration = Duration::from_secs(30);

/// Most servers the crash loop starts: enough for [`MAX_DELIVERIES`] crashes and the server
/// that answers.
const MAX_SERVERS: usize = 10;

fn logs() -> PathBuf {
    log_dir("poison")
}

/// A file of `name` in the log directory, removed first.
fn fresh_file(name: &str) -> PathBuf {
    std::fs::create_dir_all(logs()).expect("log directory");
    let path = logs().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Checks that none of the processes whose pids the commands appended to `pids` still runs.
fn none_left(pids: &Path) {
    let text = std::fs::read_to_string(pids).unwrap_or_default();
    // Killed processes are reaped by init a moment later: poll, with a deadline.
    testing::wait_until(
        "the commands' processes to be gone",
        Duration::from_secs(5),
        || {
            Ok(text.split_whitespace().all(|pid| {
                !Command::new("kill")
                    .args(["-0", pid])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            }))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: pids {text:?}"));
}

/// The crash loop of a supervisor: starts `rpc-server --queue-type TYPE -- sh -c SCRIPT` on
/// `queue` again each time it dies, until `caller` returns (or [`MAX_SERVERS`] were started),
/// then stops the server still running. Returns what `caller` returned, how many servers died
/// of SIGKILL, and the servers' logs.
fn crash_loop<T: Send>(
    name: &str,
    queue: &str,
    queue_type: &str,
    script: &str,
    caller: impl FnOnce() -> T + Send,
) -> (T, usize, String) {
    thread::scope(|scope| {
        let call = scope.spawn(caller);
        let mut crashes = 0;
        let mut shown = String::new();
        for i in 0..MAX_SERVERS {
            if call.is_finished() {
                break;
            }
            let mut server = ServerProc::on_broker(
                &logs(),
                &format!("{name}-{i}"),
                queue,
                &testing::broker(),
                &["--queue-type", queue_type, "--", "sh", "-c", script],
            );
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                if let Some(status) = server.exited() {
                    if status.signal() == Some(9) {
                        crashes += 1;
                    }
                    break;
                }
                if call.is_finished() || Instant::now() > deadline {
                    let stopped = server.stop(EXIT_WITHIN);
                    assert!(stopped.is_ok(), "{stopped:?}");
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            shown.push_str(&server.shown());
        }
        let result = call.join().expect("the caller thread");
        (result, crashes, shown)
    })
}

/// `sh -c` script: appends its pid to `pids`, then kills its server (its parent) with SIGKILL.
fn killer(pids: &Path) -> String {
    format!("echo $$ >> '{}'; kill -9 $PPID", pids.display())
}

/// `rpc-client ARGS...` on the test broker (the password in the environment).
fn rpc_client(args: &[&str]) -> Output {
    let broker = testing::broker();
    Command::new(rpc_client_bin())
        .args(["--host", &broker.host, "--port", &broker.port.to_string()])
        .args(["--vhost", &broker.vhost, "--user", &broker.user])
        .args(args)
        .env("AMQP_PASSWORD", &broker.password)
        .env_remove("AMQP_URI")
        .stdin(Stdio::null())
        .output()
        .expect("run rpc-client")
}

#[test]
fn a_request_that_kills_its_server_is_answered_redelivered_on_classic_and_quorum_queues() {
    for queue_type in ["classic", "quorum"] {
        let queue = QueueGuard::new(&format!("poison-{queue_type}"));
        Admin::connect()
            .expect("admin")
            .declare(queue.name(), queue_type == "quorum")
            .expect("declare the request queue");
        let pids = fresh_file(&format!("poison-{queue_type}.pids"));
        let (out, crashes, shown) = crash_loop(
            &format!("poison-{queue_type}"),
            queue.name(),
            queue_type,
            &killer(&pids),
            || rpc_client(&["call", "--queue", queue.name(), "--timeout", "60", "poison"]),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(5),
            "{queue_type}: {stderr}\n{shown}"
        );
        assert!(
            stderr.contains("server error (redelivered)"),
            "{queue_type}: {stderr}"
        );
        // The first delivery and each re-published copy ran once: MAX_DELIVERIES crashes.
        assert_eq!(
            crashes as u64, MAX_DELIVERIES,
            "{queue_type}: servers killed by the request\n{shown}"
        );
        assert!(
            shown.contains(&format!("{ATTEMPTS_HEADER}=4")),
            "{queue_type}: the count travels with the request\n{shown}"
        );
        none_left(&pids);
    }
}

#[test]
fn a_foreign_callers_poison_request_is_acked_without_a_reply() {
    let queue = QueueGuard::new("poison-foreign");
    let admin = Admin::connect().expect("admin");
    admin.declare(queue.name(), false).expect("declare");
    let pids = fresh_file("poison-foreign.pids");
    // As the tutorial's pika client does: an exclusive server-named callback queue, a request
    // with reply_to and correlation_id only (no `type` asking for error replies).
    let channel = admin.channel();
    let callback = channel
        .queue_declare(
            "",
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
        )
        .expect("callback queue");
    let replies = callback
        .consume(ConsumerOptions {
            no_ack: true,
            ..ConsumerOptions::default()
        })
        .expect("consume the callback queue");
    let properties = AmqpProperties::default()
        .with_reply_to(callback.name().to_string())
        .with_correlation_id("pika-like-1".into());
    admin
        .publish(queue.name(), b"30", properties)
        .expect("publish the request");
    // The server that finally refuses it says so in its log instead of replying.
    let name = format!("poison-foreign-{}", std::process::id());
    let prefix = format!("{name}-");
    let refused = "not replying (redelivered)";
    let (seen, crashes, shown) = crash_loop(&name, queue.name(), "classic", &killer(&pids), || {
        testing::wait_until(
            "a server's log line about the unanswered request",
            Duration::from_secs(120),
            || Ok(logs_contain(&prefix, refused)),
        )
    });
    assert!(seen.is_ok(), "{seen:?}\n{shown}");
    assert_eq!(crashes as u64, MAX_DELIVERIES, "{shown}");
    // No reply, not even a late one: the line is written instead of the publish.
    let late = replies.receiver().recv_timeout(Duration::from_millis(500));
    assert!(
        late.is_err(),
        "a tutorial caller got a reply: {late:?}\n{shown}"
    );
    // Acked: nothing left in the queue, and no server holds it.
    let mut probe = Admin::connect().expect("admin");
    probe
        .wait_for_empty(queue.name())
        .expect("the request acked");
    assert_eq!(
        probe.queue_state(queue.name()).expect("queue state"),
        Some((0, 0)),
        "{shown}"
    );
    none_left(&pids);
}

/// Whether a server log in the log directory whose name starts with `prefix` holds `needle`.
fn logs_contain(prefix: &str, needle: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(logs()) else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.starts_with(prefix)
            && name.ends_with(".log")
            && std::fs::read_to_string(entry.path()).is_ok_and(|text| text.contains(needle))
    })
}

#[test]
fn an_answered_requests_ack_is_not_held_while_a_long_one_runs() {
    ack_not_held("ack-held", "--prefetch");
    ack_not_held("ack-held-w2", "--workers");
}

/// `rpc-server FLAG 2 -- sh -c SCRIPT`: "fast" and "slow" both in the server's hands; "fast"
/// is answered, then the server is killed while "slow" runs. Every run is appended to
/// `runs`; "slow" sleeps only while `hold` exists. "fast" must have run once.
fn ack_not_held(name: &str, flag: &str) {
    let queue = QueueGuard::new(name);
    Admin::connect()
        .expect("admin")
        .declare(queue.name(), false)
        .expect("declare");
    let runs = fresh_file(&format!("{name}.runs"));
    let hold = fresh_file(&format!("{name}.hold"));
    let pids = fresh_file(&format!("{name}.pids"));
    std::fs::write(&hold, "").expect("hold file");
    // Removed on drop too, so that a failing test leaves no command waiting on it.
    let hold = Hold(hold);
    let script = format!(
        "echo $$ >> '{pids}'; body=$(cat); echo \"$body\" >> '{runs}'; \
         if [ \"$body\" = slow ]; then while [ -e '{hold}' ]; do sleep 0.05; done; fi; \
         echo \"$body\"",
        pids = pids.display(),
        runs = runs.display(),
        hold = hold.0.display()
    );
    let args = [flag, "2", "--", "sh", "-c", script.as_str()];
    let broker = testing::broker();
    // Both requests are queued before the server starts, so both are delivered at once.
    let caller = {
        let queue = queue.name().to_string();
        thread::spawn(move || {
            rpc_client(&[
                "call",
                "--queue",
                &queue,
                "--timeout",
                "60",
                "--in-flight",
                "2",
                "fast",
                "slow",
            ])
        })
    };
    let mut admin = Admin::connect().expect("admin");
    testing::wait_until("both requests queued", Duration::from_secs(20), || {
        Ok(admin.queue_state(queue.name())?.map(|(m, _)| m) == Some(2))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let mut first =
        ServerProc::on_broker(&logs(), &format!("{name}-1"), queue.name(), &broker, &args);
    // "fast" is acked once the broker holds only "slow" unacked: held back, both would stay
    // unacked for as long as "slow" runs. (Its log line comes before its reply and ack.)
    let ctl = Ctl::from_env();
    let mut listed = Ok(None);
    testing::wait_until(
        "fast answered and acked, slow running",
        Duration::from_secs(20),
        || {
            if run_counts(&runs) != (1, 1) || first.log_count("exited with status 0") == 0 {
                return Ok(false);
            }
            listed = unacked(&ctl, queue.name());
            Ok(listed == Ok(Some(1)))
        },
    )
    .unwrap_or_else(|e| panic!("{e} (unacked: {listed:?})\n{}", first.shown()));
    first.sigkill();
    let status = first.wait_exit(Duration::from_secs(5));
    assert_eq!(
        status.and_then(|s| s.signal()),
        Some(9),
        "{}",
        first.shown()
    );
    // The next server runs "slow" again, quickly now; "fast" must not run again.
    std::fs::remove_file(&hold.0).expect("remove the hold file");
    let mut second =
        ServerProc::on_broker(&logs(), &format!("{name}-2"), queue.name(), &broker, &args);
    let out = caller.join().expect("caller thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", second.shown());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fast\nslow\n");
    admin
        .wait_for_empty(queue.name())
        .unwrap_or_else(|e| panic!("{e}"));
    let stopped = second.stop(EXIT_WITHIN);
    assert!(stopped.is_ok(), "{stopped:?}");
    // With --workers 2 the two runs go in either order.
    assert_eq!(
        run_counts(&runs),
        (1, 2),
        "runs of fast and slow: {:?}\n{}\n{}",
        std::fs::read_to_string(&runs),
        first.shown(),
        second.shown()
    );
    none_left(&pids);
}

/// How many times "fast" and "slow" ran, from the `runs` file.
fn run_counts(runs: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(runs).unwrap_or_default();
    let count = |body: &str| text.lines().filter(|line| *line == body).count();
    (count("fast"), count("slow"))
}

/// A file whose existence keeps the "slow" command waiting; removed on drop.
struct Hold(PathBuf);

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The broker's count of `queue`'s delivered and not yet acked messages (`rabbitmqctl`).
fn unacked(ctl: &Ctl, queue: &str) -> Result<Option<u64>, String> {
    let listed = ctl.run(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_unacknowledged",
    ])?;
    Ok(listed.lines().find_map(|line| {
        let (name, count) = line.rsplit_once('\t')?;
        if name == queue {
            count.trim().parse().ok()
        } else {
            None
        }
    }))
}
