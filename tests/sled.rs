//! The patched sled (`vendor/sled`, see its `PATCHES.md`), tested through its public API. What
//! the patches change is how many times sled's I/O threads (`sled-io-N`, a process-wide pool)
//! are woken for a write, so the tests count those threads' context switches in
//! `/proc/self/task/*/status`. Each test here fails on the unpatched 0.34.7 source; the patch
//! numbers are those of `PATCHES.md`.
//!
//! The pool is shared by every database in the process, so the tests run one at a time
//! (`SERIAL`).

use std::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::new(());

/// Context switches (voluntary and not) of sled's I/O threads so far, summed over the threads
/// alive now.
fn pool_switches() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("a task").path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if !comm.starts_with("sled-io") {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        total += status
            .lines()
            .filter(|line| line.contains("ctxt_switches:"))
            .filter_map(|line| line.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

fn open() -> (tempfile::TempDir, sled::Db) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .open()
        .expect("open sled");
    // Start the pool and let its threads settle into waiting.
    db.insert(b"warm-up", b"x").expect("insert");
    db.flush().expect("flush");
    std::thread::sleep(std::time::Duration::from_millis(100));
    (dir, db)
}

const ROUNDS: u64 = 200;

/// Runs `round` [`ROUNDS`] times on a fresh database (one test at a time) and returns the pool
/// threads' context switches per round.
fn pool_switches_per_round(what: &str, mut round: impl FnMut(&sled::Db, u64)) -> f64 {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (_dir, db) = open();
    let before = pool_switches();
    for i in 0..ROUNDS {
        round(&db, i);
    }
    let per_round = (pool_switches() - before) as f64 / ROUNDS as f64;
    eprintln!("{per_round:.1} pool context switches per {what}");
    per_round
}

/// Patch 1: one write handed to the pool wakes one pool thread, not all the waiting ones (7).
/// Here each round hands the pool one buffer: an atomic batch begins by sealing the buffer that
/// holds the insert before it, and has the pool write it.
#[test]
fn a_write_handed_to_the_pool_wakes_one_thread() {
    let per_round = pool_switches_per_round("round", |db, i| {
        db.insert(i.to_be_bytes(), &b"a user"[..]).expect("insert");
        let mut batch = sled::Batch::default();
        batch.insert(&(i + 1_000_000).to_be_bytes(), &b"a message"[..]);
        db.apply_batch(batch).expect("apply_batch");
        db.flush().expect("flush");
    });
    // Without patch 1: ~9.7 (every waiting thread wakes, takes the lock, sleeps again). With it:
    // ~2.1 (the thread that writes, its wait for the device).
    assert!(
        per_round < 5.0,
        "{per_round:.1} pool context switches per round"
    );
}

/// Patch 2: `flush` writes the buffer it seals on the calling thread, which waits for it
/// anyway, instead of handing it to the pool and sleeping until a pool thread is done.
#[test]
fn a_flush_writes_on_the_calling_thread() {
    let per_flush = pool_switches_per_round("flush", |db, i| {
        db.insert(i.to_be_bytes(), &b"a message"[..])
            .expect("insert");
        db.flush().expect("flush");
    });
    // Unpatched: ~2 per flush with patch 1, ~9 without. Patched: none.
    assert!(
        per_flush < 0.5,
        "{per_flush:.1} pool context switches per flush"
    );
}

/// Patch 4: an atomic batch followed by a flush (the relay's commit) runs on the calling thread
/// alone: the writer of the batch writes the buffer that holds its manifest itself.
#[test]
fn a_batch_and_its_flush_write_on_the_calling_thread() {
    let per_round = pool_switches_per_round("batch and flush", |db, i| {
        let mut batch = sled::Batch::default();
        batch.insert(&i.to_be_bytes(), &b"a message"[..]);
        batch.insert(&(i + 1_000_000).to_be_bytes(), &b"its dedupe entry"[..]);
        db.apply_batch(batch).expect("apply_batch");
        db.flush().expect("flush");
    });
    // Unpatched: ~14; with patches 1 to 3, ~2.1 (the pool writes the manifest's buffer).
    // Patched: none.
    assert!(
        per_round < 0.5,
        "{per_round:.1} pool context switches per batch and flush"
    );
}

/// Patch 3: what `flush` returns from has been `fdatasync`ed (sled 0.34 only ran
/// `sync_file_range`, which flushes neither the device's write cache nor a grown file's size:
/// sled issue #1452). A power loss cannot be staged in a test, so this one runs
/// [`flushes_for_strace`] under `strace` and counts the `fdatasync` calls on sled's file.
#[test]
fn a_flush_ends_in_fdatasync() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("temp dir");
    let trace = dir.path().join("trace");
    let status = std::process::Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=fdatasync,fsync,sync_file_range",
            "-o",
        ])
        .arg(&trace)
        .arg(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "flushes_for_strace",
            "--ignored",
            "--test-threads=1",
        ])
        .env("SLED_FLUSHES_DIR", dir.path().join("db"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("strace runs (scripts/install-test-deps installs it)");
    assert!(status.success(), "the traced flushes failed: {status}");
    let trace = std::fs::read_to_string(&trace).expect("the trace");
    let fdatasyncs = trace.lines().filter(|l| l.contains("fdatasync(")).count();
    // Unpatched: 0 (a sync_file_range per buffer, an fsync when the database closes).
    assert!(
        fdatasyncs >= FLUSHES,
        "{fdatasyncs} fdatasync calls for {FLUSHES} flushes:\n{trace}"
    );
}

const FLUSHES: usize = 20;

/// The traced side of [`a_flush_ends_in_fdatasync`]; does nothing unless run by it.
#[test]
#[ignore = "run under strace by a_flush_ends_in_fdatasync"]
fn flushes_for_strace() {
    let Some(path) = std::env::var_os("SLED_FLUSHES_DIR") else {
        return;
    };
    let db = sled::Config::new()
        .path(path)
        .flush_every_ms(None)
        .open()
        .expect("open sled");
    for i in 0..FLUSHES {
        db.insert(i.to_be_bytes(), &b"a message"[..])
            .expect("insert");
        db.flush().expect("flush");
    }
}
