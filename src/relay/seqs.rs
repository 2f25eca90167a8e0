//! Each conversation's last `seq`, handed out by the relay (the only writer of messages) from
//! a cache it fills from the store.

use std::collections::HashMap;

use crate::domain::{ConversationId, Message};
use crate::store::{Store, StoreError};

/// Conversations whose last seq is cached; past this the cache starts over from the store.
const MAX_CACHED: usize = 100_000;

#[derive(Default)]
pub(super) struct Seqs {
    last: HashMap<ConversationId, u64>,
}

impl Seqs {
    pub(super) fn next(
        &mut self,
        store: &Store,
        conversation: &ConversationId,
    ) -> Result<u64, StoreError> {
        let last = match self.last.get(conversation) {
            Some(&last) => last,
            None => store.last_seq(conversation)?,
        };
        self.last.insert(*conversation, last + 1);
        Ok(last + 1)
    }

    /// A batch that was not stored: its conversations' seqs come from the store again.
    pub(super) fn forget(&mut self, unstored: &[Message]) {
        for message in unstored {
            self.last.remove(&message.conversation());
        }
    }

    /// Only after a batch is stored, when the store has every seq handed out so far.
    pub(super) fn trim(&mut self) {
        if self.last.len() >= MAX_CACHED {
            self.last.clear();
        }
    }
}
