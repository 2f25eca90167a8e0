//! One client connection: CONNECT and its authentication, then a loop that checks and passes
//! client packets to the router (or the relay), writes the router's notifications to the
//! client, and ends on a client DISCONNECT, a network error, a keep-alive timeout, a forbidden
//! publish, token expiry, logout or server shutdown.
//!
//! Client packets are decoded with rumqttc's `mqttbytes` (all fields public); everything sent
//! to the client is encoded with rumqttd's `V4`, the codec its notifications are made for.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet as In;
use rumqttc::mqttbytes::{self, Protocol as InProtocol, QoS as InQoS};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter, Packet as Out, PingResp,
    Protocol as _, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, QoS,
    RetainForwardRule, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::acl::{router_client_id, Topics};
use super::takeover::Claim;
use super::Shared;
use crate::auth::{AuthError, Claims};
use crate::domain::UserId;
use crate::relay::Submission;

/// A client that has not sent CONNECT by then is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest packet a client may send; a larger one closes the connection. Big enough for
/// any valid command, so an over-long body gets its `body_too_large` error event.
const MAX_PACKET: usize = 256 * 1024;
/// A client that does not read its events for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Notifications handled before the socket is written, for fairness.
const NOTIFICATION_BATCH: usize = 256;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    ClientDisconnect,
    ClientGone,
    KeepAliveTimeout,
    ProtocolViolation,
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
            End::ClientGone | End::KeepAliveTimeout | End::ProtocolViolation | End::Forbidden
        )
    }
}

/// Serves one client over any byte stream (TCP, or WebSocket frames bridged to bytes).
pub(super) async fn serve<R, W>(
    reader: R,
    writer: W,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    let mut client = Client {
        reader,
        writer,
        rbuf: BytesMut::with_capacity(4096),
        out: BytesMut::with_capacity(4096),
    };
    let Some(session) = accept(&mut client, &shared, peer).await else {
        return;
    };
    let user = session.claims.user_id;
    tracing::debug!(%peer, %user, "MQTT connected");
    let end = session.run(&mut client, &shared, shutdown).await;
    tracing::debug!(%peer, %user, ?end, "MQTT connection closed");
    let _ = client.writer.shutdown().await;
}

