//! The patched rumqttd (`vendor/rumqttd`, see its `PATCHES.md`), tested through its public API:
//! a router, local links, and a global allocator that counts live heap bytes, so that "costs
//! little" and "gives memory back" are numbers a test can check. Each test here fails on the
//! unpatched 0.20.0 source; the patch numbers are those of `PATCHES.md`.
//!
//! The tests share one allocator counter, so they run one at a time (`SERIAL`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, Filter, Packet, PingReq, PubAck, PubAckReason, QoS,
    RetainForwardRule, Subscribe, Unsubscribe,
};
use rumqttd::{Notification, Router, RouterConfig};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

static SERIAL: Mutex<()> = Mutex::new(());

fn live_heap() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// A router of its own, and a way to open links to it (the router's channel type cannot be
/// named outside rumqttd, so the builder is a closure over it).
fn router(
    max_segment_size: usize,
) -> impl Fn(&str, bool) -> Result<(LinkTx, LinkRx, bool), String> {
    let config = RouterConfig {
        max_connections: 20_000,
        max_outgoing_packet_count: 200,
        max_segment_size,
        max_segment_count: 2,
        ..RouterConfig::default()
    };
    let router_tx = Router::new(0, config).spawn();
    move |client_id, clean| {
        let (tx, rx, connack) = LinkBuilder::new(client_id, router_tx.clone())
            .clean_session(clean)
            .build()
            .map_err(|e: LinkError| e.to_string())?;
        let session_present = match Option::<Packet>::from(connack) {
            Some(Packet::ConnAck(ack, _)) => ack.session_present,
            other => panic!("expected a CONNACK, got {other:?}"),
        };
        Ok((tx, rx, session_present))
    }
}

/// `LinkTx::send` is async in name only (it never waits): run it to completion.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a local link call waited"),
    }
}

fn send(tx: &mut LinkTx, packet: Packet) {
    now(tx.send(packet)).expect("the router is running");
}

fn subscribe(tx: &mut LinkTx, filter: &str) {
    let filters = vec![Filter {
        path: filter.to_owned(),
        qos: QoS::AtLeastOnce,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::Never,
    }];
    send(tx, Packet::Subscribe(Subscribe { pkid: 1, filters }, None));
}

/// Subscribes and waits for the router's SUBACK, as a client would.
fn subscribed(tx: &mut LinkTx, rx: &mut LinkRx, filter: &str) {
    subscribe(tx, filter);
    assert!(matches!(
        next(rx, Duration::from_secs(5)),
        Some(Notification::DeviceAck(_))
    ));
}

fn disconnect(tx: &mut LinkTx) {
    let disconnect = Disconnect {
        reason_code: DisconnectReasonCode::NormalDisconnection,
    };
    send(tx, Packet::Disconnect(disconnect, None));
}

/// The next notification within `wait`, answering the router's flow control on the way.
fn next(rx: &mut LinkRx, wait: Duration) -> Option<Notification> {
    let deadline = Instant::now() + wait;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Some(Notification::Unschedule)) => rx.ready().expect("the router is running"),
            Ok(Some(notification)) => return Some(notification),
            Ok(None) => {}
            Err(_) => return None,
        }
    }
}

/// Waits for the next forwarded publish, acknowledging it; its payload.
fn receive(tx: &mut LinkTx, rx: &mut LinkRx) -> Vec<u8> {
    loop {
        match next(rx, Duration::from_secs(5)) {
            Some(Notification::Forward(forward)) => {
                let ack = PubAck {
                    pkid: forward.publish.pkid(),
                    reason: PubAckReason::Success,
                };
                send(tx, Packet::PubAck(ack, None));
                return forward.publish.payload.to_vec();
            }
            Some(_) => {}
            None => panic!("no publish arrived"),
        }
    }
}

/// Returns once the router has handled everything sent before (its channel is FIFO): a ping
/// on `probe` and its answer.
fn settle(probe: &mut (LinkTx, LinkRx)) {
    send(&mut probe.0, Packet::PingReq(PingReq));
    loop {
        match next(&mut probe.1, Duration::from_secs(5)) {
            Some(Notification::DeviceAck(_)) => return,
            Some(_) => {}
            None => panic!("the router did not answer a ping"),
        }
    }
}

