//! CONNECT: read within a deadline, checked, answered, in MQTT 3.1.1 or 5.0, whichever the
//! client's CONNECT names. In order, each refusal a CONNACK the client can read (never a
//! silently dropped socket), with the 3.1.1 return code or the 5.0 reason code:
//!
//! 1. protocol: MQTT 3.1.1 or 5.0, else 1 "unacceptable protocol version" (in 3.1.1 form);
//! 2. client id: at most [`MAX_CLIENT_ID`] bytes, else 2 / 0x85 "identifier rejected". An
//!    empty one gets an id of its own; at 3.1.1 only with a clean session (else 2), at 5.0
//!    always, named in the CONNACK (Assigned Client Identifier);
//! 3. 5.0 enhanced authentication is not offered: 0x8C "bad authentication method";
//! 4. credentials: `password` is a live access token of the user named by `username`, else
//!    5 / 0x87 "not authorized"; a will may only be a command for the user's own outbox,
//!    likewise;
//! 5. limits: the user's connections 3 / 0x97 "quota exceeded", the server's 3 / 0x89
//!    "server busy"; the store failing 3 / 0x88 "server unavailable" (other users unaffected);
//!
//! then the client id is claimed (an open connection with it is asked to leave first), the
//! connection's link to the router is opened, and CONNACK 0 goes out.
//!
//! Sessions: a 3.1.1 `clean_session = false` session is kept `mqtt.session_expiry_secs` after
//! the device goes; a 5.0 session is kept for its Session Expiry Interval, at most that long
//! (a longer one is cut, and the CONNACK says so), and resumed unless Clean Start is set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttd::protocol::{ConnAck, ConnAckProperties, ConnectReturnCode, Packet as Out};
use tokio::io::{AsyncRead, AsyncWrite};

use super::admission::Refusal as Full;
use super::codec::{ClientPacket, Connect, DecodeError, Version};
use super::link::RouterLink;
use super::presence::Deliveries;
use super::session::{End, Session};
use super::wire::{Wire, MAX_PACKET};
use super::{acl, kept, packets, Shared};
use crate::auth::{AuthError, Claims};
use crate::domain::UserId;

/// The longest client id, in bytes (contract v1.1).
pub const MAX_CLIENT_ID: usize = 128;

/// Reads and checks CONNECT; on success the CONNACK is sent and the session is joined to the
/// router. `None`: refused (and answered) or gone.
pub(super) async fn accept<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    wire: &mut Wire<R, W>,
    shared: &Arc<Shared>,
    peer: SocketAddr,
) -> Option<Session> {
    let connect = match tokio::time::timeout(shared.bounds.connect, wire.read_packet()).await {
        Ok(Ok(Some(ClientPacket::Connect(connect)))) => connect,
        Ok(Err(DecodeError::UnsupportedProtocol(level))) => {
            tracing::debug!(%peer, level, "MQTT CONNECT with an unsupported protocol level");
            refuse(wire, Refused::Protocol).await;
            return None;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "MQTT CONNECT unreadable or over 8 KiB");
            return None;
        }
        // Gone, too slow (`mqtt.connect_timeout_secs`), or not a CONNECT.
        _ => return None,
    };
    wire.speak(connect.version);
    let client_id = match check(&connect) {
        Ok(client_id) => client_id,
        Err(refused) => {
            tracing::info!(%peer, ?refused, "MQTT CONNECT refused");
            refuse(wire, refused).await;
            return None;
        }
    };
    let claims = match authenticate(shared, connect.login.as_ref()) {
        Ok(claims) => claims,
        Err(refused) => {
            tracing::info!(%peer, "MQTT CONNECT refused: bad credentials");
            refuse(wire, refused).await;
            return None;
        }
    };
    let user = claims.user_id;
    let lifetime = SessionLifetime::of(&connect, shared.kept.longest());
    let will = match connect.will {
        Some((topic, _)) if !acl::may_publish(&user, &topic) => {
            tracing::info!(%peer, %user, "MQTT CONNECT refused: forbidden will topic");
            refuse(wire, Refused::NotAuthorized).await;
            return None;
        }
        Some((_, message)) => Some(message),
        None => None,
    };
    let router_id = match &client_id {
        ClientId::Given(id) | ClientId::Assigned(id) => acl::router_client_id(&user, id),
        ClientId::Anonymous => acl::anonymous_router_id(&user),
    };

    let takeover = shared.takeovers.is_held(&router_id);
    let ticket = match shared.admission.admit(user, takeover) {
        Ok(ticket) => ticket,
        Err(full) => {
            let refused = match full {
                Full::ServerFull => {
                    tracing::warn!(%peer, %user, "MQTT CONNECT refused: mqtt.max_connections reached");
                    Refused::ServerFull
                }
                Full::UserFull => {
                    tracing::info!(%peer, %user, "MQTT CONNECT refused: mqtt.max_connections_per_user reached");
                    Refused::UserFull
                }
            };
            refuse(wire, refused).await;
            return None;
        }
    };
    let claim = shared.takeovers.claim(&router_id).await;
    shared.kept.resumed(&user, &router_id);
    let link = match lifetime.open(shared, &router_id).await {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "the broker refused a link");
            refuse(wire, Refused::Unavailable).await;
            return None;
        }
    };
    let ack = ConnAck {
        session_present: link.session_present,
        code: ConnectReturnCode::Success,
    };
    let properties = (connect.version == Version::V5).then(|| ConnAckProperties {
        session_expiry_interval: lifetime.cut,
        assigned_client_identifier: match client_id {
            ClientId::Assigned(id) => Some(id),
            _ => None,
        },
        max_packet_size: Some(MAX_PACKET as u32),
        shared_subscription_available: Some(0),
        subscription_identifiers_available: Some(0),
        ..ConnAckProperties::default()
    });
    wire.queue(Out::ConnAck(ack, properties));
    wire.connected();
    let session = Session {
        claims,
        keep_alive: (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500)),
        will,
        link_clean: lifetime.link_clean,
        keep_for: lifetime.keep_for,
        link: RouterLink::new(link),
        claim,
        ticket,
        subscribed: None,
        deliveries: Deliveries::default(),
        in_relay: None,
        subscriptions: packets::subscriptions(),
        reads: packets::reads(),
    };
    if !wire.flush().await {
        session.finish(End::ClientGone, shared).await;
        return None;
    }
    Some(session)
}

