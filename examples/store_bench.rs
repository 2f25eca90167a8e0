//! The store's share of a message, alone: `cargo run --release --example store_bench [PAIRS]
//! [BATCH]`. Appends batches the way the relay does (a dedupe lookup per message, one
//! `append_messages` per batch, then `durable`), over PAIRS conversations with BATCH messages a
//! batch, and prints the CPU (user + system) per message. No broker, no sockets: for comparing
//! store layouts and sled settings on a noisy machine, where end-to-end throughput wobbles.

use std::time::Instant;

use tidings::domain::{Body, ClientMsgId, Message, MessageId, UserId};
use tidings::store::Store;

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pairs: usize = args.next().map_or(100, |a| a.parse().expect("PAIRS"));
    let batch: usize = args.next().map_or(64, |a| a.parse().expect("BATCH"));
    let total = 200_000usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), 1 << 30).expect("store");
    let users: Vec<(UserId, UserId)> = (0..pairs)
        .map(|_| (UserId::random(), UserId::random()))
        .collect();
    let mut seqs = vec![0u64; pairs];
    let body = Body::parse("x".repeat(200)).expect("body");
    let (start_cpu, start) = (cpu_seconds(), Instant::now());
    let mut sent = 0usize;
    while sent < total {
        let mut messages = Vec::with_capacity(batch);
        for i in 0..batch {
            let pair = (sent + i) % pairs;
            let (from, to) = users[pair];
            let client_msg_id = ClientMsgId::parse(format!("c-{}", sent + i)).expect("cmid");
            assert!(store
                .message_by_client_id(&from, &client_msg_id)
                .expect("get")
                .is_none());
            seqs[pair] += 1;
            messages.push(Message {
                id: MessageId::random(),
                from,
                to,
                body: body.clone(),
                seq: seqs[pair],
                sent_at_ms: 1_700_000_000_000,
                client_msg_id,
            });
        }
        store.append_messages(&messages, &[]).expect("append");
        store.durable().expect("durable");
        sent += batch;
    }
    let (cpu, wall) = (cpu_seconds() - start_cpu, start.elapsed().as_secs_f64());
    println!(
        "{pairs} pairs, batches of {batch}: {:.2} µs CPU and {:.2} µs wall per message ({:.0} msg/s)",
        cpu * 1e6 / sent as f64,
        wall * 1e6 / sent as f64,
        sent as f64 / wall
    );
}
