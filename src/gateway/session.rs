//! One client connection, from CONNECT to close: the handshake, then a loop that hands client
//! packets to [`packets`](super::packets) and the router's notifications to the client, until
//! a client DISCONNECT, a network error, a keep-alive timeout, a forbidden publish, token expiry,
//! logout, a takeover by the same client id, or server shutdown. Then the connection leaves the
//! router, its session is kept if it asked for that, and its will goes out if it did not say
//! goodbye. A 5.0 client closed by the server is told why first (DISCONNECT with a reason
//! code, [`End::reason`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttd::protocol::DisconnectReasonCode;
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::admission::Ticket;
use super::codec::DecodeError;
use super::link::RouterLink;
use super::presence::{Deliveries, Subscribed};
use super::takeover::Claim;
use super::wire::Wire;
use super::{handshake, kept, packets, Shared};
use crate::auth::Claims;
use crate::domain::{SessionId, UserId};
use crate::limits::Bucket;
use crate::relay::Submission;
use crate::shutdown::Shutdown;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    ClientDisconnect,
    /// A 5.0 DISCONNECT with reason 0x04: a goodbye that asks for the will all the same.
    ClientDisconnectWithWill,
    ClientGone,
    KeepAliveTimeout,
    /// Half a packet, and the rest did not come within `mqtt.packet_timeout_secs`.
    Stalled,
    /// A packet that does not decode.
    Malformed,
    /// A packet over `MAX_PACKET`.
    TooLarge,
    /// A packet the client may not send now (a second CONNECT, a server's packet, AUTH).
    ProtocolViolation,
    /// A 5.0 topic alias: none is offered.
    TopicAlias,
    /// SUBSCRIBE and UNSUBSCRIBE past their rate.
    TooFast,
    /// A publish to a topic other than the user's outbox.
    Forbidden,
    Expired,
    LoggedOut,
    Shutdown,
    /// A newer connection with the same client id took over.
    TakenOver,
    /// The router dropped the link.
    Replaced,
}

impl End {
    /// MQTT publishes the will when the client did not say goodbye.
    fn fires_will(self) -> bool {
        matches!(
            self,
            End::ClientDisconnectWithWill
                | End::ClientGone
                | End::KeepAliveTimeout
                | End::Stalled
                | End::Malformed
                | End::TooLarge
                | End::ProtocolViolation
                | End::TopicAlias
                | End::TooFast
                | End::Forbidden
        )
    }

    /// The 5.0 reason a server-side close gives the client; `None` when the client ended it.
    pub(super) fn reason(self) -> Option<DisconnectReasonCode> {
        use DisconnectReasonCode as R;
        Some(match self {
            End::ClientDisconnect | End::ClientDisconnectWithWill | End::ClientGone => return None,
            End::KeepAliveTimeout | End::Stalled => R::KeepAliveTimeout,
            End::Malformed => R::MalformedPacket,
            End::TooLarge => R::PacketTooLarge,
            End::ProtocolViolation => R::ProtocolError,
            End::TopicAlias => R::TopicAliasInvalid,
            End::TooFast => R::MessageRateTooHigh,
            End::Forbidden | End::LoggedOut => R::NotAuthorized,
            // The access token's time is up: refresh it and connect again.
            End::Expired => R::MaximumConnectTime,
            End::Shutdown => R::ServerShuttingDown,
            End::TakenOver => R::SessionTakenOver,
            End::Replaced => R::UnspecifiedError,
        })
    }
}

