//! Test support shared by the stage tests: a tiny deterministic PRNG for oracle tests.

/// A tiny deterministic PRNG (xorshift64*), so random cases are reproducible by seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn pick(&mut self, names: &[&'static str]) -> &'static str {
        names[self.below(names.len())]
    }

    /// One of `names` two times in three, else `None`.
    pub fn maybe(&mut self, names: &[&'static str]) -> Option<&'static str> {
        (self.below(3) > 0).then(|| self.pick(names))
    }
}
