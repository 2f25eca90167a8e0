//! The global allocator: mimalloc (v2), set up for a server that holds many idle connections.
//!
//! glibc's malloc/free were about a quarter of the relay thread in the profile of a saturated
//! chat (BENCHMARKS.md, "Throughput"); mimalloc's thread-local free lists cost a fraction of
//! that. Its default of committing arenas eagerly, though, cost memory that the "Broker memory"
//! targets count: 130 MiB resident at start and 11.5 KiB per idle connection (glibc: 33 MiB
//! and 7.95 KiB). With `arena_eager_commit = 0` (commit arena memory as it is used) it is
//! 8.7 KiB per idle connection. mimalloc v3 was measured too: 8.8 KiB per idle connection, but
//! 12–20 % growth over the churn scenario against v2's 8–10 % (target ≤ 10 %).
//!
//! The option must be set before mimalloc's first allocation: from `main` it is too late, the
//! first arena is reserved by then. So a constructor that the loader runs before any other
//! (`.init_array` with priority 101, before mimalloc's own and before Rust's runtime
//! allocates) sets it. An operator can still choose with `MIMALLOC_ARENA_EAGER_COMMIT`.

use std::ffi::{c_char, c_int, c_long};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc v2's `mimalloc.h`.
const MI_OPTION_ARENA_EAGER_COMMIT: c_int = 4;

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00101"]
static SET_OPTIONS: extern "C" fn() = set_options;

extern "C" fn set_options() {
    let variable = b"MIMALLOC_ARENA_EAGER_COMMIT\0";
    // SAFETY: `variable` is NUL-terminated; getenv does not allocate and only reads the
    // environment, which nothing writes this early; mi_option_set only stores the value.
    unsafe {
        if libc::getenv(variable.as_ptr().cast::<c_char>()).is_null() {
            mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        }
    }
}
