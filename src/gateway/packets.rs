//! What the gateway does with each packet a connected client sends: one function per kind.
//! Outbox PUBLISHes go to the relay (never through the router); SUBSCRIBE and UNSUBSCRIBE are
//! checked against the ACL and answered here (the router's own acks know nothing of refused
//! filters); PUBACKs go to the router and to presence.

use std::sync::Arc;

use bytes::Bytes;
use rumqttd::protocol::{
    Filter, Packet as Out, PingResp, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, Publish as OutPublish, QoS, RetainForwardRule, SubAck, Subscribe,
    SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::codec::{ClientPacket as In, Publish, QoS as InQoS, Version};
use super::session::{End, Session};
use super::wire::Wire;
use super::{acl, Shared};
use crate::domain::UserId;
use crate::limits::Bucket;
use crate::payloads::{self, Command, CommandError};
use crate::relay::Submission;

/// Handles one client packet; what the router must see is pushed to `to_router`, outbox
/// commands to `to_relay` (see [`submit`]). `Err` ends the connection.
pub(super) async fn handle<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    session: &mut Session,
    shared: &Shared,
    wire: &mut Wire<R, W>,
    packet: In,
    to_router: &mut Vec<Out>,
    to_relay: &mut Vec<Submission>,
) -> Result<(), End> {
    match packet {
        In::Publish(p) if p.topic_alias => {
            tracing::info!(user = %session.user(), "MQTT 5.0 topic alias, none offered; closing");
            return Err(End::TopicAlias);
        }
        In::Publish(p) => publish(session, shared, wire, p, to_relay).await?,
        In::PubAck(pkid) => puback(session, shared, pkid, to_router),
        In::PubRel(pkid) => pubrel(wire, pkid),
        In::Subscribe { .. } | In::Unsubscribe { .. } if !session.subscriptions.take() => {
            tracing::info!(user = %session.user(), "too many SUBSCRIBE and UNSUBSCRIBE packets; closing");
            return Err(End::TooFast);
        }
        In::Subscribe { pkid, filters } => {
            subscribe(session, shared, wire, pkid, filters, to_router)
        }
        In::Unsubscribe { pkid, filters } => unsubscribe(session, wire, pkid, filters, to_router),
        In::PingReq => {
            wire.queue(Out::PingResp(PingResp));
        }
        In::Disconnect {
            with_will,
            session_expiry,
        } => {
            if let Some(seconds) = session_expiry {
                expire_after(session, shared, seconds);
            }
            if with_will {
                return Err(End::ClientDisconnectWithWill);
            }
            // A goodbye: no will.
            session.will = None;
            return Err(End::ClientDisconnect);
        }
        // We never send QoS 2, so PUBREC and PUBCOMP from a client have nothing to answer.
        In::PubRec | In::PubComp => {}
        In::Connect(_) | In::Unexpected => return Err(End::ProtocolViolation),
    }
    Ok(())
}

/// A 5.0 DISCONNECT's new Session Expiry Interval (at most `mqtt.session_expiry_secs`). A
/// session the router was told not to keep stays unkept: setting one where CONNECT had none is
/// a protocol error the client made, and nothing is lost by not keeping it.
fn expire_after(session: &mut Session, shared: &Shared, seconds: u32) {
    if session.link_clean {
        return;
    }
    let asked = std::time::Duration::from_secs(u64::from(seconds));
    session.keep_for = (!asked.is_zero()).then(|| asked.min(shared.kept.longest()));
}

/// SUBSCRIBE and UNSUBSCRIBE packets a connection may send: a burst of this many, then one a
/// second; past that the connection closes. An app subscribes once per connection; each of
/// these is work for the router, which every user shares, and a loop of them from one client
/// stalled every delivery (a test of 4 000 a write held an honest message back for over 10 s).
pub(super) const SUBSCRIPTIONS_BURST: u32 = 20;

/// A connection's allowance of SUBSCRIBE and UNSUBSCRIBE packets.
pub(super) fn subscriptions() -> Bucket {
    Bucket::new(SUBSCRIPTIONS_BURST, 1.0)
}

/// `read` commands a connection may send: a burst of this many, then one per [`READS_REFILL`];
/// past that each gets `rate_limited`. An app moves its read marker as the user reads, a few
/// times a second at most; each one is a write in the relay.
pub(super) const READS_BURST: u32 = 100;
pub(super) const READS_REFILL: std::time::Duration = std::time::Duration::from_millis(100);

/// A connection's allowance of `read` commands.
pub(super) fn reads() -> Bucket {
    Bucket::new(READS_BURST, 1.0 / READS_REFILL.as_secs_f32())
}

