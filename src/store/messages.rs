//! Messages and their history: keyed by conversation and `seq` so that a conversation is one
//! ordered range, with a dedupe index on `sender ‖ client_msg_id` and a conversations index
//! (each user's peers). All three live in the `chat` tree, told apart by the key's first byte,
//! so that a batch of messages with its dedupe entries and index entries is one atomic
//! `apply_batch`: a crash leaves all of a batch or none of it.
//!
//! Every key a message writes costs sled a copy of a leaf node, and a split every few appends
//! (BENCHMARKS.md, "Throughput"), so a message writes two keys: itself and its dedupe entry.
//! The conversations index is written once per conversation, with its first message; a
//! conversation's last seq and time are read from its last message when the list is asked for.

use super::{decode, encode, Store, StoreError};
use crate::domain::{ClientMsgId, ConversationId, Message, UserId};

/// Key prefixes in the `chat` tree.
const MESSAGE: u8 = b'm';
const DEDUPE: u8 = b'd';
const CONVERSATION: u8 = b'c';

const MESSAGE_KEY: usize = 1 + ConversationId::BYTES + 8;

/// A fixed-size key: its prefix byte, if any, then `parts` end to end.
fn key<const N: usize>(prefix: Option<u8>, parts: &[&[u8]]) -> [u8; N] {
    let mut key = [0u8; N];
    let mut at = 0;
    if let Some(prefix) = prefix {
        key[0] = prefix;
        at = 1;
    }
    for part in parts {
        key[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    debug_assert_eq!(at, N, "a key's parts fill it");
    key
}

/// A message's key: its conversation, then its seq (big-endian, so a conversation is one
/// ordered range).
fn message_key(conversation: &ConversationId, seq: u64) -> [u8; MESSAGE_KEY] {
    key(
        Some(MESSAGE),
        &[conversation.as_bytes(), &seq.to_be_bytes()],
    )
}

/// The prefix of every message of a conversation.
fn conversation_prefix(conversation: &ConversationId) -> [u8; 1 + ConversationId::BYTES] {
    key(Some(MESSAGE), &[conversation.as_bytes()])
}

fn dedupe_key(from: &UserId, client_msg_id: &ClientMsgId) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + UserId::BYTES + client_msg_id.as_str().len());
    key.push(DEDUPE);
    key.extend_from_slice(from.as_bytes());
    key.extend_from_slice(client_msg_id.as_str().as_bytes());
    key
}

/// `user`'s entry for `peer` in the conversations index.
fn summary_key(user: &UserId, peer: &UserId) -> [u8; 1 + 2 * UserId::BYTES] {
    key(Some(CONVERSATION), &[user.as_bytes(), peer.as_bytes()])
}

fn user_prefix(user: &UserId) -> [u8; 1 + UserId::BYTES] {
    key(Some(CONVERSATION), &[user.as_bytes()])
}

