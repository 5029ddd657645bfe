//! 10. Consumer timeouts, logged by name. The broker's `consumer_timeout` is set to 5 s (and
//!     its channel tick to 1 s, so that it is checked every second) with `rabbitmqctl eval`,
//!     and set back afterwards (also when the scenario fails):
//!     - a command server on a quorum queue runs `sleep 15` for a call: the broker closes its
//!       channel (406 PRECONDITION_FAILED, RabbitMQ up to 4.2); the server logs "consumer
//!       timeout (406 PRECONDITION_FAILED - delivery acknowledgement ... timed out ...)", and the
//!       caller gets the `redelivered` error reply (exit 5), not a timeout;
//!     - a `basic.cancel` while a long request is in hand and the queue still exists (how a
//!       quorum queue of RabbitMQ 4.3 reports a consumer timeout; sent here with `rabbitmqctl
//!       eval` through the server's channel) is logged as a likely consumer timeout, not as a
//!       deleted queue, and the server consumes again.
//!
//!     Every command's pid is recorded: none is left running at the end.

use super::{logs, Def, Scenario};
use crate::common::broker::Ctl;
use crate::common::rpc_client_bin;
use crate::common::server::ServerProc;
use rpc_client::testing::{self, QueueGuard};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

pub const SCENARIO: Def = Def {
    number: "10",
    name: "consumer timeout, by name",
    breaks_broker: true,
    run,
};

/// A setting of the `rabbit` application, set with `rabbitmqctl eval` and set back on drop.
struct RabbitEnv {
    ctl: Ctl,
    key: &'static str,
    /// What `application:get_env` said before: `{ok,V}` or `undefined`.
    before: String,
}

impl RabbitEnv {
    fn set(ctl: &Ctl, key: &'static str, value: &str) -> Result<RabbitEnv, String> {
        let before = ctl
            .run(&["eval", &format!("application:get_env(rabbit, {key}).")])?
            .trim()
            .to_string();
        let guard = RabbitEnv {
            ctl: ctl.clone(),
            key,
            before,
        };
        ctl.run(&[
            "eval",
            &format!("application:set_env(rabbit, {key}, {value})."),
        ])?;
        Ok(guard)
    }
}

impl Drop for RabbitEnv {
    fn drop(&mut self) {
        let key = self.key;
        let restore = match self
            .before
            .strip_prefix("{ok,")
            .and_then(|v| v.strip_suffix('}'))
        {
            Some(value) => format!("application:set_env(rabbit, {key}, {value})."),
            None => format!("application:unset_env(rabbit, {key})."),
        };
        if let Err(err) = self.ctl.run(&["eval", &restore]) {
            eprintln!("CANNOT SET {key} BACK ({}): {err}", self.before);
        }
    }
}

/// `rpc-client call --queue QUEUE --timeout 40 x` on the test broker.
fn call(queue: &str) -> Output {
    let broker = testing::broker();
    Command::new(rpc_client_bin())
        .args(["--host", &broker.host, "--port", &broker.port.to_string()])
        .args(["--vhost", &broker.vhost, "--user", &broker.user])
        .args(["call", "--queue", queue, "--timeout", "40", "x"])
        .env("AMQP_PASSWORD", &broker.password)
        .env_remove("AMQP_URI")
        .stdin(Stdio::null())
        .output()
        .expect("run rpc-client")
}

/// Sends a `basic.cancel` for the consumers of `queue` through their channels (the broker
/// itself keeps them: the client is told it was cancelled). Returns rabbitmqctl's output.
fn send_cancel(ctl: &Ctl, queue: &str) -> Result<String, String> {
    let expr = format!(
        "[gen_server2:cast(proplists:get_value(channel_pid, C), \
         {{command, {{'basic.cancel', proplists:get_value(consumer_tag, C), true}}}}) \
         || C <- rabbit_amqqueue:consumers_all(<<\"/\">>), \
         element(4, proplists:get_value(queue_name, C)) =:= <<\"{queue}\">>]."
    );
    ctl.run(&["eval", &expr])
}

/// Checks that none of the pids in `pids` runs any more (within 5 s).
fn none_left(sc: &mut Scenario, pids: &Path) {
    let text = std::fs::read_to_string(pids).unwrap_or_default();
    let gone = testing::wait_until("the commands to be gone", Duration::from_secs(5), || {
        Ok(text.split_whitespace().all(|pid| {
            !Command::new("kill")
                .args(["-0", pid])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        }))
    });
    sc.check(gone.is_ok(), || format!("commands still run: {text:?}"));
}