/// A connection that subscribed and then sits idle costs a few KiB, not the ~430 KiB of
/// preallocated buffers (patch 2) and an empty commit-log segment (patch 3).
#[test]
fn an_idle_subscribed_link_costs_a_few_kib() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let open = router(64 * 1024);
    let mut probe = open("probe", true).map(|(tx, rx, _)| (tx, rx)).unwrap();
    settle(&mut probe);
    const LINKS: usize = 1_000;
    let before = live_heap();
    let mut links = Vec::with_capacity(LINKS);
    for i in 0..LINKS {
        let (mut tx, mut rx, _) = open(&format!("idle-{i}"), true).unwrap();
        subscribe(&mut tx, &format!("users/{i:024}/inbox"));
        // The SUBACK, read as a client would.
        assert!(matches!(
            next(&mut rx, Duration::from_secs(5)),
            Some(Notification::DeviceAck(_))
        ));
        links.push((tx, rx));
    }
    settle(&mut probe);
    let per_link = (live_heap() - before) / LINKS as isize;
    eprintln!("heap per idle subscribed link: {per_link} B");
    assert!(per_link < 8 * 1024, "{per_link} B per idle link");
}

/// A filter nobody subscribes to any more, and no kept session needs, gives its log back
/// (patch 4); a clean session leaves nothing behind in the graveyard (patch 5).
#[test]
fn subscribers_that_come_and_go_leave_nothing_behind() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let open = router(64 * 1024);
    let mut probe = open("probe", true).map(|(tx, rx, _)| (tx, rx)).unwrap();
    let (mut publisher, _publisher_rx, _) = open("publisher", true).unwrap();
    let cycle = |i: usize, publisher: &mut LinkTx| {
        let (mut tx, mut rx, _) = open(&format!("churn-{i}"), true).unwrap();
        let filter = format!("users/{i:024}/inbox");
        subscribed(&mut tx, &mut rx, &filter);
        publisher.publish(filter, format!("hello {i}")).unwrap();
        assert_eq!(receive(&mut tx, &mut rx), format!("hello {i}").as_bytes());
        disconnect(&mut tx);
    };
    // Warm up the router's own tables, which keep their capacity.
    for i in 0..50 {
        cycle(i, &mut publisher);
    }
    settle(&mut probe);
    let before = live_heap();
    for i in 50..550 {
        cycle(i, &mut publisher);
    }
    settle(&mut probe);
    let grown = live_heap() - before;
    eprintln!("heap growth after 500 subscribers came and went: {grown} B");
    assert!(
        grown < 64 * 1024,
        "{grown} B left behind by 500 subscribers"
    );
}

/// Fresh client ids (up to 4 KiB each, as a hostile client may send) on clean sessions leave
/// no graveyard entries behind (patch 5).
#[test]
fn fresh_client_ids_leave_no_graveyard() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let open = router(64 * 1024);
    let mut probe = open("probe", true).map(|(tx, rx, _)| (tx, rx)).unwrap();
    for i in 0..20 {
        let (mut tx, _rx, _) = open(&format!("warm-{i}"), true).unwrap();
        disconnect(&mut tx);
    }
    settle(&mut probe);
    let before = live_heap();
    for i in 0..1_000 {
        let id = format!("{i}-{}", "x".repeat(4096));
        let (mut tx, _rx, _) = open(&id, true).unwrap();
        disconnect(&mut tx);
    }
    settle(&mut probe);
    let grown = live_heap() - before;
    eprintln!("heap growth after 1000 fresh client ids: {grown} B");
    assert!(
        grown < 64 * 1024,
        "{grown} B left behind by 1000 client ids"
    );
}

