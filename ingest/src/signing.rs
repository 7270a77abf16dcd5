//! Signing keys of signed GET URLs (imgproxy's URL format): the `[signing]` section that holds the
//! deployment's signing secret, and how a key's `key` and `salt` are derived from it.
//!
//! **Derive, don't store.** A signing key is an id (public: it is in every URL) and two 32-byte
//! values, `key` and `salt`, that the api must know in clear to check a signature. Storing them
//! would put them in `identity.changes` (Kafka, its replicas, every api's memory and any dump of
//! the topic); encrypting them there would still need a key shared by identity and every api.
//! Instead both derive them from one server-side secret that never leaves configuration:
//!
//! ```text
//! key  = HMAC-SHA256(secret, "imgpipe signing key\0"  ‖ key_id)
//! salt = HMAC-SHA256(secret, "imgpipe signing salt\0" ‖ key_id)
//! ```
//!
//! so `identity.changes` carries only `{key_id, tenant_id, status, created_at_ms}`, and the two
//! values exist in clear only in the admin API's one answer and in the memory of the processes
//! holding the secret. The labels keep the two derivations (and any later one) apart; the NUL ends
//! the label, so no key id can make one label's input equal another's.
//!
//! **Rotating `signing.secret` invalidates every signing key at once** (every derived value
//! changes): issue new keys after a rotation and hand them to the URL builders. An api whose
//! secret differs from identity's refuses every signed URL.

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Bytes of a derived key and of a derived salt (imgproxy takes any length; 32 is SHA-256's).
pub const KEY_BYTES: usize = 32;
/// Shortest secret accepted: 256 bits, so the derived keys are as strong as HMAC-SHA256 allows.
pub const MIN_SECRET_BYTES: usize = 32;
/// Random bytes of a signing key id.
const KEY_ID_BYTES: usize = 8;
/// Domain label of the derived key.
const KEY_LABEL: &[u8] = b"imgpipe signing key\0";
/// Domain label of the derived salt.
const SALT_LABEL: &[u8] = b"imgpipe signing salt\0";
/// Label of the key that makes the `ETag`s of a signing key's answers unforgeable.
const ETAG_LABEL: &[u8] = b"imgpipe etag\0";

/// Settings of signed GET URLs (the `[signing]` section), read by the identity service (which
/// hands out keys) and by every api (which checks signatures).
#[derive(Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// The secret every signing key's `key` and `salt` are derived from: at least 32 bytes, as
    /// hex (e.g. `openssl rand -hex 32`) or base64 (standard or URL-safe, padding optional; a
    /// value of hex digits only is read as hex). Set the same value on the identity service and
    /// on every api. Unset: identity answers signing-key creation with 503 `signing_disabled`
    /// and the api refuses signed URLs with 403 `invalid_signature`. Changing it invalidates
    /// every signing key.
    /// Never logged and never printed by `imgpipe config`.
    #[serde(skip_serializing)]
    pub secret: String,
}

impl std::fmt::Debug for SigningConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningConfig")
            .field(
                "secret",
                &if self.secret.is_empty() {
                    "<unset>"
                } else {
                    "<redacted>"
                },
            )
            .finish()
    }
}

impl SigningConfig {
    /// The decoded secret; `Ok(None)` when signing is not configured.
    pub fn secret(&self) -> Result<Option<SigningSecret>, String> {
        if self.secret.trim().is_empty() {
            return Ok(None);
        }
        SigningSecret::parse(&self.secret).map(Some)
    }

    /// Pushes one message per broken rule (never the secret itself).
    pub fn check(&self, errors: &mut Vec<String>) {
        if let Err(error) = self.secret() {
            errors.push(error);
        }
    }
}

impl chassis::Validate for SigningConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        self.check(errors);
    }
}

/// The decoded signing secret. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Box<[u8]>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

