//! Client bytes on an MQTT 5.0 connection, through rumqttc's MQTT 5.0 codec as the gateway uses
//! it (`src/gateway/codec.rs`): reading packets until an error must terminate and never panic,
//! at the gateway's packet cap and at a larger one.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rumqttc::v5::mqttbytes::v5::Packet;

fn drain(data: &[u8], max_size: u32) {
    let mut buf = BytesMut::from(data);
    // Every Ok consumes at least the 2-byte fixed header, so this ends; the bound only turns
    // a codec that stops consuming into a failure rather than a hang.
    for _ in 0..=data.len() {
        if Packet::read(&mut buf, Some(max_size)).is_err() {
            return;
        }
    }
    panic!(
        "Packet::read returned Ok more than {} times on {} bytes ({} left)",
        data.len() + 1,
        data.len(),
        buf.len()
    );
}

fuzz_target!(|data: &[u8]| {
    drain(data, 8 * 1024);
    drain(data, 256 * 1024);
});
