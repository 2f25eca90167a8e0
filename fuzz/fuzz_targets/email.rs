//! An email address from a login request: parsing must never panic, and an accepted address
//! is lower-case and parses again to itself (normalisation is idempotent).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::domain::Email;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = Email::parse(s) {
        assert_eq!(
            Email::parse(e.as_str()),
            Ok(e.clone()),
            "input {s:?} normalised to {:?}, which does not parse to itself",
            e.as_str()
        );
        assert_eq!(
            e.as_str(),
            e.as_str().to_lowercase(),
            "input {s:?} normalised to {:?}, which is not lower-case",
            e.as_str()
        );
    }
});
