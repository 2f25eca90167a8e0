//! `Email`: an address parsed by lettre's RFC 5321 parser and lower-cased whole, so
//! `Ann@Example.com` and `ann@example.com` are one account.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidEmail(&'static str);

impl Email {
    pub fn parse(input: &str) -> Result<Self, InvalidEmail> {
        let input = input.trim();
        if input.is_empty() || input.len() > 254 {
            return Err(InvalidEmail("an email address needs 1 to 254 characters"));
        }
        let lower = input.to_lowercase();
        let address: lettre::Address = lower
            .parse()
            .map_err(|_| InvalidEmail("not an email address"))?;
        // A bare name (`root@localhost`) is a valid address but no one's inbox on the internet.
        if !address.domain().contains('.') {
            return Err(InvalidEmail("the domain of an email address needs a dot"));
        }
        Ok(Self(address.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_cases_and_trims() {
        assert_eq!(
            Email::parse(" Ann@Example.COM ").unwrap().as_str(),
            "ann@example.com"
        );
    }

    #[test]
    fn rejects_what_is_not_an_address() {
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@@example.com",
            "ann example@x.com",
            "ann@localhost",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
