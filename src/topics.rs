//! The MQTT topic scheme of the contract, written once: `users/{user_id}/inbox` carries events
//! from the server to a user, `users/{user_id}/outbox` commands from a user to the server.
//! User ids are lower-case hex, so these never hold a wildcard or a `/` of their own.

use crate::domain::UserId;

/// Where `user`'s events go (only `user` may subscribe).
pub fn inbox(user: &UserId) -> String {
    topic(user, "inbox")
}

/// Where `user` sends commands (only `user` may publish).
pub fn outbox(user: &UserId) -> String {
    topic(user, "outbox")
}

/// `users/{user}/{kind}`, without `format!`: the relay spells two inboxes per message.
fn topic(user: &UserId, kind: &str) -> String {
    let mut topic = String::with_capacity(32 + kind.len());
    topic.push_str("users/");
    topic.push_str(&user.hex());
    topic.push('/');
    topic.push_str(kind);
    topic
}

/// A topic of the scheme, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Inbox(UserId),
    Outbox(UserId),
}

/// `Some` only for a topic spelled exactly as [`inbox`] or [`outbox`] spell it: no wildcard,
/// `$SYS`, upper-case id or extra level ever parses.
pub fn parse(topic: &str) -> Option<Topic> {
    let rest = topic.strip_prefix("users/")?;
    let (user, kind) = rest.split_once('/')?;
    let user = UserId::parse(user).ok()?;
    match kind {
        "inbox" => Some(Topic::Inbox(user)),
        "outbox" => Some(Topic::Outbox(user)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly_what_it_makes() {
        let user = UserId::random();
        assert_eq!(parse(&inbox(&user)), Some(Topic::Inbox(user)));
        assert_eq!(parse(&outbox(&user)), Some(Topic::Outbox(user)));
        let upper = user.to_string().to_uppercase();
        for bad in [
            "#".to_owned(),
            "users/+/inbox".into(),
            "users/#".into(),
            "$SYS/#".into(),
            format!("users/{user}/inbox/x"),
            format!("users/{user}/+"),
            format!("users/{user}/#"),
            format!("users/{upper}/inbox"),
            format!("/users/{user}/inbox"),
            format!("users/{user}"),
            format!("users/{user}/Inbox"),
        ] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
    }
}
