//! The topic rules of one user: subscribe only to its inbox, publish only to its outbox. Exact
//! string comparison, so no wildcard, `$SYS` or other user's topic can ever match.

use crate::domain::UserId;

pub struct Topics {
    pub inbox: String,
    pub outbox: String,
}

impl Topics {
    pub fn of(user: &UserId) -> Self {
        Self {
            inbox: format!("users/{user}/inbox"),
            outbox: format!("users/{user}/outbox"),
        }
    }

    pub fn may_subscribe(&self, filter: &str) -> bool {
        filter == self.inbox
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        topic == self.outbox
    }
}

/// The client id the router sees: the user id and the client's own id, so that two users who
/// both call their phone "phone" never take over each other's session. The router refuses ids
/// with `+ $ # /`, so those (and `%`) are %-escaped.
pub fn router_client_id(user: &UserId, client_id: &str) -> String {
    let mut id = format!("{user}:");
    for c in client_id.chars() {
        match c {
            '+' | '$' | '#' | '/' | '%' => id.push_str(&format!("%{:02X}", c as u32)),
            c => id.push(c),
        }
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_own_inbox_and_outbox() {
        let me = UserId::random();
        let other = UserId::random();
        let topics = Topics::of(&me);
        assert!(topics.may_subscribe(&format!("users/{me}/inbox")));
        for filter in [
            "#",
            "+",
            "users/+/inbox",
            "users/#",
            "$SYS/#",
            &format!("users/{other}/inbox"),
            &format!("users/{me}/outbox"),
            &format!("users/{me}/+"),
        ] {
            assert!(!topics.may_subscribe(filter), "{filter}");
        }
        assert!(topics.may_publish(&format!("users/{me}/outbox")));
        for topic in [
            format!("users/{other}/outbox"),
            format!("users/{me}/inbox"),
            format!("users/{other}/inbox"),
            "x".into(),
        ] {
            assert!(!topics.may_publish(&topic), "{topic}");
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
    }
}
