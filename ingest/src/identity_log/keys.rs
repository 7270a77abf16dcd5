//! The API key format and its hashing, shared by the identity service (which issues keys) and the
//! api's identity view (which checks them).
//!
//! A key reads `imgp_<key_id>_<secret>`: `key_id` is 16 random hex digits and public (it names the
//! key in listings, logs and usage records), `secret` is 32 random bytes as 64 hex digits (URL-safe,
//! no padding). Only `salt` and `SHA-256(salt ‖ secret)` ever leave the identity service.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every key starts with this, so leaked keys are easy to find with secret scanners.
pub const KEY_PREFIX: &str = "imgp_";
/// Random bytes in a key id.
const KEY_ID_BYTES: usize = 8;
/// Random bytes in a secret: 256 bits, far beyond brute force.
pub const SECRET_BYTES: usize = 32;
/// Random bytes of per-key salt.
const SALT_BYTES: usize = 16;
/// Length of a SHA-256 digest.
pub const HASH_BYTES: usize = 32;

/// The secret half of a key, decoded.
pub type Secret = [u8; SECRET_BYTES];

/// A key split into its parts. Borrowing `key_id` keeps parsing allocation-free on the hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The public id.
    pub key_id: &'a str,
    /// The decoded secret.
    pub secret: Secret,
}

/// A freshly issued key: the full string is shown to the caller once, the rest is stored.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    /// Public id.
    pub key_id: String,
    /// The whole key, `imgp_<key_id>_<secret>`; never stored or logged.
    pub api_key: String,
    /// Per-key random salt.
    pub salt: Vec<u8>,
    /// `SHA-256(salt ‖ secret)`.
    pub secret_hash: [u8; HASH_BYTES],
}

/// Issues a new key from the thread-local CSPRNG (ChaCha, seeded and reseeded from the OS).
pub fn issue() -> IssuedKey {
    let mut rng = rand::rng();
    let mut id = [0u8; KEY_ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    let mut salt = vec![0u8; SALT_BYTES];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    rng.fill_bytes(&mut salt);
    let key_id = hex::encode(id);
    let api_key = format!("{KEY_PREFIX}{key_id}_{}", hex::encode(secret));
    let secret_hash = hash_secret(&salt, &secret);
    IssuedKey {
        key_id,
        api_key,
        salt,
        secret_hash,
    }
}

/// Splits and decodes a presented key; `None` for anything not in the issued format. The shape
/// check costs the same whether or not the key exists, so it reveals nothing.
pub fn parse(api_key: &str) -> Option<ParsedKey<'_>> {
    let rest = api_key.strip_prefix(KEY_PREFIX)?;
    let (key_id, secret_hex) = rest.split_once('_')?;
    if key_id.len() != 2 * KEY_ID_BYTES || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut secret = [0u8; SECRET_BYTES];
    hex::decode_to_slice(secret_hex, &mut secret).ok()?;
    Some(ParsedKey { key_id, secret })
}

/// `SHA-256(salt ‖ secret)`. A fast hash is right here: the secret is 256 random bits, so there is
/// no dictionary to try and a slow KDF (argon2, bcrypt) would only cost every request CPU time.
pub fn hash_secret(salt: &[u8], secret: &[u8]) -> [u8; HASH_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(secret);
    hasher.finalize().into()
}

/// Whether `secret` hashes to `expected` under `salt`, compared in constant time.
pub fn verify(salt: &[u8], expected: &[u8], secret: &Secret) -> bool {
    hash_secret(salt, secret).ct_eq(expected).into()
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_key_parses_and_verifies() {
        let issued = issue();
        assert!(issued.api_key.starts_with("imgp_"));
        let parsed = parse(&issued.api_key).expect("parses");
        assert_eq!(parsed.key_id, issued.key_id);
        assert!(verify(&issued.salt, &issued.secret_hash, &parsed.secret));
    }

    #[test]
    fn keys_are_url_safe_and_unique() {
        let a = issue();
        let b = issue();
        assert_ne!(a.key_id, b.key_id);
        assert_ne!(a.api_key, b.api_key);
        assert_ne!(a.salt, b.salt);
        assert!(
            a.api_key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_')
        );
    }

    #[test]
    fn a_wrong_secret_or_salt_does_not_verify() {
        let issued = issue();
        let mut secret = parse(&issued.api_key).expect("parses").secret;
        secret[0] ^= 1;
        assert!(!verify(&issued.salt, &issued.secret_hash, &secret));
        let secret = parse(&issued.api_key).expect("parses").secret;
        assert!(!verify(b"other salt", &issued.secret_hash, &secret));
        assert!(!verify(&issued.salt, &issued.secret_hash[..31], &secret));
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let issued = issue();
        let good = issued.api_key.as_str();
        let secret = &good[good.len() - 64..];
        for bad in [
            "",
            "imgp_",
            "Bearer x",
            &good[5..],                                   // no prefix
            &good[..good.len() - 1],                      // short secret
            &format!("{good}0"),                          // long secret
            &format!("imgp_{}_{secret}", "zz".repeat(8)), // non-hex id
            &format!("imgp_abc_{secret}"),                // short id
            &good.replacen('_', "-", 2),                  // wrong separator
            &format!("{}g", &good[..good.len() - 1]),     // non-hex secret
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_hash_is_salted_sha256() {
        // Known answer: SHA-256("ab") computed independently.
        assert_eq!(
            hex::encode(hash_secret(b"a", b"b")),
            "fb8e20fc2e4c3f248c60c39bd652f3c1347298bb977b8b4d5903b85055620603"
        );
    }
}
