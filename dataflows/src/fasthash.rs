//! A fast hasher for maps keyed by the graph's own small integers (interned ids).
//!
//! The standard library's SipHash defends maps keyed by outside data against crafted
//! collisions, at several times the cost of a multiply per word. Keys that the graph
//! assigns itself (ids interned in order) cannot be crafted, so maps of them use this
//! multiply-rotate hash instead. Maps keyed by strings from the input keep SipHash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by integers the graph assigns.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// The multiply-rotate hash of the words written into it.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl IdHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.add(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_small_keys_spread_over_buckets() {
        let hash = |n: u32| {
            let mut h = IdHasher::default();
            h.write_u32(n);
            h.finish()
        };
        // The map picks a bucket by the low bits: consecutive ids must not share them.
        let mut low_bits: Vec<u64> = (0..1024).map(|n| hash(n) & 1023).collect();
        low_bits.sort_unstable();
        low_bits.dedup();
        assert_eq!(low_bits.len(), 1024, "low ten bits of 1024 consecutive ids");
        let mut map: IdMap<(u32, Option<u32>), u32> = IdMap::default();
        map.insert((1, None), 1);
        map.insert((1, Some(1)), 2);
        assert_eq!(map[&(1, None)], 1);
    }
}