/// An authenticated connection joined to the router.
pub(super) struct Session {
    pub(super) claims: Claims,
    /// 1.5 × the client's keep-alive: silent for longer, it is gone.
    pub(super) keep_alive: Option<Duration>,
    /// The will's payload: an outbox command, sent for the user if the connection drops.
    pub(super) will: Option<Bytes>,
    /// The router was told to neither resume nor keep this session.
    pub(super) link_clean: bool,
    /// How long the session is kept once the connection ends; `None`: not kept.
    pub(super) keep_for: Option<Duration>,
    pub(super) link: RouterLink,
    /// The router client id is ours while this lives; dropped after leaving the router.
    pub(super) claim: Claim,
    /// Our slot under the connection caps.
    pub(super) ticket: Ticket,
    /// Held while subscribed to the user's inbox.
    pub(super) subscribed: Option<Subscribed>,
    pub(super) deliveries: Deliveries,
    /// This connection's places in the relay (`packets::IN_RELAY`), made at its first publish.
    pub(super) in_relay: Option<Arc<Semaphore>>,
    /// SUBSCRIBE and UNSUBSCRIBE packets it may still send (`packets::SUBSCRIPTIONS_BURST`).
    pub(super) subscriptions: Bucket,
    /// `read` commands it may still send (`packets::READS_BURST`).
    pub(super) reads: Bucket,
}

/// Serves one client over any byte stream (TCP, or WebSocket frames bridged to bytes).
pub(super) async fn serve<R, W>(
    reader: R,
    writer: W,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    pending: OwnedSemaphorePermit,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let mut wire = Wire::new(reader, writer);
    // Boxed: the handshake's future is the largest part of a connection's and is needed once,
    // so it is not kept in the task for the connection's whole life.
    let accepted = Box::pin(handshake::accept(&mut wire, &shared, peer)).await;
    // Connected (and under the connection caps now), or gone.
    drop(pending);
    if let Some(session) = accepted {
        let user = session.user();
        tracing::debug!(%peer, %user, "MQTT connected");
        let end = session.run(&mut wire, &shared, shutdown).await;
        tracing::debug!(%peer, %user, ?end, "MQTT connection closed");
        if let Some(reason) = end.reason() {
            wire.goodbye(reason).await;
        }
    }
    wire.close().await;
}

impl Session {
    pub(super) fn user(&self) -> UserId {
        self.claims.user_id
    }

