//! The topic rules of one user: subscribe only to its own inbox, publish only to its own
//! outbox. A topic must parse as the contract spells it (see [`crate::topics`]), so no
//! wildcard, `$SYS` topic or other user's topic can ever match.
//!
//! Also the router's name for a connection: rumqttd knows clients only by id, and the contract
//! scopes client ids to their user.

use crate::domain::UserId;
use crate::topics::{self, Topic};

pub(super) fn may_subscribe(user: &UserId, filter: &str) -> bool {
    topics::parse(filter) == Some(Topic::Inbox(*user))
}

pub(super) fn may_publish(user: &UserId, topic: &str) -> bool {
    topics::parse(topic) == Some(Topic::Outbox(*user))
}

/// Whether `filter` is an MQTT topic filter at all: not empty, `#` only as a whole last level,
/// `+` only as a whole level, no NUL. A 5.0 client is told 0x8F "topic filter invalid" for
/// one that is not, rather than the 0x80 of a filter it may not have.
pub(super) fn is_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        level => !level.contains(['#', '+']),
    })
}

/// The client id the router sees: the user id and the client's own id, so that two users who
/// both call their phone "phone" never take over each other's session. The router refuses ids
/// with `+ $ # /`, so those (and `%`) are %-escaped.
pub(super) fn router_client_id(user: &UserId, client_id: &str) -> String {
    let mut id = String::with_capacity(2 * UserId::BYTES + 1 + client_id.len());
    id.push_str(&user.to_string());
    id.push(':');
    for c in client_id.chars() {
        match c {
            '+' | '$' | '#' | '/' | '%' => id.push_str(&format!("%{:02X}", c as u32)),
            c => id.push(c),
        }
    }
    id
}

/// The router id of a connection that sent an empty client id: unique, and unlike any escaped
/// client id (a `%` there is always followed by two upper-case hex digits).
pub(super) fn anonymous_router_id(user: &UserId) -> String {
    format!("{user}:%anon-{}", crate::domain::MessageId::random())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters() {
        for good in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "$SYS/#"] {
            assert!(is_filter(good), "{good}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "++", "a/b+/c", "#/a", "a\0b"] {
            assert!(!is_filter(bad), "{bad}");
        }
    }

    #[test]
    fn only_the_own_inbox_and_outbox() {
        let me = UserId::random();
        let other = UserId::random();
        assert!(may_subscribe(&me, &topics::inbox(&me)));
        for filter in [
            "#".to_owned(),
            "+".into(),
            "users/+/inbox".into(),
            "users/#".into(),
            "$SYS/#".into(),
            topics::inbox(&other),
            topics::outbox(&me),
            format!("users/{me}/+"),
        ] {
            assert!(!may_subscribe(&me, &filter), "{filter}");
        }
        assert!(may_publish(&me, &topics::outbox(&me)));
        for topic in [
            topics::outbox(&other),
            topics::inbox(&me),
            topics::inbox(&other),
            "x".into(),
        ] {
            assert!(!may_publish(&me, &topic), "{topic}");
        }
    }

    #[test]
    fn router_ids_are_per_user_and_safe() {
        let a = UserId::random();
        let b = UserId::random();
        assert_ne!(router_client_id(&a, "phone"), router_client_id(&b, "phone"));
        let id = router_client_id(&a, "a/b+c#d$e%f");
        assert!(!id.contains(['/', '+', '#', '$']));
        assert_ne!(router_client_id(&a, "a/b"), router_client_id(&a, "a%2Fb"));
        let anon = anonymous_router_id(&a);
        assert!(anon.starts_with(&format!("{a}:")));
        assert_ne!(anon, anonymous_router_id(&a));
        assert_ne!(router_client_id(&a, &anon[25..]), anon);
    }
}
