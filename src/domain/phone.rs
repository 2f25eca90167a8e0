//! `PhoneNumber`: a valid number in E.164 (`+14155550101`), parsed with the `phonenumber`
//! crate (Google's libphonenumber metadata), so every way of writing one number is one account.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PhoneNumber(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidPhone(&'static str);

impl PhoneNumber {
    /// Accepts international format with any spacing or punctuation (`+1 (415) 555-0101`,
    /// `+44 20 7946 0958`, `00...` is not accepted: there is no region to dial from).
    pub fn parse(input: &str) -> Result<Self, InvalidPhone> {
        let input = input.trim();
        if input.is_empty() || input.len() > 64 {
            return Err(InvalidPhone("a phone number needs 1 to 64 characters"));
        }
        if !input.starts_with('+') {
            return Err(InvalidPhone(
                "a phone number must be in international format, starting with + and the country code",
            ));
        }
        let number =
            phonenumber::parse(None, input).map_err(|_| InvalidPhone("not a phone number"))?;
        if !phonenumber::is_valid(&number) {
            return Err(InvalidPhone("not a valid phone number for its country"));
        }
        Ok(Self(
            number.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_variants_are_one_number() {
        for variant in [
            "+1 415 555 0101",
            "+14155550101",
            "+1 (415) 555-0101",
            " +1-415-555-0101 ",
        ] {
            assert_eq!(
                PhoneNumber::parse(variant).unwrap().as_str(),
                "+14155550101",
                "{variant}"
            );
        }
        assert_eq!(
            PhoneNumber::parse("+44 20 7946 0958").unwrap().as_str(),
            "+442079460958"
        );
    }

    #[test]
    fn rejects_what_is_not_a_number() {
        for bad in [
            "",
            "4155550101",
            "+",
            "+1 415",
            "hello",
            "+1 415 555 0101 0101 0101",
            "+999 123",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
