//! 5. 20,000 replies with unknown correlation ids flood a client's callback queue while it
//!    makes at least 300 calls: all of them are answered right.

use super::{client_options, start_servers, stop_servers, Def, Scenario, CALL_TIMEOUT};
use crate::common::caller::Caller;
use crate::common::expected;
use rpc_client::testing::{self, Admin, QueueGuard};
use rpc_client::wire;
use rpc_client::Properties;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub const SCENARIO: Def = Def {
    number: "5",
    name: "20,000 stray replies",
    breaks_broker: false,
    run,
};

/// n of the flood scenario's calls: a mix of fast and slower ones.
const FLOOD_NS: [u64; 6] = [1, 30, 1000, 10_000, 100_000, 300_000];
const FLOOD_REPLIES: u64 = 20_000;
const FLOOD_CALLS: u64 = 300;

fn run(sc: &mut Scenario) {
    for n in FLOOD_NS {
        expected(n);
    }
    let queue = QueueGuard::new("fault-flood");
    let mut servers = start_servers(queue.name(), "flood", 2);
    let mut caller = Caller::connected(client_options(queue.name(), CALL_TIMEOUT));
    let reply_queue = caller.reply_queue().expect("connected").to_string();
    let published = Arc::new(AtomicU64::new(0));
    let flood_done = Arc::new(AtomicBool::new(false));
    let flood_started = Instant::now();
    let flood = {
        let (published, flood_done) = (Arc::clone(&published), Arc::clone(&flood_done));
        let reply_queue = reply_queue.clone();
        thread::spawn(move || {
            let admin = Admin::connect().expect("flood connects");
            for i in 0..FLOOD_REPLIES {
                let id = uuid::Uuid::new_v4().to_string();
                let (properties, body): (Properties, &[u8]) = match i % 5 {
                    0 => (
                        wire::reply_properties(Some(&id), "impostor", None),
                        b"12345",
                    ),
                    1 => (
                        wire::reply_properties(
                            Some(&id),
                            "impostor",
                            Some(wire::ErrorCode::Internal),
                        ),
                        b"not yours",
                    ),
                    2 => (Properties::default(), b"832040"),
                    3 => (
                        Properties::default().with_correlation_id(String::new()),
                        b"\xff\xfe",
                    ),
                    // 252 characters: a short string holds at most 255 bytes (amiquip does not
                    // check, and the broker closes the connection on a longer one).
                    _ => (Properties::default().with_correlation_id(id.repeat(7)), b""),
                };
                admin
                    .publish(&reply_queue, body, properties)
                    .expect("publish a stray reply");
                published.fetch_add(1, Ordering::SeqCst);
                if i % 500 == 499 {
                    // Pacing: spread the flood over about a second of calls.
                    thread::sleep(Duration::from_millis(25));
                }
            }
            flood_done.store(true, Ordering::SeqCst);
            flood_started.elapsed()
        })
    };
    testing::wait_until("the flood to start", Duration::from_secs(30), || {
        Ok(published.load(Ordering::SeqCst) >= 1000)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // At least FLOOD_CALLS calls, and on until the flood is over: the calls after it (whose
    // replies were queued behind the last stray ones) prove the client read all of them.
    let mut during_flood = 0;
    let mut after_flood = 0;
    let mut k = 0;
    while k < FLOOD_CALLS || after_flood < 5 {
        let flooding = !flood_done.load(Ordering::SeqCst);
        let call = caller.call(FLOOD_NS[k as usize % FLOOD_NS.len()]);
        if flooding {
            during_flood += 1;
        } else {
            after_flood += 1;
        }
        sc.record(&call);
        k += 1;
    }
    let flood_took = flood.join().expect("flood thread");
    sc.check(caller.connects == 1, || {
        format!("the client reconnected ({} connects)", caller.connects)
    });
    sc.check(caller.reply_queue() == Some(reply_queue.as_str()), || {
        "the callback queue changed".into()
    });
    sc.check(during_flood >= 50, || {
        format!("only {during_flood} calls started during the flood")
    });
    let t = sc.tally;
    sc.check(t.right == t.calls, || {
        format!("{} of {} calls right", t.right, t.calls)
    });
    sc.note(format!(
        "{} stray replies published in {:.2}s; {during_flood} calls started during the flood, \
         {after_flood} after it",
        published.load(Ordering::SeqCst),
        flood_took.as_secs_f64()
    ));
    stop_servers(sc, &mut servers);
}
