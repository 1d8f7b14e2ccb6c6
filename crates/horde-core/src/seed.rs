//! Seeds: the public horde turns the request's seed string into an integer below 2^32.

const FOLD: u64 = 1 << 32;

/// A seed string as the public horde reads it: digits are a number, any other text is its UTF-8
/// bytes read as a little-endian integer; either is folded below 2^32.
pub fn parse_seed(text: &str) -> u64 {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        // Fold digit by digit so arbitrarily long numbers never overflow.
        return trimmed
            .bytes()
            .fold(0u64, |acc, d| (acc * 10 + u64::from(d - b'0')) % FOLD);
    }
    text.bytes()
        .rev()
        .fold(0u64, |acc, b| (acc * 256 + u64::from(b)) % FOLD)
}

/// The seed of the `index`-th image of a request with `seed_variation`.
pub fn varied_seed(base: u64, variation: u32, index: u32) -> u64 {
    (base + u64::from(variation) * u64::from(index)) % FOLD
}

/// A random seed below 2^32, drawn from `rng`.
pub fn random_seed(rng: &mut impl rand::Rng) -> u64 {
    u64::from(rng.random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_strings_are_numbers() {
        assert_eq!(parse_seed("42"), 42);
        assert_eq!(parse_seed(" 7 "), 7);
        assert_eq!(parse_seed("4294967296"), 0);
        assert_eq!(parse_seed("4294967297"), 1);
    }

    #[test]
    fn text_is_little_endian_bytes_folded() {
        assert_eq!(parse_seed("a"), 97);
        assert_eq!(parse_seed("ab"), 97 + 98 * 256);
        assert!(parse_seed("a very long text seed indeed") < FOLD);
    }

    #[test]
    fn variation_steps_and_folds() {
        assert_eq!(varied_seed(10, 3, 2), 16);
        assert_eq!(varied_seed(FOLD - 1, 1, 1), 0);
    }
}