struct Client<R, W> {
    reader: R,
    writer: W,
    rbuf: BytesMut,
    out: BytesMut,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Client<R, W> {
    /// Reads until one whole packet is buffered; `Ok(None)` at end of stream.
    async fn read_packet(&mut self) -> Result<Option<In>, mqttbytes::Error> {
        loop {
            match In::read(&mut self.rbuf, MAX_PACKET) {
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                other => return other.map(Some),
            }
            match self.reader.read_buf(&mut self.rbuf).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    fn queue(&mut self, packet: Out) -> bool {
        V4.write(packet, &mut self.out).is_ok()
    }

    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, self.writer.write_all(&self.out)).await;
        self.out.clear();
        matches!(written, Ok(Ok(())))
    }

    /// Answers CONNECT with a refusal, and lets the client read it before the socket closes.
    async fn refuse(&mut self, code: ConnectReturnCode) {
        self.queue(Out::ConnAck(
            ConnAck {
                session_present: false,
                code,
            },
            None,
        ));
        self.flush().await;
    }
}

/// An authenticated connection joined to the router.
struct Session {
    claims: Claims,
    topics: Topics,
    keep_alive: Option<Duration>,
    will: Option<bytes::Bytes>,
    tx: LinkTx,
    rx: LinkRx,
    /// The router client id is ours while this lives; dropped after leaving the router.
    claim: Claim,
}

/// Reads and checks CONNECT; on success the CONNACK is sent and the link is open.
async fn accept<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    client: &mut Client<R, W>,
    shared: &Shared,
    peer: SocketAddr,
) -> Option<Session> {
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, client.read_packet()).await {
        Ok(Ok(Some(In::Connect(connect)))) => connect,
        Ok(Err(mqttbytes::Error::InvalidProtocolLevel(_) | mqttbytes::Error::InvalidProtocol)) => {
            client
                .refuse(ConnectReturnCode::RefusedProtocolVersion)
                .await;
            return None;
        }
        _ => return None,
    };
    if connect.protocol != InProtocol::V4 {
        client
            .refuse(ConnectReturnCode::RefusedProtocolVersion)
            .await;
        return None;
    }
    let claims = match authenticate(shared, connect.login.as_ref()) {
        Ok(claims) => claims,
        Err(code) => {
            tracing::info!(%peer, "MQTT CONNECT refused: bad credentials");
            client.refuse(code).await;
            return None;
        }
    };
    let topics = Topics::of(&claims.user_id);
    let will = match connect.last_will {
        Some(will) if !topics.may_publish(&will.topic) => {
            tracing::info!(%peer, user = %claims.user_id, "MQTT CONNECT refused: forbidden will topic");
            client.refuse(ConnectReturnCode::NotAuthorized).await;
            return None;
        }
        Some(will) => Some(will.message),
        None => None,
    };
    let client_id = if connect.client_id.is_empty() {
        if !connect.clean_session {
            client
                .refuse(ConnectReturnCode::ClientIdentifierNotValid)
                .await;
            return None;
        }
        format!("auto-{}", crate::domain::MessageId::random())
    } else {
        connect.client_id
    };
    let router_id = router_client_id(&claims.user_id, &client_id);
    let claim = shared.takeovers.claim(&router_id).await;
    let link = match shared
        .broker
        .connect(router_id, connect.clean_session)
        .await
    {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "the broker refused a link");
            client.refuse(ConnectReturnCode::ServiceUnavailable).await;
            return None;
        }
    };
    let ack = ConnAck {
        session_present: link.session_present,
        code: ConnectReturnCode::Success,
    };
    client.queue(Out::ConnAck(ack, None));
    let mut session = Session {
        claims,
        topics,
        keep_alive: (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500)),
        will,
        tx: link.tx,
        rx: link.rx,
        claim,
    };
    if !client.flush().await {
        session.leave_router();
        return None;
    }
    Some(session)
}

