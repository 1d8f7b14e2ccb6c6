//! API keys: generation and hashing.
//!
//! Keys look like the public horde's (`secrets.token_urlsafe(16)`: 22 URL-safe characters), which
//! horde-sdk insists on. Only a salted SHA-256 of a key is ever stored.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Length of a user API key, as the public horde issues them.
pub const API_KEY_LEN: usize = 22;

/// A fresh random API key: 16 bytes of `rng` (a cryptographic one: the server passes
/// `rand::rng()`), URL-safe base64 without padding (22 characters).
pub fn generate_api_key(rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a key: hex SHA-256 of salt + key, as the public horde hashes.
pub fn hash_api_key(salt: &str, key: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    hasher.update(key.as_bytes());
    hex::encode(hasher.finalize())
}

/// A random token (salts, secrets) of 24 bytes of `rng`, a cryptographic one.
pub fn generate_token(rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; 24];
    rng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_22_url_safe_characters_and_differ() {
        let a = generate_api_key(&mut rand::rng());
        let b = generate_api_key(&mut rand::rng());
        assert_eq!(a.len(), API_KEY_LEN);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(a, b);
    }

    #[test]
    fn hashing_depends_on_salt_and_key() {
        let h = hash_api_key("salt", "key");
        assert_eq!(h.len(), 64);
        assert_ne!(h, hash_api_key("other", "key"));
        assert_ne!(h, hash_api_key("salt", "kex"));
        assert_eq!(h, hash_api_key("salt", "key"));
    }
}

/// Signs an upload URL: HMAC-SHA256 over the job id and expiry, hex encoded.
pub fn sign_upload(secret: &str, job_id: &str, expires: i64) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length works");
    mac.update(job_id.as_bytes());
    mac.update(b"|");
    mac.update(expires.to_string().as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` is the one [`sign_upload`] makes, compared in constant time.
pub fn verify_upload(secret: &str, job_id: &str, expires: i64, signature: &str) -> bool {
    use hmac::{Hmac, Mac};
    let Ok(raw) = hex::decode(signature) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length works");
    mac.update(job_id.as_bytes());
    mac.update(b"|");
    mac.update(expires.to_string().as_bytes());
    mac.verify_slice(&raw).is_ok()
}

#[cfg(test)]
mod upload_tests {
    use super::*;

    #[test]
    fn upload_signatures_bind_job_and_expiry() {
        let sig = sign_upload("s", "job", 100);
        assert!(verify_upload("s", "job", 100, &sig));
        assert!(!verify_upload("s", "job", 101, &sig));
        assert!(!verify_upload("s", "job2", 100, &sig));
        assert!(!verify_upload("t", "job", 100, &sig));
        assert!(!verify_upload("s", "job", 100, "zz"));
    }
}
