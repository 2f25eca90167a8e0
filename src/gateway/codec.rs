//! MQTT 3.1.1 and 5.0 on the same ports: which one a client speaks (the protocol level of its
//! CONNECT), its packets decoded into one [`ClientPacket`] whatever the version, and ours
//! encoded in its version.
//!
//! Decoding uses rumqttc's codecs (`mqttbytes` v4 and v5; all fields public). Encoding uses
//! rumqttd's, the ones its notifications are made for, with two exceptions at 5.0 where
//! rumqttd's is wrong for us:
//!
//! - DISCONNECT: rumqttd writes a reason as `E0 01 87 00` (a length of 1 followed by two
//!   bytes), which clients read as a malformed packet; it is written here;
//! - CONNACK: rumqttd panics on the 3.1.1-only return codes, so they are mapped to their 5.0
//!   reasons first.
//!
//! And two of rumqttc's v5 decoder: a DISCONNECT with no reason (`E0 00`, the usual goodbye)
//! is an error to it, and a packet whose inside is cut short reads as "more bytes needed",
//! which would leave a connection waiting for bytes that never come. Every packet is framed
//! here first, so a whole packet that does not decode is malformed, never incomplete.

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes::v4::Packet as V4In;
use rumqttc::mqttbytes::QoS as V4QoS;
use rumqttc::v5::mqttbytes::v5::Packet as V5In;
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::v5::V5;
use rumqttd::protocol::{ConnectReturnCode, DisconnectReasonCode, Packet as Out, Protocol as _};

/// The MQTT version a client speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

/// Quality of service of a client's publish or subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the names MQTT gives them
pub(super) enum QoS {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

/// A client's packet, whichever version it came in: what the gateway acts on.
#[derive(Debug)]
pub(super) enum ClientPacket {
    Connect(Box<Connect>),
    Publish(Publish),
    PubAck(u16),
    PubRec,
    PubRel(u16),
    PubComp,
    Subscribe {
        pkid: u16,
        filters: Vec<(String, QoS)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    /// A goodbye. `with_will`: 5.0 reason 0x04, the client asks for its will to go out anyway.
    /// `session_expiry`: a 5.0 client's new session expiry interval, in seconds.
    Disconnect {
        with_will: bool,
        session_expiry: Option<u32>,
    },
    /// A packet only a server sends, or AUTH (no enhanced authentication is offered).
    Unexpected,
}

#[derive(Debug)]
pub(super) struct Publish {
    pub(super) topic: String,
    pub(super) pkid: u16,
    pub(super) qos: QoS,
    pub(super) payload: Bytes,
    /// A 5.0 topic alias: we announce none, so a client must not use one.
    pub(super) topic_alias: bool,
}

#[derive(Debug)]
pub(super) struct Connect {
    pub(super) version: Version,
    pub(super) client_id: String,
    /// 3.1.1 clean session, 5.0 clean start.
    pub(super) clean_start: bool,
    pub(super) keep_alive: u16,
    pub(super) login: Option<(String, String)>,
    /// The will's topic and payload.
    pub(super) will: Option<(String, Bytes)>,
    /// 5.0: the session expiry interval asked for, in seconds (absent: 0).
    pub(super) session_expiry: u32,
    /// 5.0: the client asked for enhanced authentication.
    pub(super) auth_method: bool,
}

/// Why bytes from a client are not a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum DecodeError {
    #[error("packet over {0} bytes")]
    TooLarge(usize),
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocol(u8),
    #[error("malformed packet")]
    Malformed,
}

/// The next whole packet in `buf` (taken out of it), `Ok(None)` when more bytes are needed.
/// `version` is `None` until CONNECT: then the packet's own protocol level says which decoder.
pub(super) fn decode(
    buf: &mut BytesMut,
    version: Option<Version>,
    max: usize,
) -> Result<Option<ClientPacket>, DecodeError> {
    let Some(length) = frame_length(buf, max)? else {
        return Ok(None);
    };
    let version = match version {
        Some(version) => version,
        None => match connect_level(&buf[..length]) {
            Some(5) => Version::V5,
            Some(4) => Version::V4,
            Some(level) => return Err(DecodeError::UnsupportedProtocol(level)),
            None => Version::V4,
        },
    };
    let mut frame = buf.split_to(length);
    match version {
        Version::V4 => V4In::read(&mut frame, max)
            .map(from_v4)
            .map_err(|_| DecodeError::Malformed),
        Version::V5 => decode_v5(frame, max),
    }
    .map(Some)
}

/// The length of the whole packet at the start of `buf`, once it is all there.
fn frame_length(buf: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
    let mut remaining = 0usize;
    for (i, &byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 1 + (i + 1) + remaining;
            if total > max {
                return Err(DecodeError::TooLarge(max));
            }
            return Ok((buf.len() >= total).then_some(total));
        }
    }
    if buf.len() >= 5 {
        // A fifth length byte: no such packet.
        return Err(DecodeError::Malformed);
    }
    Ok(None)
}