/// The most commands one connection has in the relay (queued, or in the batch being made
/// durable) at a time; at the limit it reads no further packets, and the client waits for its
/// PUBACKs. Without it one flat-out client filled the relay's whole queue (4 096 commands):
/// ~100 ms between its publish and the event at 40 000 msg/s, and batches of events that ran
/// past its peer's inbox buffer (BENCHMARKS.md, "pair"). Many clients still fill a batch.
pub(super) const IN_RELAY: usize = 256;

/// A command for the outbox: parsed and checked against the send limit here, then given one of
/// the connection's places in the relay (waiting for one when all [`IN_RELAY`] are taken) and
/// put in `to_relay`, then acknowledged. The acknowledgement is written after [`submit`] has
/// queued the command in the relay. A command refused here never reaches the relay: its error
/// event goes straight back to this connection ([`refuse`]). Any other topic closes the
/// connection.
async fn publish<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    session: &mut Session,
    shared: &Shared,
    wire: &mut Wire<R, W>,
    publish: Publish,
    to_relay: &mut Vec<Submission>,
) -> Result<(), End> {
    let user = session.user();
    if !acl::may_publish(&user, &publish.topic) {
        tracing::info!(%user, "MQTT publish to a forbidden topic; closing");
        return Err(End::Forbidden);
    }
    let command = command(shared, user, &publish.payload).and_then(|command| {
        if matches!(command, Command::Read { .. }) && !session.reads.take() {
            return Err(CommandError::rate_limited(
                command.client_msg_id(),
                READS_REFILL,
            ));
        }
        Ok(command)
    });
    match command {
        Ok(command) => {
            let place = place_in_relay(session, shared, to_relay).await?;
            to_relay.push(Submission {
                from: user,
                command,
                place: Some(place),
                received: std::time::Instant::now(),
            });
        }
        Err(error) => refuse(session, wire, &error),
    }
    acknowledge(wire, &publish);
    Ok(())
}

/// One of the connection's [`IN_RELAY`] places, waiting for one if all are taken.
async fn place_in_relay(
    session: &mut Session,
    shared: &Shared,
    to_relay: &mut Vec<Submission>,
) -> Result<OwnedSemaphorePermit, End> {
    let places = session
        .in_relay
        .get_or_insert_with(|| Arc::new(Semaphore::new(IN_RELAY)));
    if let Ok(place) = Arc::clone(places).try_acquire_owned() {
        return Ok(place);
    }
    // Some places may be held by the commands still here: they go first, or their places
    // would never come back.
    submit(shared, to_relay).await?;
    Ok(Arc::clone(places)
        .acquire_owned()
        .await
        .expect("a connection's semaphore is never closed"))
}

/// PUBACK (QoS 1) or PUBREC (QoS 2) for a client's publish.
fn acknowledge<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    wire: &mut Wire<R, W>,
    publish: &Publish,
) {
    let pkid = publish.pkid;
    match publish.qos {
        InQoS::AtMostOnce => {}
        InQoS::AtLeastOnce => {
            let ack = PubAck {
                pkid,
                reason: PubAckReason::Success,
            };
            wire.queue(Out::PubAck(ack, None));
        }
        InQoS::ExactlyOnce => {
            let rec = PubRec {
                pkid,
                reason: PubRecReason::Success,
            };
            wire.queue(Out::PubRec(rec, None));
        }
    }
}

/// A command refused before the relay (malformed, or past the send limit): its error event
/// goes to this connection only, at QoS 0, if it is subscribed to its inbox. So a flood of bad
/// or excess commands costs its own connection's CPU and socket, and nothing of the relay, the
/// router or the other users.
fn refuse<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    session: &Session,
    wire: &mut Wire<R, W>,
    error: &CommandError,
) {
    if session.subscribed.is_none() {
        return;
    }
    let topic = crate::topics::inbox(&session.user());
    let event = payloads::error_event(error);
    wire.queue(Out::Publish(
        OutPublish::new(Bytes::from(topic), Bytes::from(event), false),
        None,
    ));
}

/// Queues a connection's commands in the relay, in order, all at once: the relay's queue
/// hands out its room first come, first served, and a connection waits for room for all of
/// what it read rather than for each command. Waiting per command, connections that came
/// back to an empty queue took it whole while the rest got one command in per batch (with
/// 1 000 pairs flat out, most senders got 114 messages through in 12 s and a few 1 965).
pub(super) async fn submit(shared: &Shared, to_relay: &mut Vec<Submission>) -> Result<(), End> {
    if to_relay.is_empty() {
        return Ok(());
    }
    let room = shared
        .relay
        .reserve_many(to_relay.len())
        .await
        .map_err(|_| End::Shutdown)?;
    for (slot, submission) in room.zip(to_relay.drain(..)) {
        slot.send(submission);
    }
    Ok(())
}

