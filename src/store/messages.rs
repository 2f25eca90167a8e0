//! Messages and their history: keyed by conversation and `seq` so that a conversation is one
//! ordered range, with a dedupe index on `sender ‖ client_msg_id`. A batch of messages and their
//! dedupe entries are written in one transaction: a crash leaves all of a batch or none of it.

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::{decode, encode, flatten, Store, StoreError};
use crate::domain::{ClientMsgId, ConversationId, Message, UserId};

/// A message's key: its conversation, then its seq (big-endian, so a conversation is one
/// ordered range).
fn message_key(conversation: &ConversationId, seq: u64) -> [u8; ConversationId::BYTES + 8] {
    let mut key = [0u8; ConversationId::BYTES + 8];
    key[..ConversationId::BYTES].copy_from_slice(conversation.as_bytes());
    key[ConversationId::BYTES..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// One of a user's conversations, as the conversations index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversationSummary {
    pub peer: UserId,
    pub last_seq: u64,
    pub last_at_ms: u64,
}

/// Which page of a conversation to read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Page {
    /// Only messages with a smaller seq.
    pub before: Option<u64>,
    /// Only messages with a larger seq; the page then starts at the oldest of them.
    pub after: Option<u64>,
    pub limit: usize,
}

fn marker_key(reader: &UserId, peer: &UserId) -> [u8; 2 * UserId::BYTES] {
    let mut key = [0u8; 2 * UserId::BYTES];
    key[..UserId::BYTES].copy_from_slice(reader.as_bytes());
    key[UserId::BYTES..].copy_from_slice(peer.as_bytes());
    key
}

fn dedupe_key(from: &UserId, client_msg_id: &ClientMsgId) -> Vec<u8> {
    let mut key = Vec::with_capacity(UserId::BYTES + client_msg_id.as_str().len());
    key.extend_from_slice(from.as_bytes());
    key.extend_from_slice(client_msg_id.as_str().as_bytes());
    key
}

impl Store {
    /// The highest seq in a conversation, 0 when it is empty.
    pub fn last_seq(&self, conversation: &ConversationId) -> Result<u64, StoreError> {
        let last = self
            .inner
            .messages
            .scan_prefix(conversation.as_bytes())
            .next_back()
            .transpose()?;
        Ok(match last {
            Some((key, _)) => u64::from_be_bytes(
                key[ConversationId::BYTES..]
                    .try_into()
                    .expect("message keys end in a u64"),
            ),
            None => 0,
        })
    }

    /// The message `from` already sent with `client_msg_id`, if any.
    pub fn message_by_client_id(
        &self,
        from: &UserId,
        client_msg_id: &ClientMsgId,
    ) -> Result<Option<Message>, StoreError> {
        let Some(key) = self.inner.dedupe.get(dedupe_key(from, client_msg_id))? else {
            return Ok(None);
        };
        self.inner
            .messages
            .get(key)?
            .map(|bytes| decode("messages", &bytes))
            .transpose()
    }

    /// The user's conversations: each peer with the seq and time of its last message.
    pub fn conversations(&self, user: &UserId) -> Result<Vec<ConversationSummary>, StoreError> {
        self.inner
            .conversations
            .scan_prefix(user.as_bytes())
            .map(|row| {
                let (key, value) = row?;
                let peer: [u8; UserId::BYTES] =
                    key[UserId::BYTES..]
                        .try_into()
                        .map_err(|_| StoreError::Corrupt {
                            tree: "conversations",
                            detail: "short key".into(),
                        })?;
                let (last_seq, last_at_ms): (u64, u64) = decode("conversations", &value)?;
                Ok(ConversationSummary {
                    peer: UserId::from_bytes(peer),
                    last_seq,
                    last_at_ms,
                })
            })
            .collect()
    }