/// A kept session (`clean_session = false`) still gets what was published while it was away,
/// its log lives as long as the session, and a clean reconnect gives it all back.
#[test]
fn kept_sessions_keep_their_log_until_discarded() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let open = router(64 * 1024);
    let mut probe = open("probe", true).map(|(tx, rx, _)| (tx, rx)).unwrap();
    let (mut publisher, _publisher_rx, _) = open("publisher", true).unwrap();
    settle(&mut probe);
    let before = live_heap();

    let (mut tx, mut rx, present) = open("keeper", false).unwrap();
    assert!(!present);
    subscribed(&mut tx, &mut rx, "users/keeper/inbox");
    disconnect(&mut tx);
    drop((tx, rx));
    for i in 0..3 {
        publisher
            .publish("users/keeper/inbox", format!("while away {i}"))
            .unwrap();
    }
    let (mut tx, mut rx, present) = open("keeper", false).unwrap();
    assert!(present, "the kept session is back");
    for i in 0..3 {
        assert_eq!(
            receive(&mut tx, &mut rx),
            format!("while away {i}").as_bytes()
        );
    }
    disconnect(&mut tx);
    drop((tx, rx));
    let (mut tx, _rx, present) = open("keeper", true).unwrap();
    assert!(!present, "a clean reconnect discards the kept session");
    disconnect(&mut tx);
    drop((tx, _rx));
    settle(&mut probe);
    let grown = live_heap() - before;
    eprintln!("heap left after a kept session was discarded: {grown} B");
    assert!(
        grown < 16 * 1024,
        "{grown} B left after the session was discarded"
    );
}

/// An unsubscribe frees the filter's log too, and a later subscriber starts on a fresh one.
#[test]
fn unsubscribed_filters_are_freed_and_can_come_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let open = router(64 * 1024);
    let mut probe = open("probe", true).map(|(tx, rx, _)| (tx, rx)).unwrap();
    let (mut publisher, _publisher_rx, _) = open("publisher", true).unwrap();
    let (mut tx, mut rx, _) = open("flipper", true).unwrap();
    let mut round = |i: usize, tx: &mut LinkTx, rx: &mut LinkRx| {
        let filter = format!("users/{i:024}/inbox");
        subscribed(tx, rx, &filter);
        publisher.publish(filter.clone(), "x".repeat(100)).unwrap();
        assert_eq!(receive(tx, rx).len(), 100);
        let unsubscribe = Unsubscribe {
            pkid: 2,
            filters: vec![filter],
        };
        send(tx, Packet::Unsubscribe(unsubscribe, None));
        assert!(matches!(
            next(rx, Duration::from_secs(5)),
            Some(Notification::DeviceAck(_))
        ));
    };
    for i in 0..20 {
        round(i, &mut tx, &mut rx);
    }
    settle(&mut probe);
    let before = live_heap();
    for i in 20..520 {
        round(i, &mut tx, &mut rx);
    }
    // The same filter again: a fresh log, and delivery still works.
    round(7, &mut tx, &mut rx);
    settle(&mut probe);
    let grown = live_heap() - before;
    eprintln!("heap growth after 500 subscribe/unsubscribe rounds: {grown} B");
    assert!(
        grown < 64 * 1024,
        "{grown} B left by 500 unsubscribed filters"
    );
}

/// A link that publishes to many topics (tidings' relay publishes to every user's inbox) does
/// not keep a meter per topic forever (patch 7).
#[test]
fn a_publisher_to_many_topics_stays_small() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let open = router(64 * 1024);
    let mut probe = open("probe", true).map(|(tx, rx, _)| (tx, rx)).unwrap();
    let (mut publisher, _publisher_rx, _) = open("publisher", true).unwrap();
    for i in 0..2_000 {
        publisher
            .publish(format!("users/{i:024}/inbox"), "x")
            .unwrap();
    }
    settle(&mut probe);
    let before = live_heap();
    for i in 2_000..12_000 {
        publisher
            .publish(format!("users/{i:024}/inbox"), "x")
            .unwrap();
    }
    settle(&mut probe);
    let grown = live_heap() - before;
    eprintln!("heap growth after publishing to 10 000 more topics: {grown} B");
    assert!(grown < 64 * 1024, "{grown} B kept for 10 000 topics");
}

