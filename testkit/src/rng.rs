//! A tiny deterministic generator, so that randomized tests and benchmarks
//! see the same sequence every run (and a failure can be replayed by its
//! seed) without a dependency.

/// Marsaglia's xorshift64 (13, 7, 17). Not for anything secret.
#[derive(Debug, Clone)]
pub struct XorShift(pub u64);

impl XorShift {
    /// The next value; the seed must not be 0 (the sequence would stay 0).
    #[allow(clippy::should_implement_trait)] // not an Iterator: it never ends
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_below_stays_in_range() {
        // 1 -> 8193 -> 8257 -> 8257 ^ (8257 << 17).
        assert_eq!(XorShift(1).next(), 1_082_269_761);
        let (mut a, mut b) = (XorShift(7), XorShift(7));
        for _ in 0..1000 {
            assert_eq!(a.next(), b.next());
            assert!(a.below(10) < 10);
            b.below(10);
        }
        assert_eq!(a.below(0), 0);
    }
}