    async fn run<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        mut self,
        wire: &mut Wire<R, W>,
        shared: &Arc<Shared>,
        mut shutdown: Shutdown,
    ) -> End {
        let mut revocations = shared.auth.revocations();
        let expiry =
            tokio::time::sleep_until(crate::clock::instant_of_unix(self.claims.expires_at));
        tokio::pin!(expiry);
        let far = Duration::from_secs(86_400 * 365);
        let keep_alive = tokio::time::sleep(self.keep_alive.unwrap_or(far));
        tokio::pin!(keep_alive);
        // Armed while a packet is half read: the rest must come by then.
        let rest_due = tokio::time::sleep(far);
        tokio::pin!(rest_due);
        let mut partial = false;
        let mut decoded = 0;

        let end = loop {
            tokio::select! {
                _ = shutdown.recv() => break End::Shutdown,
                _ = &mut expiry => break End::Expired,
                _ = self.claim.kick.notified() => break End::TakenOver,
                _ = &mut keep_alive => break End::KeepAliveTimeout,
                _ = &mut rest_due, if partial => break End::Stalled,
                revoked = revocations.recv() => {
                    if let Some(end) = self.revoked(revoked, shared) {
                        break end;
                    }
                }
                alive = wire.fill() => {
                    if !alive {
                        break End::ClientGone;
                    }
                    if let Some(period) = self.keep_alive {
                        keep_alive.as_mut().reset(Instant::now() + period);
                    }
                    if let Err(end) = self.handle_input(wire, shared).await {
                        break end;
                    }
                    // A new packet started (none was half read, or some were completed since).
                    let started = !partial || wire.decoded() != decoded;
                    partial = wire.has_partial_packet();
                    decoded = wire.decoded();
                    if partial && started {
                        rest_due.as_mut().reset(Instant::now() + shared.bounds.packet);
                    }
                }
                note = self.link.next() => {
                    if let Err(end) = self.handle_notifications(wire, note).await {
                        break end;
                    }
                }
            }
        };
        self.finish(end, shared).await;
        end
    }

    /// Handles every whole packet read, then hands the relay and the router their shares and
    /// writes the answers (PUBACKs only once their commands are in the relay). Both get their
    /// share even when a packet ends the connection: a send read before a DISCONNECT is still
    /// sent, and a PUBACK read just before it must still free its event, or a kept session
    /// gets it again.
    async fn handle_input<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<R, W>,
        shared: &Shared,
    ) -> Result<(), End> {
        let mut to_router = Vec::new();
        let mut to_relay = Vec::new();
        let handled = self
            .handle_packets(wire, shared, &mut to_router, &mut to_relay)
            .await;
        // The router first: its share (PUBACKs of events) never waits for room in the relay.
        let routed = self.link.send(&mut to_router);
        let submitted = packets::submit(shared, &mut to_relay).await;
        routed.map_err(|_| End::Replaced)?;
        handled?;
        submitted?;
        wire.release_read_buffer();
        if !wire.flush().await {
            return Err(End::ClientGone);
        }
        Ok(())
    }

    async fn handle_packets<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<R, W>,
        shared: &Shared,
        to_router: &mut Vec<rumqttd::protocol::Packet>,
        to_relay: &mut Vec<Submission>,
    ) -> Result<(), End> {
        loop {
            let packet = match wire.next_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::debug!(user = %self.user(), error = %e, "malformed MQTT packet");
                    return Err(match e {
                        DecodeError::TooLarge(_) => End::TooLarge,
                        _ => End::Malformed,
                    });
                }
            };
            packets::handle(self, shared, wire, packet, to_router, to_relay).await?;
        }
    }

    /// Writes what the router has for the client, and wakes the router if it paused the link.
    async fn handle_notifications<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        wire: &mut Wire<R, W>,
        first: Result<Option<Notification>, super::link::Gone>,
    ) -> Result<(), End> {
        let user = self.user();
        let wake = self
            .link
            .drain(first, wire, &user, &mut self.deliveries)
            .map_err(|_| End::Replaced)?;
        if !wire.flush().await {
            return Err(End::ClientGone);
        }
        if wake {
            self.link.wake().await.map_err(|_| End::Replaced)?;
        }
        Ok(())
    }

    /// `Some` when a logout ended this connection's session.
    fn revoked(&self, revoked: Result<SessionId, RecvError>, shared: &Shared) -> Option<End> {
        match revoked {
            Ok(sid) if sid == self.claims.sid => Some(End::LoggedOut),
            Ok(_) => None,
            // Missed some: ask the store whether ours is among them.
            Err(RecvError::Lagged(_)) => shared
                .auth
                .authenticate_session(&self.claims)
                .is_err()
                .then_some(End::LoggedOut),
            Err(RecvError::Closed) => Some(End::Shutdown),
        }
    }

    /// Leaves the router, keeps the session if the client asked for that, sends the will if
    /// it did not say goodbye; the claim on the client id and the connection's slot go last.
    pub(super) async fn finish(mut self, end: End, shared: &Arc<Shared>) {
        if end != End::Replaced {
            self.link.leave();
        }
        self.subscribed = None;
        let kept_by_router =
            !self.link_clean && !matches!(end, End::TakenOver | End::Replaced | End::Shutdown);
        // Resumed, but not to be kept: the router drops it once the claim on the id is gone.
        let mut forget = None;
        if kept_by_router {
            match self.keep_for {
                Some(keep_for) => kept::keep(shared, self.user(), self.claim.router_id(), keep_for),
                None => forget = Some(self.claim.router_id().to_owned()),
            }
        }
        if end.fires_will() {
            if let Some(will) = self.will.take() {
                if let Some(will) = packets::will(shared, self.user(), &will) {
                    let _ = packets::submit(shared, &mut vec![will]).await;
                }
            }
        }
        drop(self.claim);
        drop(self.ticket);
        if let Some(router_id) = forget {
            kept::forget(shared, router_id);
        }
    }
}