    /// One message of a conversation.
    pub fn message(
        &self,
        conversation: &ConversationId,
        seq: u64,
    ) -> Result<Option<Message>, StoreError> {
        self.inner
            .messages
            .get(message_key(conversation, seq))?
            .map(|bytes| decode("messages", &bytes))
            .transpose()
    }

    /// How many messages from `peer` to `reader` come after `reader`'s read marker.
    pub fn unread(&self, reader: &UserId, peer: &UserId) -> Result<u64, StoreError> {
        let conversation = ConversationId::of(reader, peer);
        let marker = self.read_marker(reader, peer)?;
        let mut count = 0;
        for row in self.inner.messages.range(
            message_key(&conversation, marker.saturating_add(1))
                ..message_key(&conversation, u64::MAX),
        ) {
            let (_, bytes) = row?;
            let message: Message = decode("messages", &bytes)?;
            if message.from == *peer {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Stores `messages`, their dedupe entries and the conversations index in one transaction. Seqs are the caller's:
    /// the relay is the only writer and hands out the next seq of each conversation.
    pub fn append_messages(&self, messages: &[Message]) -> Result<(), StoreError> {
        let trees = (
            &self.inner.messages,
            &self.inner.dedupe,
            &self.inner.conversations,
        );
        trees
            .transaction(|(stored, dedupe, conversations)| {
                for message in messages {
                    let key = message_key(&message.conversation(), message.seq);
                    stored.insert(key.as_slice(), encode(message))?;
                    dedupe.insert(
                        dedupe_key(&message.from, &message.client_msg_id),
                        key.as_slice(),
                    )?;
                    let summary = encode(&(message.seq, message.sent_at_ms));
                    conversations.insert(
                        marker_key(&message.from, &message.to).as_slice(),
                        summary.clone(),
                    )?;
                    conversations
                        .insert(marker_key(&message.to, &message.from).as_slice(), summary)?;
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(flatten)
    }

    /// Moves `reader`'s read marker in the conversation with `peer` to `seq` (at most the
    /// conversation's last seq), never backwards. `Some(new marker)` when it moved.
    pub fn mark_read(
        &self,
        reader: &UserId,
        peer: &UserId,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        let seq = seq.min(self.last_seq(&ConversationId::of(reader, peer))?);
        let key = marker_key(reader, peer);
        let current = self.read_marker(reader, peer)?;
        if seq <= current {
            return Ok(None);
        }
        self.inner.read_markers.insert(key, &seq.to_be_bytes())?;
        Ok(Some(seq))
    }

    /// The last seq `reader` has read in the conversation with `peer` (0: none).
    pub fn read_marker(&self, reader: &UserId, peer: &UserId) -> Result<u64, StoreError> {
        Ok(self
            .inner
            .read_markers
            .get(marker_key(reader, peer))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// A page of a conversation in ascending seq, and whether more lie beyond it in the
    /// direction of travel (older without a cursor and with `before`, newer with `after`).
    pub fn history(
        &self,
        conversation: &ConversationId,
        page: Page,
    ) -> Result<(Vec<Message>, bool), StoreError> {
        let start = message_key(conversation, page.after.map_or(0, |s| s.saturating_add(1)));
        let end = message_key(conversation, page.before.unwrap_or(u64::MAX));
        let range = self.inner.messages.range(start..end);
        let take = page.limit + 1;
        let mut rows: Vec<Message> = if page.after.is_some() {
            range
                .take(take)
                .map(|r| {
                    r.map_err(StoreError::from)
                        .and_then(|(_, v)| decode("messages", &v))
                })
                .collect::<Result<_, _>>()?
        } else {
            range
                .rev()
                .take(take)
                .map(|r| {
                    r.map_err(StoreError::from)
                        .and_then(|(_, v)| decode("messages", &v))
                })
                .collect::<Result<_, _>>()?
        };
        let has_more = rows.len() > page.limit;
        rows.truncate(page.limit);
        if page.after.is_none() {
            rows.reverse();
        }
        Ok((rows, has_more))
    }
}