/// Why a CONNECT is refused; its CONNACK code depends on the client's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Protocol,
    ClientId,
    AuthMethod,
    NotAuthorized,
    UserFull,
    ServerFull,
    Unavailable,
}

impl Refused {
    fn code(self, version: Version) -> ConnectReturnCode {
        use ConnectReturnCode as C;
        match (self, version) {
            (Refused::Protocol, _) => C::RefusedProtocolVersion,
            (Refused::ClientId, _) => C::ClientIdentifierNotValid,
            (Refused::NotAuthorized, _) | (Refused::AuthMethod, Version::V4) => C::NotAuthorized,
            (Refused::AuthMethod, Version::V5) => C::BadAuthenticationMethod,
            (Refused::UserFull | Refused::ServerFull | Refused::Unavailable, Version::V4) => {
                C::ServiceUnavailable
            }
            (Refused::UserFull, Version::V5) => C::QuotaExceeded,
            (Refused::ServerFull, Version::V5) => C::ServerBusy,
            (Refused::Unavailable, Version::V5) => C::ServerUnavailable,
        }
    }
}

/// The client id a connection goes by.
enum ClientId {
    Given(String),
    /// A 5.0 client sent none: this one is made up, and named in the CONNACK.
    Assigned(String),
    /// A 3.1.1 client with a clean session sent none.
    Anonymous,
}

/// How long the router keeps a connection's session after it goes, and whether it starts
/// afresh.
struct SessionLifetime {
    /// Resume the session the router kept for this client id, if any.
    resume: bool,
    /// How long to keep it once the client is gone; `None`: not kept.
    keep_for: Option<Duration>,
    /// What the router is told: a clean link is neither resumed nor kept by it.
    link_clean: bool,
    /// A 5.0 Session Expiry Interval that was cut to `mqtt.session_expiry_secs`: the CONNACK
    /// says so.
    cut: Option<u32>,
}

impl SessionLifetime {
    fn of(connect: &Connect, longest: Duration) -> Self {
        let (keep_for, cut) = match connect.version {
            Version::V4 => ((!connect.clean_start).then_some(longest), None),
            Version::V5 => {
                let asked = Duration::from_secs(u64::from(connect.session_expiry));
                let cut =
                    (asked > longest).then(|| u32::try_from(longest.as_secs()).unwrap_or(u32::MAX));
                ((!asked.is_zero()).then_some(asked.min(longest)), cut)
            }
        };
        let resume = !connect.clean_start;
        Self {
            resume,
            keep_for,
            link_clean: !resume && keep_for.is_none(),
            cut,
        }
    }

    /// Opens the router link. A fresh session that is to be kept (5.0 Clean Start with an
    /// expiry) first has the router drop what it kept, then opens a link the router keeps.
    async fn open(
        &self,
        shared: &Shared,
        router_id: &str,
    ) -> Result<crate::broker::Link, crate::broker::LinkRefused> {
        if !self.resume && !self.link_clean {
            kept::drop_session(shared, router_id.to_owned()).await?;
        }
        shared
            .broker
            .connect(router_id.to_owned(), self.link_clean)
            .await
    }
}

/// The checks that need no lookup: the client id, and no enhanced authentication.
fn check(connect: &Connect) -> Result<ClientId, Refused> {
    if connect.auth_method {
        return Err(Refused::AuthMethod);
    }
    let id = &connect.client_id;
    if id.len() > MAX_CLIENT_ID {
        return Err(Refused::ClientId);
    }
    if !id.is_empty() {
        return Ok(ClientId::Given(id.clone()));
    }
    match connect.version {
        Version::V4 if connect.clean_start => Ok(ClientId::Anonymous),
        Version::V4 => Err(Refused::ClientId),
        Version::V5 => Ok(ClientId::Assigned(format!(
            "auto-{}",
            crate::domain::MessageId::random()
        ))),
    }
}

/// The claims of the CONNECT's token, if its username is their user; else the CONNACK code.
fn authenticate(shared: &Shared, login: Option<&(String, String)>) -> Result<Claims, Refused> {
    let (username, password) = login.ok_or(Refused::NotAuthorized)?;
    let user = UserId::parse(username).map_err(|_| Refused::NotAuthorized)?;
    let claims = shared.auth.authenticate(password).map_err(|e| match e {
        AuthError::Store(_) => Refused::Unavailable,
        _ => Refused::NotAuthorized,
    })?;
    if claims.user_id != user {
        return Err(Refused::NotAuthorized);
    }
    Ok(claims)
}

/// Answers CONNECT with a refusal, and lets the client read it before the socket closes.
async fn refuse<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    wire: &mut Wire<R, W>,
    refused: Refused,
) {
    let ack = ConnAck {
        session_present: false,
        code: refused.code(wire.version()),
    };
    wire.queue(Out::ConnAck(ack, None));
    wire.flush().await;
}
