//! What a send must pass before it is stored: a real recipient who is not the sender, and
//! not a retry of a message already stored (dedupe by sender and `client_msg_id`).

use std::collections::HashSet;

use crate::domain::{Message, UserId};
use crate::payloads::{CommandError, ErrorCode};
use crate::store::{Store, StoreError};

/// Users known to exist; past this many the set starts over (users are never deleted, so a
/// hit is always right, and a miss only costs a lookup).
const MAX_KNOWN_USERS: usize = 1_000_000;

pub(super) struct Policy {
    store: Store,
    known_users: HashSet<UserId>,
}

pub(super) enum Verdict {
    New,
    /// The sender already stored this one: answer with it, store nothing.
    Retry(Message),
    Refused(CommandError),
}

impl Policy {
    pub(super) fn new(store: Store) -> Self {
        Self {
            store,
            known_users: HashSet::new(),
        }
    }

    /// `message` as the sender sent it (its `seq` not yet given).
    pub(super) fn check_send(&mut self, message: &Message) -> Result<Verdict, StoreError> {
        if let Some(original) = self
            .store
            .message_by_client_id(&message.from, &message.client_msg_id)?
        {
            return Ok(match same_send(&original, message) {
                Ok(()) => Verdict::Retry(original),
                Err(error) => Verdict::Refused(error),
            });
        }
        let refuse = |message_text: &str| {
            Verdict::Refused(CommandError::new(
                Some(message.client_msg_id.as_str().to_owned()),
                ErrorCode::UnknownRecipient,
                message_text,
            ))
        };
        if message.to == message.from {
            return Ok(refuse("a conversation needs another user"));
        }
        if !self.exists(&message.to)? {
            return Ok(refuse("no user has that id"));
        }
        Ok(Verdict::New)
    }

    fn exists(&mut self, user: &UserId) -> Result<bool, StoreError> {
        if self.known_users.contains(user) {
            return Ok(true);
        }
        if !self.store.user_exists(user)? {
            return Ok(false);
        }
        if self.known_users.len() >= MAX_KNOWN_USERS {
            self.known_users.clear();
        }
        self.known_users.insert(*user);
        Ok(true)
    }
}

/// A retry must be the same send: the same recipient and body under the same
/// `client_msg_id`. Anything else is refused, and the original stays.
pub(super) fn same_send(original: &Message, retry: &Message) -> Result<(), CommandError> {
    if original.to == retry.to && original.body == retry.body {
        return Ok(());
    }
    Err(CommandError::new(
        Some(retry.client_msg_id.as_str().to_owned()),
        ErrorCode::ClientMsgIdReused,
        "this client_msg_id was already used for another message; nothing was stored",
    ))
}