/// A commit log's segment size counts what its entries hold in memory, so a filter's buffer
/// is bounded by what the config says (patch 6).
#[test]
fn a_filter_log_holds_what_its_segments_allow() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const SEGMENT: usize = 16 * 1024;
    let open = router(SEGMENT);
    let mut probe = open("probe", true).map(|(tx, rx, _)| (tx, rx)).unwrap();
    let (mut publisher, _publisher_rx, _) = open("publisher", true).unwrap();
    // A kept session that is away: its filter's log fills and is never read.
    let (mut tx, mut rx, _) = open("away", false).unwrap();
    subscribed(&mut tx, &mut rx, "users/away/inbox");
    disconnect(&mut tx);
    // The router's channel grows to its bound (~1 MiB) under a burst and keeps it: let it.
    for i in 0..5_000 {
        publisher
            .publish("users/nobody/inbox", format!("{i:08}"))
            .unwrap();
    }
    settle(&mut probe);
    let before = live_heap();
    for i in 0..5_000 {
        publisher
            .publish("users/away/inbox", format!("{i:08}"))
            .unwrap();
    }
    settle(&mut probe);
    let held = live_heap() - before;
    eprintln!("heap held by a log of 2 x {SEGMENT} B segments: {held} B");
    // Two full segments and the active one, with slack for the last entry of each.
    assert!(
        held < 4 * SEGMENT as isize,
        "{held} B held by a log configured for 2 x {SEGMENT} B"
    );
}

/// After links disconnect while they were scheduled, the router keeps serving the live ones
/// (patch 8): before, it popped a dead id, took that for "nothing ready" and blocked on its
/// channel while a live link waited for data it already had.
#[test]
fn the_router_does_not_stall_on_links_that_left() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let open = router(1024 * 1024);
    let (mut publisher, _publisher_rx, _) = open("publisher", true).unwrap();
    let (mut busy, _busy_rx, _) = open("busy", true).unwrap();
    // Many links on one filter, and last a live one that must get its message.
    let mut leaving = Vec::new();
    for i in 0..300 {
        let (mut tx, mut rx, _) = open(&format!("leaving-{i}"), true).unwrap();
        subscribe(&mut tx, "stall/news");
        assert!(next(&mut rx, Duration::from_secs(5)).is_some());
        leaving.push((tx, rx));
    }
    let (mut live_tx, mut live_rx, _) = open("live", true).unwrap();
    subscribe(&mut live_tx, "stall/news");
    assert!(next(&mut live_rx, Duration::from_secs(5)).is_some());

    // Keep the router busy for a while, so that what follows reaches it as one batch: the
    // publish makes every subscriber ready, then 300 of them leave.
    for i in 0..100_000 {
        busy.buffer().push_back(Packet::Publish(
            rumqttd::protocol::Publish::new(format!("nobody/{}", i % 10), "x".to_owned(), false),
            None,
        ));
    }
    busy.publish("nobody/0", "x").unwrap();
    publisher.publish("stall/news", "for the live one").unwrap();
    for (tx, _) in &mut leaving {
        disconnect(tx);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = loop {
        match next(
            &mut live_rx,
            deadline.saturating_duration_since(Instant::now()),
        ) {
            Some(Notification::Forward(forward)) => break Some(forward.publish.payload),
            Some(_) => {}
            None => break None,
        }
    };
    assert_eq!(
        got.as_deref(),
        Some(&b"for the live one"[..]),
        "the live link got nothing: the router stalled"
    );
}

/// Counts the spans created under a `warn` filter (what tidings runs with by default).
struct SpanCounter;

static SPANS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl tracing::Subscriber for SpanCounter {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::WARN
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::WARN)
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        SPANS.fetch_add(1, Ordering::Relaxed);
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Patch 11: under a `warn` filter the router opens no span per packet (it opened three
/// error-level spans per publish, formatting the topic with `Debug` each time).
#[test]
fn publishes_open_no_spans_under_a_warn_filter() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    tracing::subscriber::set_global_default(SpanCounter).expect("the only global subscriber");
    let open = router(1024 * 1024);
    let (mut publisher, _publisher_rx, _) = open("span-publisher", true).unwrap();
    let (mut tx, mut rx) = {
        let (tx, rx, _) = open("span-subscriber", true).unwrap();
        (tx, rx)
    };
    subscribed(&mut tx, &mut rx, "spans/news");
    let before = SPANS.load(Ordering::Relaxed);
    for i in 0..100 {
        publisher.publish("spans/news", format!("{i}")).unwrap();
        assert_eq!(receive(&mut tx, &mut rx), format!("{i}").into_bytes());
    }
    assert_eq!(
        SPANS.load(Ordering::Relaxed) - before,
        0,
        "spans per publish"
    );
}