/// The claims of the CONNECT's token, if its username is their user; else the CONNACK code.
fn authenticate(
    shared: &Shared,
    login: Option<&mqttbytes::v4::Login>,
) -> Result<Claims, ConnectReturnCode> {
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

impl Session {
    async fn run<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        mut self,
        client: &mut Client<R, W>,
        shared: &Shared,
        mut shutdown: watch::Receiver<bool>,
    ) -> End {
        let mut revocations = shared.auth.revocations();
        let expiry = tokio::time::sleep_until(instant_of_unix(self.claims.expires_at));
        tokio::pin!(expiry);
        let far = Duration::from_secs(86_400 * 365);
        let keep_alive = tokio::time::sleep(self.keep_alive.unwrap_or(far));
        tokio::pin!(keep_alive);
        // Packets read but not yet handed to the router.
        let mut to_router: Vec<Out> = Vec::new();

        let end = loop {
            tokio::select! {
                _ = super::stopped(&mut shutdown) => break End::Shutdown,
                _ = &mut expiry => break End::Expired,
                _ = self.claim.kick.notified() => break End::TakenOver,
                _ = &mut keep_alive => break End::KeepAliveTimeout,
                revoked = revocations.recv() => match revoked {
                    Ok(sid) if sid == self.claims.sid => break End::LoggedOut,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if shared.auth.authenticate_session(&self.claims).is_err() {
                            break End::LoggedOut;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break End::Shutdown,
                },
                read = client.reader.read_buf(&mut client.rbuf) => {
                    match read {
                        Ok(0) | Err(_) => break End::ClientGone,
                        Ok(_) => {}
                    }
                    if let Some(period) = self.keep_alive {
                        keep_alive.as_mut().reset(Instant::now() + period);
                    }
                    if let Some(end) = self.handle_input(client, shared, &mut to_router).await {
                        break end;
                    }
                    if !send_to_router(&mut self.tx, &mut to_router) {
                        break End::Replaced;
                    }
                    if !client.flush().await {
                        break End::ClientGone;
                    }
                }
                note = self.rx.next() => {
                    match self.handle_notifications(client, note) {
                        Ok(wake) => {
                            if !client.flush().await {
                                break End::ClientGone;
                            }
                            if wake && self.rx.wake().await.is_err() {
                                break End::Replaced;
                            }
                        }
                        Err(end) => break end,
                    }
                }
            }
        };
        if end != End::Replaced {
            self.leave_router();
        }
        if end.fires_will() {
            if let Some(will) = self.will.take() {
                let _ = shared
                    .relay
                    .send(Submission {
                        from: self.claims.user_id,
                        payload: will,
                    })
                    .await;
            }
        }
        end
    }

    /// Handles every whole packet in the read buffer; `Some` ends the connection.
    async fn handle_input<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        client: &mut Client<R, W>,
        shared: &Shared,
        to_router: &mut Vec<Out>,
    ) -> Option<End> {
        loop {
            let packet = match In::read(&mut client.rbuf, MAX_PACKET) {
                Ok(packet) => packet,
                Err(mqttbytes::Error::InsufficientBytes(_)) => return None,
                Err(e) => {
                    tracing::debug!(user = %self.claims.user_id, error = %e, "malformed MQTT packet");
                    return Some(End::ProtocolViolation);
                }
            };
            match packet {
                In::Publish(publish) => {
                    if !self.topics.may_publish(&publish.topic) {
                        tracing::info!(user = %self.claims.user_id, "MQTT publish to a forbidden topic; closing");
                        return Some(End::Forbidden);
                    }
                    // The relay's queue is bounded: a full one holds this client back.
                    let submission = Submission {
                        from: self.claims.user_id,
                        payload: publish.payload,
                    };
                    if shared.relay.send(submission).await.is_err() {
                        return Some(End::Shutdown);
                    }
                    match publish.qos {
                        InQoS::AtMostOnce => {}
                        InQoS::AtLeastOnce => {
                            client.queue(Out::PubAck(
                                PubAck {
                                    pkid: publish.pkid,
                                    reason: PubAckReason::Success,
                                },
                                None,
                            ));
                        }
                        InQoS::ExactlyOnce => {
                            client.queue(Out::PubRec(
                                PubRec {
                                    pkid: publish.pkid,
                                    reason: PubRecReason::Success,
                                },
                                None,
                            ));
                        }
                    }
                }
                In::PubRel(rel) => {
                    client.queue(Out::PubComp(
                        PubComp {
                            pkid: rel.pkid,
                            reason: PubCompReason::Success,
                        },
                        None,
                    ));
                }
                In::PubAck(ack) => to_router.push(Out::PubAck(
                    PubAck {
                        pkid: ack.pkid,
                        reason: PubAckReason::Success,
                    },
                    None,
                )),
                In::Subscribe(subscribe) => {
                    let mut codes = Vec::with_capacity(subscribe.filters.len());
                    let mut allowed = Vec::new();
                    for filter in subscribe.filters {
                        if self.topics.may_subscribe(&filter.path) {
                            let qos = if filter.qos == InQoS::AtMostOnce {
                                QoS::AtMostOnce
                            } else {
                                QoS::AtLeastOnce
                            };
                            codes.push(if qos == QoS::AtMostOnce {
                                SubscribeReasonCode::QoS0
                            } else {
                                SubscribeReasonCode::QoS1
                            });
                            allowed.push(Filter {
                                path: filter.path,
                                qos,
                                nolocal: false,
                                preserve_retain: false,
                                retain_forward_rule: RetainForwardRule::OnEverySubscribe,
                            });
                        } else {
                            tracing::info!(user = %self.claims.user_id, filter = %filter.path, "MQTT subscription refused");
                            codes.push(SubscribeReasonCode::Failure);
                        }
                    }
                    if !allowed.is_empty() {
                        to_router.push(Out::Subscribe(
                            Subscribe {
                                pkid: subscribe.pkid,
                                filters: allowed,
                            },
                            None,
                        ));
                    }
                    // Answered here: the router's own SUBACK knows nothing of the refused filters.
                    client.queue(Out::SubAck(
                        SubAck {
                            pkid: subscribe.pkid,
                            return_codes: codes,
                        },
                        None,
                    ));
                }
                In::Unsubscribe(unsubscribe) => {
                    let ours: Vec<String> = unsubscribe
                        .topics
                        .into_iter()
                        .filter(|t| self.topics.may_subscribe(t))
                        .collect();
                    if !ours.is_empty() {
                        to_router.push(Out::Unsubscribe(
                            Unsubscribe {
                                pkid: unsubscribe.pkid,
                                filters: ours,
                            },
                            None,
                        ));
                    }
                    client.queue(Out::UnsubAck(
                        UnsubAck {
                            pkid: unsubscribe.pkid,
                            reasons: Vec::new(),
                        },
                        None,
                    ));
                }
                In::PingReq => {
                    client.queue(Out::PingResp(PingResp));
                }
                In::Disconnect => {
                    self.will = None;
                    return Some(End::ClientDisconnect);
                }
                // We never send QoS 2, so PUBREC/PUBCOMP from a client have nothing to answer.
                In::PubRec(_) | In::PubComp(_) => {}
                In::Connect(_)
                | In::ConnAck(_)
                | In::SubAck(_)
                | In::UnsubAck(_)
                | In::PingResp => {
                    return Some(End::ProtocolViolation);
                }
            }
        }
    }

    /// Writes what the router has for this client into the output buffer. `Ok(true)`: the
    /// router paused the link and needs a `wake` once the output is written.
    fn handle_notifications<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &mut self,
        client: &mut Client<R, W>,
        first: Result<Option<Notification>, rumqttd::local::LinkError>,
    ) -> Result<bool, End> {
        let mut wake = false;
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(note) = next.take() {
            match note {
                Err(_) => return Err(End::Replaced),
                Ok(None) => {}
                Ok(Some(Notification::Forward(forward))) => {
                    if !client.queue(Out::Publish(forward.publish, None)) {
                        return Err(End::ProtocolViolation);
                    }
                }
                Ok(Some(Notification::Unschedule)) => wake = true,
                Ok(Some(Notification::Disconnect(..))) => return Err(End::Replaced),
                // Acks of what the gateway already answered itself (SUBACK, UNSUBACK), and
                // anything else the router says, stay here.
                Ok(Some(_)) => {}
            }
            handled += 1;
            if handled < NOTIFICATION_BATCH {
                next = ready_now(self.rx.next());
            }
        }
        Ok(wake)
    }

    /// Tells the router this client is gone, so it frees the connection (and, for
    /// `clean_session = false`, keeps the session).
    fn leave_router(&mut self) {
        let mut goodbye = vec![Out::Disconnect(
            Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            },
            None,
        )];
        send_to_router(&mut self.tx, &mut goodbye);
    }
}

/// Hands `packets` to the router in one wake-up. `LinkTx::send` is async in name only: it pushes
/// to the link's buffer and sends on the router's bounded channel without awaiting. A full
/// channel can hold this thread until the router thread drains it; the router never waits on a
/// link, so that is a short stall, never a deadlock.
fn send_to_router(tx: &mut LinkTx, packets: &mut Vec<Out>) -> bool {
    let Some(last) = packets.pop() else {
        return true;
    };
    tx.buffer().extend(packets.drain(..));
    matches!(ready_now(tx.send(last)), Some(Ok(_)))
}

/// Polls `future` once; its output if it is ready at once.
fn ready_now<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// The monotonic instant of a Unix time in seconds.
fn instant_of_unix(unix_secs: u64) -> Instant {
    let now = crate::store::unix_now();
    Instant::now() + Duration::from_secs(unix_secs.saturating_sub(now))
}