impl SigningSecret {
    /// Decodes a configured secret: hex when it is only hex digits, else base64 (standard or
    /// URL-safe, padding optional). The error names the rule, never the value.
    pub fn parse(text: &str) -> Result<Self, String> {
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        let text = text.trim();
        let bytes = if text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| {
                "signing.secret is hex with an odd number of digits (IMGPIPE_SIGNING__SECRET)"
                    .to_owned()
            })?
        } else {
            let unpadded = text.trim_end_matches('=');
            STANDARD_NO_PAD
                .decode(unpadded)
                .or_else(|_| URL_SAFE_NO_PAD.decode(unpadded))
                .map_err(|_| {
                    "signing.secret must be hex or base64 (IMGPIPE_SIGNING__SECRET)".to_owned()
                })?
        };
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "signing.secret must be at least {MIN_SECRET_BYTES} bytes (64 hex digits), got {}",
                bytes.len()
            ));
        }
        Ok(Self(bytes.into_boxed_slice()))
    }

    /// The `key` and `salt` of signing key `key_id`: the same on every process holding this
    /// secret, different for every key id and every secret.
    pub fn derive(&self, key_id: &str) -> SigningKey {
        SigningKey {
            key: self.hmac(KEY_LABEL, key_id),
            salt: self.hmac(SALT_LABEL, key_id),
        }
    }

    /// The key the api's `ETag`s of signing key `key_id`'s answers are made with (see
    /// `api::web_cache`): only a holder of the secret can make a tag the api revalidates.
    pub fn etag_key(&self, key_id: &str) -> [u8; KEY_BYTES] {
        self.hmac(ETAG_LABEL, key_id)
    }

    fn hmac(&self, label: &[u8], key_id: &str) -> [u8; KEY_BYTES] {
        // HMAC accepts keys of any length, so this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(label);
        mac.update(key_id.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The two values imgproxy's URL signature is computed with (`IMGPROXY_KEY`, `IMGPROXY_SALT`).
/// Its `Debug` shows nothing of them.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    /// HMAC key of the URL signature.
    pub key: [u8; KEY_BYTES],
    /// Prepended to the signed path.
    pub salt: [u8; KEY_BYTES],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// A new signing key id: 16 random hex digits from the thread-local CSPRNG. Public (it is in every
/// URL); knowing it gives nothing without the secret.
pub fn new_key_id() -> String {
    let mut id = [0u8; KEY_ID_BYTES];
    rand::rng().fill_bytes(&mut id);
    hex::encode(id)
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    const SECRET_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn secret() -> SigningSecret {
        SigningSecret::parse(SECRET_HEX).unwrap()
    }

    #[test]
    fn derivation_is_deterministic_and_differs_per_key_id_and_per_secret() {
        let a = secret().derive("0123456789abcdef");
        assert_eq!(a, secret().derive("0123456789abcdef"));
        assert_ne!(a.key, a.salt, "key and salt come from different labels");
        let b = secret().derive("0123456789abcdee");
        assert_ne!(a.key, b.key);
        assert_ne!(a.salt, b.salt);
        let other = SigningSecret::parse(&"ab".repeat(32)).unwrap();
        let c = other.derive("0123456789abcdef");
        assert_ne!(a.key, c.key);
        assert_ne!(a.salt, c.salt);
    }

    #[test]
    fn derivation_is_hmac_sha256_over_the_label_and_the_key_id() {
        // Known answers, computed independently:
        // printf 'imgpipe signing key\0k1' | openssl dgst -sha256 -mac HMAC -macopt hexkey:<SECRET_HEX>
        let derived = secret().derive("k1");
        assert_eq!(
            hex::encode(derived.key),
            "7396a0af76edb293990523e556f9170f0933982ac811682c3c45244ad6fcde24"
        );
        assert_eq!(
            hex::encode(derived.salt),
            "cda1f5e8b26cde36c8c98aa18a964a2b1cb06f6688824e83dca7cd224bc4d937"
        );
    }

    #[test]
    fn the_secret_is_read_as_hex_or_base64_and_must_be_long_enough() {
        let raw: Vec<u8> = (0u8..32).collect();
        use base64::Engine as _;
        let standard = base64::engine::general_purpose::STANDARD.encode(&raw);
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        for text in [SECRET_HEX, &SECRET_HEX.to_uppercase(), &standard, &url_safe] {
            assert_eq!(SigningSecret::parse(text).unwrap(), secret(), "{text}");
        }
        for (text, rule) in [
            (&SECRET_HEX[..62], "at least 32 bytes"),
            (&SECRET_HEX[..63], "odd number"),
            ("not base64 at all!", "hex or base64"),
        ] {
            let error = SigningSecret::parse(text).unwrap_err();
            assert!(error.contains(rule), "{text}: {error}");
            assert!(!error.contains(text), "secret leaked: {error}");
        }
    }

    #[test]
    fn an_unset_secret_disables_signing_and_a_bad_one_is_a_config_error() {
        assert_eq!(SigningConfig::default().secret(), Ok(None));
        let mut errors = Vec::new();
        SigningConfig::default().check(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let short = SigningConfig {
            secret: "abcdef".into(),
        };
        short.check(&mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("signing.secret"), "{errors:?}");
    }

    #[test]
    fn the_secret_and_derived_values_are_never_printed() {
        let config = SigningConfig {
            secret: SECRET_HEX.into(),
        };
        let printed = format!(
            "{config:?} {:?} {:?}",
            config.secret().unwrap(),
            secret().derive("k1")
        );
        let derived = secret().derive("k1");
        for leaked in [
            SECRET_HEX,
            &SECRET_HEX[..16],
            &hex::encode(derived.key)[..16],
            &hex::encode(derived.salt)[..16],
        ] {
            assert!(!printed.contains(leaked), "{printed}");
        }
        assert!(printed.contains("<redacted>"));
        let json = serde_json::to_string(&config).unwrap();
        assert!(!json.contains(&SECRET_HEX[..16]), "{json}");
    }

    #[test]
    fn key_ids_are_sixteen_hex_digits_and_unique() {
        let (a, b) = (new_key_id(), new_key_id());
        assert_ne!(a, b);
        assert!(a.len() == 16 && a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
