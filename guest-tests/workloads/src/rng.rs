//! A small, fast, seedable generator for the random access patterns
//! (xorshift64*; statistical quality is ample for picking pages).

pub struct Rng(u64);

impl Rng {
    /// A generator for `stream` (e.g. the worker index) under `seed`; every
    /// (seed, stream) pair gives a different, reproducible sequence.
    pub fn new(seed: u64, stream: u64) -> Self {
        let s =
            crate::page::mix(seed ^ crate::page::mix(stream.wrapping_add(0x9e37_79b9_7f4a_7c15)));
        Rng(if s == 0 { 1 } else { s })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` > 0), by multiply-high (no modulo bias worth
    /// speaking of for n far below 2^64).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = {
            let mut r = Rng::new(1, 0);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(1, 1);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let a2: Vec<u64> = {
            let mut r = Rng::new(1, 0);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_ne!(a, b);
        assert_eq!(a, a2);
    }

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut r = Rng::new(7, 0);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 800 && n < 1200), "{seen:?}");
    }
}
