//! The generator's only source of randomness: SplitMix64, written here so that a fleet is a
//! function of its arguments on every platform and build, whatever a crate's next release
//! changes in its streams.
//!
//! Two uses: a sequential [`Rng`] drives the event stream, and [`mix`] turns (seed, entity,
//! purpose) into a stable draw, so that an entity's traits (an attacker's identity, whether
//! its row comes late) are computed where they are needed instead of stored.

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function: a bijective avalanche of 64 bits.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stable draw for `entity` under `purpose`: the same arguments give the same value.
pub fn draw(seed: u64, purpose: u64, entity: u64) -> u64 {
    mix(mix(seed ^ purpose.wrapping_mul(GAMMA)) ^ entity.wrapping_mul(0xd6e8_feb8_6659_fd93))
}

/// A SplitMix64 stream.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }

    /// Uniform in `0..n` (0 when `n` is 0); Lemire's multiply-shift, whose bias below
    /// 2^-32 for the bounds used here does not matter for synthetic data.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }

    /// True with probability `permille` / 1000.
    pub fn chance(&mut self, permille: u32) -> bool {
        self.below(1000) < u64::from(permille)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    /// An index drawn in proportion to `weights` (which must not all be zero).
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut x = self.below(total);
        for (idx, &w) in weights.iter().enumerate() {
            if x < u64::from(w) {
                return idx;
            }
            x -= u64::from(w);
        }
        weights.len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_seeds_differ() {
        let take = |seed| {
            let mut r = Rng::new(seed);
            (0..8).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(take(7), take(7));
        assert_ne!(take(7), take(8));
        // Pinned: a change of the stream changes every generated fleet.
        assert_eq!(Rng::new(0).next_u64(), mix(mix(0).wrapping_add(GAMMA)));
    }

    #[test]
    fn bounded_draws_stay_in_bounds_and_cover_them() {
        let mut r = Rng::new(1);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            let x = r.below(7);
            assert!(x < 7);
            seen[x as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert_eq!(r.below(0), 0);
        assert_eq!(r.range(5, 5), 5);
        assert!((0..1000).all(|_| (10..20).contains(&r.range(10, 20))));
        assert!((0..1000).all(|_| (0.0..1.0).contains(&r.unit())));
    }

    #[test]
    fn weighted_draws_follow_the_weights() {
        let mut r = Rng::new(2);
        let mut seen = [0u32; 3];
        for _ in 0..10_000 {
            seen[r.weighted(&[1, 0, 3])] += 1;
        }
        assert_eq!(seen[1], 0, "a zero weight is never drawn");
        assert!((2200..2800).contains(&seen[0]), "{seen:?}");
    }

    #[test]
    fn draws_depend_on_every_argument() {
        let base = draw(1, 2, 3);
        assert_eq!(base, draw(1, 2, 3));
        assert_ne!(base, draw(0, 2, 3));
        assert_ne!(base, draw(1, 0, 3));
        assert_ne!(base, draw(1, 2, 0));
    }
}
