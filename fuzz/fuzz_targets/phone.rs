//! A phone number from a login request: parsing must never panic, and an accepted number is
//! E.164 (`+` then digits only) and parses again to itself (normalisation is idempotent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::domain::PhoneNumber;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = PhoneNumber::parse(s) {
        assert_eq!(
            PhoneNumber::parse(p.as_str()),
            Ok(p.clone()),
            "input {s:?} normalised to {:?}, which does not parse to itself",
            p.as_str()
        );
        let digits = p
            .as_str()
            .strip_prefix('+')
            .unwrap_or_else(|| panic!("{:?} (from {s:?}) does not start with '+'", p.as_str()));
        assert!(
            digits.bytes().all(|b| b.is_ascii_digit()),
            "{:?} (from {s:?}) is not '+' then ASCII digits",
            p.as_str()
        );
    }
});
