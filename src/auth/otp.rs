//! One-time codes: six digits from the OS CSPRNG, compared as keyed hashes in constant time.

use rand::Rng;

/// Digits in a code.
pub const DIGITS: usize = 6;

/// A fresh code, uniformly distributed over 000000..=999999. `rand::rng()` is a CSPRNG
/// (ChaCha12, seeded and periodically reseeded from the OS).
pub fn generate() -> String {
    let n: u32 = rand::rng().random_range(0..1_000_000);
    format!("{n:0width$}", width = DIGITS)
}

/// Constant-time equality of two hashes.
pub fn hashes_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_vary() {
        let codes: std::collections::HashSet<String> = (0..50).map(|_| generate()).collect();
        assert!(codes
            .iter()
            .all(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit())));
        assert!(codes.len() > 40);
    }

    #[test]
    fn equality() {
        assert!(hashes_equal(&[7; 32], &[7; 32]));
        let mut other = [7; 32];
        other[31] = 8;
        assert!(!hashes_equal(&[7; 32], &other));
    }
}
