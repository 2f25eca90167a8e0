//! `Identity`: what a user logs in with, a phone number or an email address.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Email, PhoneNumber};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Identity {
    Phone(PhoneNumber),
    Email(Email),
}

impl Identity {
    /// A stable key for storage and rate limits: `p:+14155550101`, `e:ann@example.com`.
    pub fn key(&self) -> String {
        match self {
            Identity::Phone(p) => format!("p:{p}"),
            Identity::Email(e) => format!("e:{e}"),
        }
    }

    /// The channel a code for this identity goes by, as the API names it.
    pub fn channel(&self) -> &'static str {
        match self {
            Identity::Phone(_) => "sms",
            Identity::Email(_) => "email",
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Phone(p) => p.fmt(f),
            Identity::Email(e) => e.fmt(f),
        }
    }
}