/// The protocol level of a CONNECT from its first bytes; `None` if it is no CONNECT or they
/// say too little.
pub(super) fn connect_level(frame: &[u8]) -> Option<u8> {
    if frame.first()? >> 4 != 1 {
        return None;
    }
    let header = 1 + frame[1..].iter().position(|b| b & 0x80 == 0)? + 1;
    let rest = frame.get(header..)?;
    let name = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    rest.get(2 + name).copied()
}

fn from_v4(packet: V4In) -> ClientPacket {
    let qos = |qos: V4QoS| match qos {
        V4QoS::AtMostOnce => QoS::AtMostOnce,
        V4QoS::AtLeastOnce => QoS::AtLeastOnce,
        V4QoS::ExactlyOnce => QoS::ExactlyOnce,
    };
    match packet {
        V4In::Connect(c) => ClientPacket::Connect(Box::new(Connect {
            version: Version::V4,
            client_id: c.client_id,
            clean_start: c.clean_session,
            keep_alive: c.keep_alive,
            login: c.login.map(|l| (l.username, l.password)),
            will: c.last_will.map(|w| (w.topic, w.message)),
            session_expiry: 0,
            auth_method: false,
        })),
        V4In::Publish(p) => ClientPacket::Publish(Publish {
            topic: p.topic,
            pkid: p.pkid,
            qos: qos(p.qos),
            payload: p.payload,
            topic_alias: false,
        }),
        V4In::PubAck(ack) => ClientPacket::PubAck(ack.pkid),
        V4In::PubRec(_) => ClientPacket::PubRec,
        V4In::PubRel(rel) => ClientPacket::PubRel(rel.pkid),
        V4In::PubComp(_) => ClientPacket::PubComp,
        V4In::Subscribe(s) => ClientPacket::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, qos(f.qos)))
                .collect(),
        },
        V4In::Unsubscribe(u) => ClientPacket::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        V4In::PingReq => ClientPacket::PingReq,
        V4In::Disconnect => ClientPacket::Disconnect {
            with_will: false,
            session_expiry: None,
        },
        V4In::ConnAck(_) | V4In::SubAck(_) | V4In::UnsubAck(_) | V4In::PingResp => {
            ClientPacket::Unexpected
        }
    }
}

/// One whole 5.0 packet.
fn decode_v5(mut frame: BytesMut, max: usize) -> Result<ClientPacket, DecodeError> {
    // DISCONNECT with no reason (normal) or a reason only: rumqttc wants more.
    if frame[0] == 0xE0 && frame.len() <= 3 {
        return Ok(ClientPacket::Disconnect {
            with_will: frame.get(2) == Some(&0x04),
            session_expiry: None,
        });
    }
    let max = u32::try_from(max).unwrap_or(u32::MAX);
    let packet = V5In::read(&mut frame, Some(max)).map_err(|_| DecodeError::Malformed)?;
    Ok(from_v5(packet))
}

