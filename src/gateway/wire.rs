//! Byte framing of one client connection: whole MQTT packets out of the byte stream, and packets
//! queued and written back. Client packets are decoded with rumqttc's `mqttbytes` (all fields
//! public); everything sent to the client is encoded with rumqttd's `V4`, the codec its
//! notifications are made for.
//!
//! Memory is the point here: a chat server holds many connections that are idle most of the
//! time, so an idle connection holds only a small read buffer and no write buffer. The read
//! size adapts: a read that fills the room it was given doubles the next one (a busy sender),
//! one that does not brings it back down.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet as In;
use rumqttc::mqttbytes::{self};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Packet as Out, Protocol as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest packet a client may send; a larger one closes the connection. Big enough for
/// any valid command, so an over-long body gets its `body_too_large` error event.
pub(super) const MAX_PACKET: usize = 256 * 1024;
/// The largest CONNECT: a token, a client id and a short will fit many times over, and a
/// socket that has not authenticated yet holds no more than this (and one read's room).
pub(super) const MAX_CONNECT: usize = 8 * 1024;
/// A client that does not read what it is sent for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The read room of a connection that has been quiet; also what an idle one holds.
const MIN_READ: usize = 256;
/// The read room of a connection whose reads keep filling it.
const MAX_READ: usize = 64 * 1024;

pub(super) struct Wire<R, W> {
    reader: R,
    writer: W,
    /// Bytes read and not yet decoded; empty (no allocation) between packets.
    rbuf: BytesMut,
    /// How much room the next read gets.
    read_size: usize,
    /// Encoded packets not yet written; empty (no allocation) between writes.
    out: BytesMut,
    /// The largest packet the client may send now: [`MAX_CONNECT`] until it is connected.
    max_packet: usize,
    /// Packets decoded so far.
    decoded: u64,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Wire<R, W> {
    pub(super) fn new(reader: R, writer: W) -> Self {
        Self {
            reader,
            writer,
            rbuf: BytesMut::new(),
            read_size: MIN_READ,
            out: BytesMut::new(),
            max_packet: MAX_CONNECT,
            decoded: 0,
        }
    }

    /// The client is connected: from now on its packets may be up to [`MAX_PACKET`].
    pub(super) fn connected(&mut self) {
        self.max_packet = MAX_PACKET;
    }

    /// Packets decoded so far.
    pub(super) fn decoded(&self) -> u64 {
        self.decoded
    }

    /// Part of a packet is read and the rest is still to come.
    pub(super) fn has_partial_packet(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Reads until one whole packet is buffered; `Ok(None)` at the end of the stream.
    pub(super) async fn read_packet(&mut self) -> Result<Option<In>, mqttbytes::Error> {
        loop {
            if let Some(packet) = self.next_packet()? {
                return Ok(Some(packet));
            }
            if !self.fill().await {
                return Ok(None);
            }
        }
    }

    /// The next whole packet already read, `Ok(None)` if more bytes are needed.
    pub(super) fn next_packet(&mut self) -> Result<Option<In>, mqttbytes::Error> {
        match In::read(&mut self.rbuf, self.max_packet) {
            Ok(packet) => {
                self.decoded += 1;
                Ok(Some(packet))
            }
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads what the client sent. `false` at the end of the stream or on a read error.
    /// Cancel-safe: dropped before it completes, nothing read is lost.
    pub(super) async fn fill(&mut self) -> bool {
        if self.rbuf.capacity() == self.rbuf.len() {
            self.rbuf.reserve(self.read_size);
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        match self.reader.read_buf(&mut self.rbuf).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.read_size = if n == room {
                    (self.read_size * 2).min(MAX_READ).min(self.max_packet)
                } else {
                    MIN_READ
                };
                true
            }
        }
    }

    /// Gives the read buffer back once every packet in it is handled.
    pub(super) fn release_read_buffer(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
    }

    /// Encodes `packet` for the next [`Wire::flush`]; `false` if it cannot be encoded.
    pub(super) fn queue(&mut self, packet: Out) -> bool {
        V4.write(packet, &mut self.out).is_ok()
    }

    /// Writes what is queued; `false` if the client is gone or does not read.
    pub(super) async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, self.writer.write_all(&self.out)).await;
        // Given back, not cleared: an idle connection holds no write buffer.
        self.out = BytesMut::new();
        matches!(written, Ok(Ok(())))
    }

    /// Closes the connection's write side (the client sees the end of the stream).
    pub(super) async fn close(&mut self) {
        let _ = self.writer.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rumqttc::mqttbytes::v4::{Connect, PingReq, PubAck, Publish, Subscribe};
    use rumqttc::mqttbytes::QoS;

    use super::*;

    fn wire() -> Wire<tokio::io::Empty, tokio::io::Sink> {
        Wire::new(tokio::io::empty(), tokio::io::sink())
    }

    /// Decodes everything buffered: the packets, and whether it ended in an error.
    fn decode_all(wire: &mut Wire<tokio::io::Empty, tokio::io::Sink>) -> (Vec<In>, bool) {
        let mut packets = Vec::new();
        loop {
            match wire.next_packet() {
                Ok(Some(packet)) => packets.push(packet),
                Ok(None) => return (packets, false),
                Err(_) => return (packets, true),
            }
        }
    }

    /// Client packets of the kinds a connected client sends, encoded.
    fn client_packets() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let publish = (
            "[a-z/]{1,30}",
            prop::collection::vec(any::<u8>(), 0..2000),
            1u16..,
        )
            .prop_map(|(topic, payload, pkid)| {
                let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload);
                publish.pkid = pkid;
                let mut out = BytesMut::new();
                publish.write(&mut out).unwrap();
                out.to_vec()
            });
        let other = prop_oneof![
            (1u16..).prop_map(|pkid| {
                let mut out = BytesMut::new();
                PubAck::new(pkid).write(&mut out).unwrap();
                out.to_vec()
            }),
            Just({
                let mut out = BytesMut::new();
                PingReq.write(&mut out).unwrap();
                out.to_vec()
            }),
            "[a-z/+#]{1,40}".prop_map(|filter| {
                let mut subscribe = Subscribe::new(filter, QoS::AtLeastOnce);
                subscribe.pkid = 1;
                let mut out = BytesMut::new();
                subscribe.write(&mut out).unwrap();
                out.to_vec()
            }),
        ];
        prop::collection::vec(prop_oneof![publish, other], 1..20)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes before CONNECT: packets, a wait for more, or an error; never a panic, and
        /// never more than 8 KiB asked for.
        #[test]
        fn any_bytes_decode_to_packets_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            let mut wire = wire();
            wire.rbuf.extend_from_slice(&bytes);
            let _ = decode_all(&mut wire);
        }