/// Opens the `chat` tree, first moving into it what a store made before it kept in the trees
/// `messages`, `dedupe` and `conversations` (same keys, now behind their prefix; same values).
/// The copy is idempotent and the old tree is dropped only after it, so a crash midway just
/// copies again at the next start.
pub(super) fn open_chat(db: &sled::Db) -> Result<sled::Tree, StoreError> {
    let chat = db.open_tree("chat")?;
    let names = db.tree_names();
    for (old, prefix) in [
        ("messages", MESSAGE),
        ("dedupe", DEDUPE),
        ("conversations", CONVERSATION),
    ] {
        if !names.iter().any(|name| name.as_ref() == old.as_bytes()) {
            continue;
        }
        let tree = db.open_tree(old)?;
        let mut batch = sled::Batch::default();
        let mut rows = 0usize;
        for row in tree.iter() {
            let (key, value) = row?;
            let mut moved = Vec::with_capacity(1 + key.len());
            moved.push(prefix);
            moved.extend_from_slice(&key);
            batch.insert(moved, value);
            rows += 1;
            if rows % 10_000 == 0 {
                chat.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        chat.apply_batch(batch)?;
        db.flush()?;
        db.drop_tree(old)?;
        tracing::info!(tree = old, rows, "moved into the chat tree");
    }
    Ok(chat)
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
    key(None, &[reader.as_bytes(), peer.as_bytes()])
}

impl Store {
    /// The highest seq in a conversation, 0 when it is empty.
    pub fn last_seq(&self, conversation: &ConversationId) -> Result<u64, StoreError> {
        let last = self
            .inner
            .chat
            .scan_prefix(conversation_prefix(conversation))
            .next_back()
            .transpose()?;
        Ok(match last {
            Some((key, _)) => u64::from_be_bytes(
                key[1 + ConversationId::BYTES..]
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
        let Some(at) = self.inner.chat.get(dedupe_key(from, client_msg_id))? else {
            return Ok(None);
        };
        let mut key = Vec::with_capacity(MESSAGE_KEY);
        key.push(MESSAGE);
        key.extend_from_slice(&at);
        self.inner
            .chat
            .get(key)?
            .map(|bytes| decode("messages", &bytes))
            .transpose()
    }

    /// The user's conversations: each peer with the seq and time of its last message.
    pub fn conversations(&self, user: &UserId) -> Result<Vec<ConversationSummary>, StoreError> {
        let mut summaries = Vec::new();
        for row in self.inner.chat.scan_prefix(user_prefix(user)) {
            let (key, _) = row?;
            let peer: [u8; UserId::BYTES] =
                key[1 + UserId::BYTES..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt {
                        tree: "conversations",
                        detail: "short key".into(),
                    })?;
            let peer = UserId::from_bytes(peer);
            let Some(last) = self.last_message(&ConversationId::of(user, &peer))? else {
                continue;
            };
            summaries.push(ConversationSummary {
                peer,
                last_seq: last.seq,
                last_at_ms: last.sent_at_ms,
            });
        }
        Ok(summaries)
    }

    /// The newest message of a conversation.
    fn last_message(&self, conversation: &ConversationId) -> Result<Option<Message>, StoreError> {
        self.inner
            .chat
            .scan_prefix(conversation_prefix(conversation))
            .next_back()
            .transpose()?
            .map(|(_, value)| decode("messages", &value))
            .transpose()
    }

    /// One message of a conversation.
    pub fn message(
        &self,
        conversation: &ConversationId,
        seq: u64,
    ) -> Result<Option<Message>, StoreError> {
        self.inner
            .chat
            .get(message_key(conversation, seq))?
            .map(|bytes| decode("messages", &bytes))
            .transpose()
    }

    /// How many messages from `peer` to `reader` come after `reader`'s read marker.
    pub fn unread(&self, reader: &UserId, peer: &UserId) -> Result<u64, StoreError> {
        let conversation = ConversationId::of(reader, peer);
        let marker = self.read_marker(reader, peer)?;
        let mut count = 0;
        for row in self.inner.chat.range(
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

    /// Stores `messages`, their dedupe entries and the conversations index as one atomic
    /// batch. Seqs are the caller's: the relay is the only writer and hands out the next seq of
    /// each conversation. The index is written once per conversation of the batch, for its
    /// last message. `jobs` (forwarding) go into the same batch.
    pub fn append_messages(
        &self,
        messages: &[Message],
        jobs: &[(super::Job, super::JobState)],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        Self::add_jobs(&mut batch, jobs);
        for message in messages {
            let key = message_key(&message.conversation(), message.seq);
            batch.insert(&key[..], encode(message));
            batch.insert(dedupe_key(&message.from, &message.client_msg_id), &key[1..]);
            if message.seq == 1 {
                // A new conversation: both users' lists gain it.
                batch.insert(&summary_key(&message.from, &message.to)[..], &[]);
                batch.insert(&summary_key(&message.to, &message.from)[..], &[]);
            }
        }
        self.watch(self.inner.chat.apply_batch(batch).map_err(StoreError::from))
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
        super::u64_at(&self.inner.read_markers, marker_key(reader, peer))
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
        let range = self.inner.chat.range(start..end);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Body, MessageId};

    fn message(from: UserId, to: UserId, seq: u64, cmid: &str) -> Message {
        Message {
            id: MessageId::random(),
            from,
            to,
            body: Body::parse(format!("message {seq}")).unwrap(),
            seq,
            sent_at_ms: 1_795_514_400_000 + seq,
            client_msg_id: ClientMsgId::parse(cmid.into()).unwrap(),
        }
    }

    #[test]
    fn a_store_of_the_old_layout_is_moved_into_the_chat_tree() {
        let dir = tempfile::tempdir().unwrap();
        let (ann, bob) = (UserId::random(), UserId::random());
        let conversation = ConversationId::of(&ann, &bob);
        let old = [message(ann, bob, 1, "a-1"), message(bob, ann, 2, "b-1")];
        {
            // What the store wrote before the `chat` tree: three trees, unprefixed keys.
            let db = sled::open(dir.path()).unwrap();
            let (messages, dedupe, conversations) = (
                db.open_tree("messages").unwrap(),
                db.open_tree("dedupe").unwrap(),
                db.open_tree("conversations").unwrap(),
            );
            for m in &old {
                let key = &message_key(&conversation, m.seq)[1..];
                messages.insert(key, encode(m)).unwrap();
                let mut dedupe_key = m.from.as_bytes().to_vec();
                dedupe_key.extend_from_slice(m.client_msg_id.as_str().as_bytes());
                dedupe.insert(dedupe_key, key).unwrap();
            }
            let summary = encode(&(2u64, old[1].sent_at_ms));
            conversations
                .insert(&summary_key(&ann, &bob)[1..], summary.clone())
                .unwrap();
            conversations
                .insert(&summary_key(&bob, &ann)[1..], summary)
                .unwrap();
            db.flush().unwrap();
        }
        for _ in 0..2 {
            // Opened twice: the second start finds nothing left to move.
            let store = Store::open(dir.path(), 1 << 20).unwrap();
            let page = Page {
                limit: 10,
                ..Page::default()
            };
            assert_eq!(store.history(&conversation, page).unwrap().0, old);
            assert_eq!(store.last_seq(&conversation).unwrap(), 2);
            let retry = ClientMsgId::parse("b-1".into()).unwrap();
            assert_eq!(
                store.message_by_client_id(&bob, &retry).unwrap().as_ref(),
                Some(&old[1])
            );
            let summaries = store.conversations(&ann).unwrap();
            assert_eq!(
                (summaries.len(), summaries[0].peer, summaries[0].last_seq),
                (1, bob, 2)
            );
            let names = store.inner.db.tree_names();
            assert!(!names.iter().any(|n| n.as_ref() == b"messages"));
        }
    }

    #[test]
    fn the_conversations_index_shows_each_conversation_at_its_last_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (ann, bob, cat) = (UserId::random(), UserId::random(), UserId::random());
        let batch = [
            message(ann, bob, 1, "a-1"),
            message(ann, cat, 1, "a-2"),
            message(bob, ann, 2, "b-1"),
            message(ann, bob, 3, "a-3"),
        ];
        store.append_messages(&batch, &[]).unwrap();
        let mut summaries = store.conversations(&ann).unwrap();
        summaries.sort_by_key(|s| s.last_seq);
        let seen: Vec<_> = summaries.iter().map(|s| (s.peer, s.last_seq)).collect();
        assert_eq!(seen, [(cat, 1), (bob, 3)]);
        assert_eq!(store.conversations(&bob).unwrap()[0].last_seq, 3);
        // A later batch: the index is not written again, the list still follows.
        let later = message(bob, ann, 4, "b-2");
        store
            .append_messages(std::slice::from_ref(&later), &[])
            .unwrap();
        let summary = store.conversations(&ann).unwrap();
        let bob_row = summary.iter().find(|s| s.peer == bob).unwrap();
        assert_eq!(
            (bob_row.last_seq, bob_row.last_at_ms),
            (4, later.sent_at_ms)
        );
        let retry = ClientMsgId::parse("a-2".into()).unwrap();
        assert_eq!(
            store.message_by_client_id(&ann, &retry).unwrap().as_ref(),
            Some(&batch[1])
        );
    }
}