fn run(sc: &mut Scenario) {
    let ctl = Ctl::from_env();
    let _timeout = RabbitEnv::set(&ctl, "consumer_timeout", "5000").expect("consumer_timeout");
    let _tick = RabbitEnv::set(&ctl, "channel_tick_interval", "1000").expect("tick interval");
    let pids = logs().join("consumer-timeout.pids");
    let _ = std::fs::remove_file(&pids);
    channel_closed(sc, &pids);
    cancelled(sc, &ctl, &pids);
    none_left(sc, &pids);
}

/// A command that adds its pid to `pids`, sleeps `seconds` and answers.
fn script(pids: &Path, seconds: u32) -> String {
    format!(
        "echo $$ >> '{}'; sleep {seconds}; echo done",
        pids.display()
    )
}

/// `rpc-server --name NAME ARGS...` on `queue`, once it consumes.
fn start_server(name: &str, queue: &str, args: &[&str]) -> ServerProc {
    let broker = testing::broker();
    let server = ServerProc::on_broker(&logs(), name, queue, &broker, args);
    crate::common::server::await_consumers(
        std::slice::from_ref(&server),
        std::slice::from_ref(&broker),
        queue,
        Duration::from_secs(20),
    );
    server
}

/// A channel closed for the timeout (RabbitMQ up to 4.2).
fn channel_closed(sc: &mut Scenario, pids: &Path) {
    let queue = QueueGuard::new("fault-ctimeout");
    // Well past the 5 s: a loaded machine can delay the broker's check by seconds.
    let slow = script(pids, 15);
    let mut server = start_server(
        "ctimeout",
        queue.name(),
        &["--queue-type", "quorum", "--", "sh", "-c", &slow],
    );
    let out = call(queue.name());
    let stderr = String::from_utf8_lossy(&out.stderr);
    sc.check(out.status.code() == Some(5), || {
        format!("the caller: {:?} {stderr}", out.status)
    });
    sc.check(stderr.contains("(redelivered)"), || {
        format!("the caller: {stderr}")
    });
    let named =
        server.log_lines("consumer timeout (406 PRECONDITION_FAILED - delivery acknowledgement");
    sc.check(!named.is_empty(), || {
        format!("no consumer timeout by name\n{}", server.log_tail(15))
    });
    if let Some(line) = named.first() {
        sc.note(format!(
            "logged: {}",
            line.chars().take(160).collect::<String>()
        ));
    }
    super::stop_servers(sc, std::slice::from_mut(&mut server));
}

/// A basic.cancel while a long request is in hand (RabbitMQ 4.3's quorum queues).
fn cancelled(sc: &mut Scenario, ctl: &Ctl, pids: &Path) {
    let queue = QueueGuard::new("fault-ccancel");
    let three = script(pids, 3);
    let mut server = start_server(
        "ccancel",
        queue.name(),
        &["--workers", "2", "--", "sh", "-c", &three],
    );
    let name = queue.name().to_string();
    let caller = thread::spawn(move || call(&name));
    let started = testing::wait_until("the request to start", Duration::from_secs(20), || {
        Ok(std::fs::read_to_string(pids)
            .unwrap_or_default()
            .lines()
            .count()
            >= 2)
    });
    sc.check(started.is_ok(), || format!("{started:?}"));
    match send_cancel(ctl, queue.name()) {
        Ok(out) => sc.check(out.contains("ok"), || {
            format!("no consumer to cancel: {out}")
        }),
        Err(err) => sc.check(false, || err),
    }
    let logged = testing::wait_until("the cancel logged", Duration::from_secs(20), || {
        Ok(server.log_count("consumer timeout (the broker cancelled our consumer") > 0)
    });
    sc.check(logged.is_ok(), || {
        format!("the cancel is not logged by name\n{}", server.log_tail(15))
    });
    sc.check(server.log_count("was deleted") == 0, || {
        format!(
            "a cancel taken for a deleted queue\n{}",
            server.log_tail(15)
        )
    });
    let out = caller.join().expect("caller thread");
    // The request in hand when the consumer was cancelled comes back to the same server,
    // which refuses it: it lost it while handling it.
    sc.check(out.status.code() == Some(5), || {
        format!(
            "the caller: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    testing::wait_for_consumers(
        &[testing::broker()],
        queue.name(),
        1,
        Duration::from_secs(20),
    )
    .map(|_| ())
    .unwrap_or_else(|e| sc.check(false, || format!("not consuming again: {e}")));
    super::stop_servers(sc, std::slice::from_mut(&mut server));
}