fn from_v5(packet: V5In) -> ClientPacket {
    let qos = |qos: V5QoS| match qos {
        V5QoS::AtMostOnce => QoS::AtMostOnce,
        V5QoS::AtLeastOnce => QoS::AtLeastOnce,
        V5QoS::ExactlyOnce => QoS::ExactlyOnce,
    };
    match packet {
        V5In::Connect(c, will, login) => {
            let properties = c.properties.unwrap_or_default();
            let will = match will {
                Some(w) => match String::from_utf8(w.topic.to_vec()) {
                    Ok(topic) => Some((topic, w.message)),
                    Err(_) => return ClientPacket::Unexpected,
                },
                None => None,
            };
            ClientPacket::Connect(Box::new(Connect {
                version: Version::V5,
                client_id: c.client_id,
                clean_start: c.clean_start,
                keep_alive: c.keep_alive,
                login: login.map(|l| (l.username, l.password)),
                will,
                session_expiry: properties.session_expiry_interval.unwrap_or(0),
                auth_method: properties.authentication_method.is_some(),
            }))
        }
        V5In::Publish(p) => match String::from_utf8(p.topic.to_vec()) {
            Ok(topic) => ClientPacket::Publish(Publish {
                topic,
                pkid: p.pkid,
                qos: qos(p.qos),
                payload: p.payload,
                topic_alias: p.properties.is_some_and(|p| p.topic_alias.is_some()),
            }),
            Err(_) => ClientPacket::Unexpected,
        },
        V5In::PubAck(ack) => ClientPacket::PubAck(ack.pkid),
        V5In::PubRec(_) => ClientPacket::PubRec,
        V5In::PubRel(rel) => ClientPacket::PubRel(rel.pkid),
        V5In::PubComp(_) => ClientPacket::PubComp,
        V5In::Subscribe(s) => ClientPacket::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| (f.path, qos(f.qos)))
                .collect(),
        },
        V5In::Unsubscribe(u) => ClientPacket::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        V5In::PingReq(_) => ClientPacket::PingReq,
        V5In::Disconnect(d) => ClientPacket::Disconnect {
            with_will: d.reason_code
                == rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::DisconnectWithWillMessage,
            session_expiry: d.properties.and_then(|p| p.session_expiry_interval),
        },
        V5In::Auth(_)
        | V5In::ConnAck(_)
        | V5In::SubAck(_)
        | V5In::UnsubAck(_)
        | V5In::PingResp(_) => ClientPacket::Unexpected,
    }
}

/// Encodes `packet` for a client speaking `version`; `false` if it cannot be.
pub(super) fn encode(version: Version, packet: Out, out: &mut BytesMut) -> bool {
    match version {
        Version::V4 => V4.write(packet, out).is_ok(),
        Version::V5 => match packet {
            Out::Disconnect(disconnect, _) => {
                out.put_slice(&[0xE0, 0x02, disconnect_reason(disconnect.reason_code), 0x00]);
                true
            }
            Out::ConnAck(mut ack, properties) => {
                ack.code = match ack.code {
                    ConnectReturnCode::RefusedProtocolVersion => {
                        ConnectReturnCode::UnsupportedProtocolVersion
                    }
                    ConnectReturnCode::ServiceUnavailable => ConnectReturnCode::ServerUnavailable,
                    code => code,
                };
                V5.write(Out::ConnAck(ack, properties), out).is_ok()
            }
            packet @ (Out::Publish(..)
            | Out::PubAck(..)
            | Out::PubRec(..)
            | Out::PubComp(..)
            | Out::SubAck(..)
            | Out::UnsubAck(..)
            | Out::PingResp(..)) => V5.write(packet, out).is_ok(),
            // Nothing else is ever sent to a client; rumqttd's encoder panics on some.
            _ => false,
        },
    }
}

/// The 5.0 reason code of a DISCONNECT.
fn disconnect_reason(code: DisconnectReasonCode) -> u8 {
    use DisconnectReasonCode as R;
    match code {
        R::NormalDisconnection => 0x00,
        R::DisconnectWithWillMessage => 0x04,
        R::UnspecifiedError => 0x80,
        R::MalformedPacket => 0x81,
        R::ProtocolError => 0x82,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::ServerBusy => 0x89,
        R::ServerShuttingDown => 0x8B,
        R::KeepAliveTimeout => 0x8D,
        R::SessionTakenOver => 0x8E,
        R::TopicFilterInvalid => 0x8F,
        R::TopicNameInvalid => 0x90,
        R::ReceiveMaximumExceeded => 0x93,
        R::TopicAliasInvalid => 0x94,
        R::PacketTooLarge => 0x95,
        R::MessageRateTooHigh => 0x96,
        R::QuotaExceeded => 0x97,
        R::AdministrativeAction => 0x98,
        R::PayloadFormatInvalid => 0x99,
        R::RetainNotSupported => 0x9A,
        R::QoSNotSupported => 0x9B,
        R::UseAnotherServer => 0x9C,
        R::ServerMoved => 0x9D,
        R::SharedSubscriptionNotSupported => 0x9E,
        R::ConnectionRateExceeded => 0x9F,
        R::MaximumConnectTime => 0xA0,
        R::SubscriptionIdentifiersNotSupported => 0xA1,
        R::WildcardSubscriptionsNotSupported => 0xA2,
    }
}
