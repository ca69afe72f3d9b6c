//! Iterating the set bits of a bitmap word by word, skipping empty words.

/// The positions of the set bits in `words`, lowest first; `base` is added to
/// every position (the bit index of `words[0]`'s bit 0).
pub struct BitPositions<'a> {
    words: &'a [u64],
    index: usize,
    current: u64,
    base: u64,
}

impl<'a> BitPositions<'a> {
    /// Iterates the set bits of `words`, numbering them from `base`.
    pub fn new(words: &'a [u64], base: u64) -> Self {
        BitPositions {
            words,
            index: 0,
            current: words.first().copied().unwrap_or(0),
            base,
        }
    }
}

impl Iterator for BitPositions<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        while self.current == 0 {
            self.index += 1;
            self.current = *self.words.get(self.index)?;
        }
        let bit = u64::from(self.current.trailing_zeros());
        self.current &= self.current - 1;
        Some(self.base + self.index as u64 * 64 + bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_bit_in_order() {
        let words = [0b1001u64, 0, 1 << 63, u64::MAX];
        let got: Vec<u64> = BitPositions::new(&words, 1000).collect();
        let mut want = vec![1000, 1003, 1000 + 128 + 63];
        want.extend((0..64).map(|b| 1000 + 192 + b));
        assert_eq!(got, want);
    }

    #[test]
    fn empty_inputs() {
        assert_eq!(BitPositions::new(&[], 0).count(), 0);
        assert_eq!(BitPositions::new(&[0, 0, 0], 0).count(), 0);
    }
}
