//! Byte framing of one client connection: whole MQTT packets out of the byte stream, and packets
//! queued and written back, in the MQTT version the client's CONNECT named (see
//! [`codec`](super::codec)).
//!
//! Memory is the point here: a chat server holds many connections that are idle most of the
//! time, so an idle connection holds only a small read buffer and no write buffer. The read
//! size adapts: a read that fills the room it was given doubles the next one (a busy sender),
//! one that does not brings it back down.

use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet as Out};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, ClientPacket, DecodeError, Version};

/// The largest packet a client may send; a larger one closes the connection. Big enough for
/// any valid command, so an over-long body gets its `body_too_large` error event.
pub(super) const MAX_PACKET: usize = 256 * 1024;
/// The largest CONNECT: a token, a client id and a short will fit many times over, and a
/// socket that has not authenticated yet holds no more than this (and one read's room).
pub(super) const MAX_CONNECT: usize = 8 * 1024;
/// A client that does not read what it is sent for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a 5.0 client gets to read the DISCONNECT that says why it is closed.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);
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
    /// The client's MQTT version, known from its CONNECT.
    version: Option<Version>,
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
            version: None,
        }
    }

    /// The client is connected: from now on its packets may be up to [`MAX_PACKET`].
    pub(super) fn connected(&mut self) {
        self.max_packet = MAX_PACKET;
    }

    /// The client's MQTT version: what it sends is decoded, and what it is sent encoded, in it.
    pub(super) fn speak(&mut self, version: Version) {
        self.version = Some(version);
    }

    /// The client's MQTT version (3.1.1 until its CONNECT says otherwise).
    pub(super) fn version(&self) -> Version {
        self.version.unwrap_or(Version::V4)
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
    pub(super) async fn read_packet(&mut self) -> Result<Option<ClientPacket>, DecodeError> {
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
    pub(super) fn next_packet(&mut self) -> Result<Option<ClientPacket>, DecodeError> {
        let packet = codec::decode(&mut self.rbuf, self.version, self.max_packet)?;
        if packet.is_some() {
            self.decoded += 1;
        }
        Ok(packet)
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
        codec::encode(self.version(), packet, &mut self.out)
    }

    /// Tells a 5.0 client why the server is closing its connection, if it reads it soon; a
    /// 3.1.1 client has no such packet and is told nothing.
    pub(super) async fn goodbye(&mut self, reason: DisconnectReasonCode) {
        if self.version() != Version::V5 {
            return;
        }
        let disconnect = Disconnect {
            reason_code: reason,
        };
        self.out.clear();
        if self.queue(Out::Disconnect(disconnect, None)) {
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, self.writer.write_all(&self.out)).await;
        }
        self.out = BytesMut::new();
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
    fn decode_all(wire: &mut Wire<tokio::io::Empty, tokio::io::Sink>) -> (Vec<ClientPacket>, bool) {
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
            prop_assert!(matches!(wire.next_packet(), Ok(Some(ClientPacket::Connect(_)))));
        }

        /// The same at 5.0: a CONNECT with properties, a will and a long token decodes, and
        /// says 5.0.
        #[test]
        fn a_real_v5_connect_fits(client_id in "[a-z0-9]{1,128}", token in "[A-Za-z0-9._-]{100,600}") {
            use rumqttc::v5::mqttbytes::v5::{Connect, ConnectProperties, LastWill, Login, Packet};
            let mut properties = ConnectProperties::new();
            properties.session_expiry_interval = Some(300);
            let connect = Connect { keep_alive: 30, client_id, clean_start: false, properties: Some(properties) };
            let will = LastWill::new("users/x/outbox", "{}", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, None);
            let login = Login::new("0123456789abcdef01234567", token);
            let mut out = BytesMut::new();
            Packet::Connect(connect, Some(will), Some(login)).write(&mut out, None).unwrap();
            let mut wire = wire();
            wire.rbuf.extend_from_slice(&out);
            let Ok(Some(ClientPacket::Connect(connect))) = wire.next_packet() else {
                return Err(TestCaseError::fail("not a CONNECT"));
            };
            prop_assert_eq!(connect.version, Version::V5);
            prop_assert_eq!(connect.session_expiry, 300);
            prop_assert!(connect.will.is_some());
        }

        /// Any bytes from a connected 5.0 client: packets, a wait for more, or an error; never
        /// a panic. A whole packet that does not decode is an error, never a wait for more.
        #[test]
        fn any_bytes_from_a_v5_client_decode_to_packets_or_an_error(
            bytes in prop::collection::vec(any::<u8>(), 0..4096),
        ) {
            let mut wire = wire();
            wire.speak(Version::V5);
            wire.connected();
            wire.rbuf.extend_from_slice(&bytes);
            let _ = decode_all(&mut wire);
        }

        /// Mutated 5.0 packets of the kinds a client sends (one byte changed anywhere): never a
        /// panic, and never a wait for bytes a whole packet already has.
        #[test]
        fn mutated_v5_packets_decode_or_fail(
            packet in v5_client_packet(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut bytes = packet;
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let mut wire = wire();
            wire.speak(Version::V5);
            wire.connected();
            wire.rbuf.extend_from_slice(&bytes);
            let declared = frame_length(&bytes);
            if let Ok(None) = wire.next_packet() {
                prop_assert!(declared.is_none_or(|len| len > bytes.len()));
            }
        }
    }

    /// A 5.0 packet of a kind a client sends, encoded by rumqttc's own client codec.
    fn v5_client_packet() -> impl Strategy<Value = Vec<u8>> {
        use rumqttc::v5::mqttbytes::v5::{
            Disconnect, DisconnectReasonCode, Packet, PubAck, Publish, PublishProperties, Subscribe,
        };
        use rumqttc::v5::mqttbytes::QoS;
        let encode = |packet: Packet| {
            let mut out = BytesMut::new();
            packet.write(&mut out, None).unwrap();
            out.to_vec()
        };
        prop_oneof![
            (
                "[a-z/]{1,30}",
                prop::collection::vec(any::<u8>(), 0..200),
                1u16..,
                any::<bool>()
            )
                .prop_map(move |(topic, payload, pkid, alias)| {
                    let properties = alias.then(|| PublishProperties {
                        topic_alias: Some(1),
                        ..Default::default()
                    });
                    let mut publish = Publish::new(topic, QoS::AtLeastOnce, payload, properties);
                    publish.pkid = pkid;
                    encode(Packet::Publish(publish))
                }),
            (1u16..).prop_map(move |pkid| encode(Packet::PubAck(PubAck::new(pkid, None)))),
            "[a-z/+#]{1,40}".prop_map(move |filter| {
                let mut subscribe = Subscribe::new(
                    rumqttc::v5::mqttbytes::v5::Filter::new(filter, QoS::AtLeastOnce),
                    None,
                );
                subscribe.pkid = 1;
                encode(Packet::Subscribe(subscribe))
            }),
            Just(encode(Packet::Disconnect(Disconnect::new(
                DisconnectReasonCode::DisconnectWithWillMessage
            )))),
        ]
    }

    /// The whole length a packet's fixed header declares, if it declares one.
    fn frame_length(bytes: &[u8]) -> Option<usize> {
        let mut remaining = 0usize;
        for (i, &byte) in bytes.iter().skip(1).take(4).enumerate() {
            remaining |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Some(2 + i + remaining);
            }
        }
        None
    }

    /// Every 5.0 packet the gateway sends decodes with rumqttc's 5.0 client codec (an
    /// independent decoder) to what was meant; the DISCONNECT with a reason above all, which
    /// rumqttd's own encoder gets wrong.
    #[test]
    fn what_a_v5_client_is_sent_decodes_as_meant() {
        use rumqttc::v5::mqttbytes::v5::{self as c, Packet};
        use rumqttd::protocol::{
            ConnAck, ConnAckProperties, ConnectReturnCode, Publish as OutPublish, SubAck,
            SubscribeReasonCode, UnsubAck, UnsubAckReason,
        };
        let roundtrip = |packet: Out| {
            let mut out = BytesMut::new();
            assert!(codec::encode(Version::V5, packet, &mut out));
            let bytes = out.to_vec();
            let decoded = Packet::read(&mut out, None).unwrap();
            assert!(out.is_empty(), "{bytes:02X?} left bytes over");
            (decoded, bytes)
        };
        let disconnect = Disconnect {
            reason_code: DisconnectReasonCode::NotAuthorized,
        };
        let (packet, bytes) = roundtrip(Out::Disconnect(disconnect, None));
        assert_eq!(bytes, [0xE0, 0x02, 0x87, 0x00]);
        assert!(
            matches!(packet, Packet::Disconnect(d) if d.reason_code == c::DisconnectReasonCode::NotAuthorized)
        );

        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::ServiceUnavailable,
        };
        let (packet, _) = roundtrip(Out::ConnAck(ack, None));
        assert!(
            matches!(packet, Packet::ConnAck(a) if a.code == c::ConnectReturnCode::ServerUnavailable)
        );
        let ack = ConnAck {
            session_present: true,
            code: ConnectReturnCode::Success,
        };
        let properties = ConnAckProperties {
            session_expiry_interval: Some(3600),
            assigned_client_identifier: Some("auto-1".into()),
            max_packet_size: Some(MAX_PACKET as u32),
            wildcard_subscription_available: Some(0),
            ..Default::default()
        };
        let (packet, _) = roundtrip(Out::ConnAck(ack, Some(properties)));
        let Packet::ConnAck(ack) = packet else {
            panic!("{packet:?}")
        };
        assert!(ack.session_present);
        let properties = ack.properties.unwrap();
        assert_eq!(properties.session_expiry_interval, Some(3600));
        assert_eq!(
            properties.assigned_client_identifier.as_deref(),
            Some("auto-1")
        );
        assert_eq!(properties.max_packet_size, Some(MAX_PACKET as u32));

        let publish = OutPublish::new("users/x/inbox", "{\"type\":\"read\"}", false);
        let (packet, _) = roundtrip(Out::Publish(publish, None));
        assert!(
            matches!(packet, Packet::Publish(p) if p.payload == "{\"type\":\"read\"}" && p.topic == "users/x/inbox")
        );

        let ack = SubAck {
            pkid: 7,
            return_codes: vec![
                SubscribeReasonCode::QoS1,
                SubscribeReasonCode::Unspecified,
                SubscribeReasonCode::TopicFilterInvalid,
            ],
        };
        let (packet, _) = roundtrip(Out::SubAck(ack, None));
        let Packet::SubAck(ack) = packet else {
            panic!("{packet:?}")
        };
        assert_eq!(
            ack.return_codes,
            [
                c::SubscribeReasonCode::Success(rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
                c::SubscribeReasonCode::Unspecified,
                c::SubscribeReasonCode::TopicFilterInvalid,
            ]
        );
        let ack = UnsubAck {
            pkid: 8,
            reasons: vec![
                UnsubAckReason::Success,
                UnsubAckReason::NoSubscriptionExisted,
            ],
        };
        let (packet, _) = roundtrip(Out::UnsubAck(ack, None));
        let Packet::UnsubAck(ack) = packet else {
            panic!("{packet:?}")
        };
        assert_eq!(
            ack.reasons,
            [
                c::UnsubAckReason::Success,
                c::UnsubAckReason::NoSubscriptionExisted
            ]
        );
    }

    /// A 5.0 goodbye with no reason (`E0 00`, what most clients send) is a DISCONNECT, and
    /// `E0 01 04` asks for the will; a 3.1.1 CONNECT with level 3 is an unsupported version.
    #[test]
    fn short_v5_disconnects_and_unknown_levels() {
        let mut wire = wire();
        wire.speak(Version::V5);
        wire.connected();
        wire.rbuf.extend_from_slice(&[0xE0, 0x00, 0xE0, 0x01, 0x04]);
        assert!(matches!(
            wire.next_packet(),
            Ok(Some(ClientPacket::Disconnect {
                with_will: false,
                ..
            }))
        ));
        assert!(matches!(
            wire.next_packet(),
            Ok(Some(ClientPacket::Disconnect {
                with_will: true,
                ..
            }))
        ));
        let mut old = super::tests::wire();
        // MQTT 3.1: "MQIsdp", level 3.
        old.rbuf.extend_from_slice(&[
            0x10, 0x0C, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C,
            0x00, 0x00,
        ]);
        assert_eq!(
            old.next_packet().unwrap_err(),
            DecodeError::UnsupportedProtocol(3)
        );
    }
}
