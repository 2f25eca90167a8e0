//! `ConversationId`: the two users of a conversation in sorted order, so that both directions
//! of a chat are one conversation with one `seq` counter.

use super::UserId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationId([u8; ConversationId::BYTES]);

impl ConversationId {
    pub const BYTES: usize = 2 * UserId::BYTES;

    pub fn of(a: &UserId, b: &UserId) -> Self {
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        let mut id = [0u8; Self::BYTES];
        id[..UserId::BYTES].copy_from_slice(low.as_bytes());
        id[UserId::BYTES..].copy_from_slice(high.as_bytes());
        Self(id)
    }

    pub fn as_bytes(&self) -> &[u8; Self::BYTES] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_directions_are_one_conversation() {
        let (a, b) = (UserId::random(), UserId::random());
        assert_eq!(ConversationId::of(&a, &b), ConversationId::of(&b, &a));
        assert_ne!(
            ConversationId::of(&a, &b),
            ConversationId::of(&a, &UserId::random())
        );
    }
}
