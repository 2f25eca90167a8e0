//! An outbox payload (the JSON a client publishes on `users/{id}/outbox`): parsing must never
//! panic, whatever the bytes; it is either a command or the `error` event's fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::payloads::Command;

fuzz_target!(|data: &[u8]| {
    let _ = Command::parse(data);
});
