//! The events a batch makes, encoded once and handed to the router in one go after the batch
//! is durable: a new message's event is one JSON payload shared by both inboxes, and the
//! batch's `sent_at` (every message of a batch is stamped with the same millisecond) is
//! spelled once.

use bytes::Bytes;
use rumqttd::local::LinkTx;
use rumqttd::protocol::{Packet, Publish};

use crate::domain::{ClientMsgId, Message, UserId};
use crate::payloads::{self, CommandError};

/// What to tell whom once the batch is durable.
pub(super) enum Reply {
    /// A message new in this batch (its index in the batch): the event to the recipient and
    /// the sender (`to_both`), or only to the sender (a retry within the batch).
    Fresh {
        index: usize,
        to_both: bool,
    },
    /// A retry of a message stored before: the original event, to the sender.
    Stored(Message),
    /// A read marker moved: tell the peer and the reader's devices.
    Read {
        reader: UserId,
        peer: UserId,
        seq: u64,
        /// The command's, for its `unavailable` error if the batch cannot be stored.
        client_msg_id: Option<ClientMsgId>,
    },
    Error(UserId, CommandError),
}

pub(super) struct Events {
    link: LinkTx,
    /// The last `sent_at` spelled, and its spelling.
    sent_at: (u64, String),
    /// A batch's packets before they go to the router; kept between batches, so that a big
    /// batch does not fault in fresh memory each time (it did: ~5 % of the CPU with 1 000
    /// pairs flat out).
    packets: Vec<Packet>,
}

impl Events {
    pub(super) fn new(link: LinkTx) -> Self {
        Self {
            link,
            sent_at: (u64::MAX, String::new()),
            packets: Vec::new(),
        }
    }

    /// Hands the replies' events to the router, waking it once for all of them.
    pub(super) fn publish(&mut self, fresh: &[Message], replies: Vec<Reply>) {
        let mut packets = std::mem::take(&mut self.packets);
        let mut push = |user: &UserId, payload: Bytes| {
            let topic = Bytes::from(crate::topics::inbox(user));
            packets.push(Packet::Publish(Publish::new(topic, payload, false), None));
        };
        for reply in replies {
            match reply {
                Reply::Fresh { index, to_both } => {
                    let message = &fresh[index];
                    let event = self.message_event(message);
                    if to_both {
                        push(&message.to, event.clone());
                    }
                    push(&message.from, event);
                }
                Reply::Stored(original) => {
                    push(&original.from, payloads::message_event(&original).into())
                }
                Reply::Read {
                    reader, peer, seq, ..
                } => {
                    // To the peer (read receipts) and to the reader's other devices (the
                    // conversation is read there too).
                    let event: Bytes = payloads::read_event(&reader, &peer, seq).into();
                    push(&peer, event.clone());
                    push(&reader, event);
                }
                Reply::Error(user, error) => push(&user, payloads::error_event(&error).into()),
            }
        }
        if let Some(Packet::Publish(last, _)) = packets.pop() {
            {
                let mut buffer = self.link.buffer();
                // Room for the last one too: growing a batch-sized buffer for it copied it.
                buffer.reserve(packets.len() + 1);
                buffer.extend(packets.drain(..));
            }
            // `publish` queues the last one and wakes the router once for all of them.
            if let Err(e) = self.link.publish(last.topic, last.payload) {
                tracing::error!(error = ?e, "relay: the broker refused events");
            }
        }
        self.packets = packets;
    }

    fn message_event(&mut self, message: &Message) -> Bytes {
        if self.sent_at.0 != message.sent_at_ms {
            let spelled = payloads::rfc3339_millis(message.sent_at_ms);
            self.sent_at = (message.sent_at_ms, spelled);
        }
        payloads::message_event_at(message, &self.sent_at.1).into()
    }
}

/// The replies of a batch that could not be stored: each sender of a new message, and each
/// reader whose marker moved, gets `unavailable` instead; a retry of a message stored before
/// still gets its event (that message is durable), and errors stay errors.
pub(super) fn unavailable(fresh: &[Message], replies: Vec<Reply>) -> Vec<Reply> {
    replies
        .into_iter()
        .map(|reply| match reply {
            Reply::Fresh { index, .. } => {
                let message = &fresh[index];
                let cmid = message.client_msg_id.as_str().to_owned();
                Reply::Error(message.from, super::unavailable(Some(cmid)))
            }
            Reply::Read {
                reader,
                client_msg_id,
                ..
            } => Reply::Error(
                reader,
                super::unavailable(client_msg_id.map(|id| id.as_str().to_owned())),
            ),
            other => other,
        })
        .collect()
}
