//! Domain types: every input from outside is parsed into one of these once, at the edge, and
//! trusted after. A value of these types is valid by construction.

mod conversation;
mod email;
mod identity;
mod message;
mod phone;
mod session_id;
mod user_id;

pub use conversation::ConversationId;
pub use email::Email;
pub use identity::Identity;
pub use message::{Body, ClientMsgId, InvalidBody, Message, MessageId};
pub use phone::PhoneNumber;
pub use session_id::SessionId;
pub use user_id::{HexId, UserId};