        /// A CONNECT announcing more than 8 KiB is refused from its fixed header alone.
        #[test]
        fn a_connect_over_8_kib_is_refused_at_its_header(len in (MAX_CONNECT + 1)..(MAX_PACKET * 2)) {
            let mut wire = wire();
            wire.rbuf.extend_from_slice(&[0x10]);
            let mut remaining = len;
            loop {
                let mut byte = (remaining % 128) as u8;
                remaining /= 128;
                if remaining > 0 {
                    byte |= 0x80;
                }
                wire.rbuf.extend_from_slice(&[byte]);
                if remaining == 0 {
                    break;
                }
            }
            prop_assert!(wire.next_packet().is_err());
        }

        /// Packets split at any points come out whole, in order, and nothing is left over.
        #[test]
        fn packets_split_anywhere_come_out_whole(
            packets in client_packets(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut wire = wire();
            wire.connected();
            let stream: Vec<u8> = packets.concat();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len())).collect();
            points.push(stream.len());
            points.sort_unstable();
            let (mut decoded, mut from) = (Vec::new(), 0);
            for to in points {
                wire.rbuf.extend_from_slice(&stream[from..to]);
                from = to;
                let (got, failed) = decode_all(&mut wire);
                prop_assert!(!failed);
                decoded.extend(got);
                prop_assert_eq!(wire.has_partial_packet(), wire.decoded() < packets.len() as u64 && !wire.rbuf.is_empty());
            }
            prop_assert_eq!(decoded.len(), packets.len());
            prop_assert!(!wire.has_partial_packet());
        }

        /// Before CONNECT only CONNECT-sized packets are read: a real CONNECT with a token, a
        /// client id of 128 bytes and a short will decodes.
        #[test]
        fn a_real_connect_fits(client_id in "[a-z0-9]{1,128}", token in "[A-Za-z0-9._-]{100,600}") {
            let mut connect = Connect::new(client_id);
            connect.set_login("0123456789abcdef01234567", token);
            let mut out = BytesMut::new();
            connect.write(&mut out).unwrap();
            let mut wire = wire();
            wire.rbuf.extend_from_slice(&out);
            prop_assert!(matches!(wire.next_packet(), Ok(Some(In::Connect(_)))));
        }
    }
}