/// An outbox payload as the relay takes it: parsed here, in the connection's task (so that
/// parsing spreads over every core and the relay only stores), and a send checked against the
/// user's sends per minute before anything is queued.
fn command(shared: &Shared, from: UserId, payload: &[u8]) -> Result<Command, CommandError> {
    let command = Command::parse(payload)?;
    if matches!(command, Command::Send { .. }) {
        shared
            .sends
            .try_acquire(&from)
            .map_err(|wait| CommandError::rate_limited(command.client_msg_id(), wait))?;
    }
    Ok(command)
}

/// A will's command, for the relay; `None` (logged) if it is refused: nobody is there to be
/// told.
pub(super) fn will(shared: &Shared, from: UserId, payload: &[u8]) -> Option<Submission> {
    match command(shared, from, payload) {
        Ok(command) => Some(Submission {
            from,
            command,
            place: None,
            received: std::time::Instant::now(),
        }),
        Err(error) => {
            tracing::info!(user = %from, code = ?error.code, "a will's command was refused");
            None
        }
    }
}

/// The device got an event: the router frees its slot, presence notes a delivered message.
fn puback(session: &mut Session, shared: &Shared, pkid: u16, to_router: &mut Vec<Out>) {
    if let Some(message) = session.deliveries.acknowledged(pkid) {
        shared.presence.acknowledge(&session.user(), &message);
    }
    let ack = PubAck {
        pkid,
        reason: PubAckReason::Success,
    };
    to_router.push(Out::PubAck(ack, None));
}

/// The second half of a QoS 2 publish: the command went to the relay at PUBLISH already.
fn pubrel<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(wire: &mut Wire<R, W>, pkid: u16) {
    let comp = PubComp {
        pkid,
        reason: PubCompReason::Success,
    };
    wire.queue(Out::PubComp(comp, None));
}

/// Only the user's own inbox; any other filter gets SUBACK failure 0x80 (5.0: 0x80
/// "unspecified error", or 0x8F "topic filter invalid" for a filter that is not one).
fn subscribe<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    session: &mut Session,
    shared: &Shared,
    wire: &mut Wire<R, W>,
    pkid: u16,
    filters: Vec<(String, InQoS)>,
    to_router: &mut Vec<Out>,
) {
    let user = session.user();
    let v5 = wire.version() == Version::V5;
    let mut codes = Vec::with_capacity(filters.len());
    let mut allowed = Vec::new();
    for (path, asked) in filters {
        if !acl::may_subscribe(&user, &path) {
            tracing::info!(%user, filter = %path, "MQTT subscription refused");
            codes.push(if !v5 {
                SubscribeReasonCode::Failure
            } else if acl::is_filter(&path) {
                SubscribeReasonCode::Unspecified
            } else {
                SubscribeReasonCode::TopicFilterInvalid
            });
            continue;
        }
        // Events are QoS 1 at most.
        let (qos, code) = match asked {
            InQoS::AtMostOnce => (QoS::AtMostOnce, SubscribeReasonCode::QoS0),
            _ => (QoS::AtLeastOnce, SubscribeReasonCode::QoS1),
        };
        codes.push(code);
        allowed.push(Filter {
            path,
            qos,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        });
    }
    if !allowed.is_empty() {
        if session.subscribed.is_none() {
            session.subscribed = Some(shared.presence.subscribe(user));
        }
        let subscribe = Subscribe {
            pkid,
            filters: allowed,
        };
        to_router.push(Out::Subscribe(subscribe, None));
    }
    let ack = SubAck {
        pkid,
        return_codes: codes,
    };
    wire.queue(Out::SubAck(ack, None));
}

/// Filters that are not the user's inbox were never subscribed: nothing to undo (5.0: reason
/// 0x11 "no subscription existed" for each).
fn unsubscribe<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    session: &mut Session,
    wire: &mut Wire<R, W>,
    pkid: u16,
    filters: Vec<String>,
    to_router: &mut Vec<Out>,
) {
    let user = session.user();
    let was_subscribed = session.subscribed.is_some();
    let mut reasons = Vec::with_capacity(filters.len());
    let mut ours = Vec::new();
    for filter in filters {
        if acl::may_subscribe(&user, &filter) {
            reasons.push(if was_subscribed {
                UnsubAckReason::Success
            } else {
                UnsubAckReason::NoSubscriptionExisted
            });
            ours.push(filter);
        } else {
            reasons.push(UnsubAckReason::NoSubscriptionExisted);
        }
    }
    if !ours.is_empty() {
        session.subscribed = None;
        let unsubscribe = Unsubscribe {
            pkid,
            filters: ours,
        };
        to_router.push(Out::Unsubscribe(unsubscribe, None));
    }
    let ack = UnsubAck { pkid, reasons };
    wire.queue(Out::UnsubAck(ack, None));
}
