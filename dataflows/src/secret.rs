//! The deployment's secret key, with which the hashes the project computes from secrets
//! (passwords, username and password pairs) are keyed: HMAC-SHA256, so that a stored hash
//! cannot be reversed by hashing guesses without the key.
//!
//! Hashes DECNET computes and passes in payloads (`credential_hash`, `body_sha256`, …) are
//! copied as given, which DECNET's rules need for parity; the key is used only for the
//! hashes of the stream's windowed detections (DESIGN §2.6), which DECNET does not store.
//! A message body is content rather than a secret: its SHA-256, when the payload has none,
//! is computed as DECNET's (`crate::email`).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// The key of a deployment. The binary loads it from a file or the environment (generated
/// on first use); [`SecretKey::default`] is the all-zero key of library uses and tests.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(********)")
    }
}

impl SecretKey {
    pub fn new(bytes: [u8; 32]) -> SecretKey {
        SecretKey(bytes)
    }

    /// HMAC-SHA256 of the concatenation of `parts`.
    pub fn hash(&self, parts: &[&[u8]]) -> Digest {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_rfc_4231_hmac_sha256_and_depend_on_the_key() {
        // RFC 4231, test case 2 (key "Jefe"), with the key padded with zeros to 32 bytes,
        // which HMAC does anyway for keys shorter than the block.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let digest = SecretKey::new(key).hash(&[b"what do ya want ", b"for nothing?"]);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert_ne!(SecretKey::default().hash(&[b"root"]), SecretKey::new([1; 32]).hash(&[b"root"]));
    }
}
