//! CONNECT: read within a deadline, checked, answered. In order, each refusal a CONNACK the
//! client can read (never a silently dropped socket):
//!
//! 1. protocol: MQTT 3.1.1 only, else 1 "unacceptable protocol version";
//! 2. client id: at most [`MAX_CLIENT_ID`] bytes, and not empty with `clean_session = false`,
//!    else 2 "identifier rejected" (an empty one with a clean session gets an id of its own);
//! 3. credentials: `password` is a live access token of the user named by `username`, else
//!    5 "not authorized"; a will may only be a command for the user's own outbox, likewise;
//! 4. limits: the connection caps, else 3 "server unavailable" (other users unaffected);
//!
//! then the client id is claimed (an open connection with it is asked to leave first), the
//! connection's link to the router is opened, and CONNACK 0 goes out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::mqttbytes::v4::{Connect, Login, Packet as In};
use rumqttc::mqttbytes::{self, Protocol};
use rumqttd::protocol::{ConnAck, ConnectReturnCode, Packet as Out};
use tokio::io::{AsyncRead, AsyncWrite};

use super::admission::Refusal;
use super::link::RouterLink;
use super::presence::Deliveries;
use super::session::{End, Session};
use super::wire::Wire;
use super::{acl, packets, Shared};
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
        Ok(Ok(Some(In::Connect(connect)))) => connect,
        Ok(Err(mqttbytes::Error::InvalidProtocolLevel(_) | mqttbytes::Error::InvalidProtocol)) => {
            refuse(wire, ConnectReturnCode::RefusedProtocolVersion).await;
            return None;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "MQTT CONNECT unreadable or over 8 KiB");
            return None;
        }
        // Gone, or too slow (`mqtt.connect_timeout_secs`).
        _ => return None,
    };
    if let Err(code) = check(&connect) {
        tracing::info!(%peer, ?code, "MQTT CONNECT refused");
        refuse(wire, code).await;
        return None;
    }
    let claims = match authenticate(shared, connect.login.as_ref()) {
        Ok(claims) => claims,
        Err(code) => {
            tracing::info!(%peer, "MQTT CONNECT refused: bad credentials");
            refuse(wire, code).await;
            return None;
        }
    };
    let user = claims.user_id;
    let will = match connect.last_will {
        Some(will) if !acl::may_publish(&user, &will.topic) => {
            tracing::info!(%peer, %user, "MQTT CONNECT refused: forbidden will topic");
            refuse(wire, ConnectReturnCode::NotAuthorized).await;
            return None;
        }
        Some(will) => Some(will.message),
        None => None,
    };
    let router_id = if connect.client_id.is_empty() {
        acl::anonymous_router_id(&user)
    } else {
        acl::router_client_id(&user, &connect.client_id)
    };

    let takeover = shared.takeovers.is_held(&router_id);
    let ticket = match shared.admission.admit(user, takeover) {
        Ok(ticket) => ticket,
        Err(refusal) => {
            match refusal {
                Refusal::ServerFull => {
                    tracing::warn!(%peer, %user, "MQTT CONNECT refused: mqtt.max_connections reached")
                }
                Refusal::UserFull => {
                    tracing::info!(%peer, %user, "MQTT CONNECT refused: mqtt.max_connections_per_user reached")
                }
            }
            refuse(wire, ConnectReturnCode::ServiceUnavailable).await;
            return None;
        }
    };
    let claim = shared.takeovers.claim(&router_id).await;
    shared.kept.resumed(&user, &router_id);
    let link = match shared
        .broker
        .connect(router_id, connect.clean_session)
        .await
    {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "the broker refused a link");
            refuse(wire, ConnectReturnCode::ServiceUnavailable).await;
            return None;
        }
    };
    let ack = ConnAck {
        session_present: link.session_present,
        code: ConnectReturnCode::Success,
    };
    wire.queue(Out::ConnAck(ack, None));
    wire.connected();
    let session = Session {
        claims,
        keep_alive: (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500)),
        will,
        clean_session: connect.clean_session,
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

/// The checks that need no lookup: protocol level and client id.
fn check(connect: &Connect) -> Result<(), ConnectReturnCode> {
    if connect.protocol != Protocol::V4 {
        return Err(ConnectReturnCode::RefusedProtocolVersion);
    }
    let id = &connect.client_id;
    if id.len() > MAX_CLIENT_ID || (id.is_empty() && !connect.clean_session) {
        return Err(ConnectReturnCode::ClientIdentifierNotValid);
    }
    Ok(())
}

/// The claims of the CONNECT's token, if its username is their user; else the CONNACK code.
fn authenticate(shared: &Shared, login: Option<&Login>) -> Result<Claims, ConnectReturnCode> {
    let login = login.ok_or(ConnectReturnCode::NotAuthorized)?;
    let user = UserId::parse(&login.username).map_err(|_| ConnectReturnCode::NotAuthorized)?;
    let claims = shared
        .auth
        .authenticate(&login.password)
        .map_err(|e| match e {
            AuthError::Store(_) => ConnectReturnCode::ServiceUnavailable,
            _ => ConnectReturnCode::NotAuthorized,
        })?;
    if claims.user_id != user {
        return Err(ConnectReturnCode::NotAuthorized);
    }
    Ok(claims)
}

/// Answers CONNECT with a refusal, and lets the client read it before the socket closes.
async fn refuse<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    wire: &mut Wire<R, W>,
    code: ConnectReturnCode,
) {
    let ack = ConnAck {
        session_present: false,
        code,
    };
    wire.queue(Out::ConnAck(ack, None));
    wire.flush().await;
}
