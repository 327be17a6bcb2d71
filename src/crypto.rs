//! Secrets at rest and on the wire: app credentials (AES-256-GCM), API-key hashes, and the HR
//! webhook signature (HMAC-SHA256).
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("ROSTER_SECRET_KEY must be base64 of exactly 32 bytes")]
    BadKey,
    #[error("the stored credential was encrypted with key `{0}`, which is not configured")]
    UnknownKeyId(String),
    #[error("the stored credential cannot be decrypted (corrupt, or a different key)")]
    Decrypt,
    #[error("could not {action} the key file {path}: {source}")]
    KeyFile {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// The AES-256-GCM key that encrypts app credentials. Its id (a short fingerprint) is stored
/// with each ciphertext, so that a rotation can tell which key a row needs. During a rotation
/// the previous keys are kept to open (never to seal) what they encrypted.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
    key_id: String,
    previous: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBox")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SecretBox {
    pub fn from_base64(raw: &SecretString) -> Result<Self, CryptoError> {
        let bytes = STANDARD
            .decode(raw.expose_secret().trim())
            .map_err(|_| CryptoError::BadKey)?;
        Self::from_bytes(&bytes)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        let cipher = Aes256Gcm::new_from_slice(bytes).map_err(|_| CryptoError::BadKey)?;
        let key_id = hex::encode(&Sha256::digest(bytes)[..4]);
        Ok(Self {
            cipher,
            key_id,
            previous: Vec::new(),
        })
    }

    /// Also opens what `old` (base64) encrypted: set during a key rotation
    /// (`ROSTER_SECRET_KEY_PREVIOUS`), until `roster rotate-key` has re-encrypted everything.
    pub fn with_previous(mut self, old: &SecretString) -> Result<Self, CryptoError> {
        let old = Self::from_base64(old)?;
        if old.key_id != self.key_id {
            self.previous.push((old.key_id, old.cipher));
        }
        Ok(self)
    }

    /// Whether `key_id` is the current key (rows sealed with another need re-encrypting).
    #[must_use]
    pub fn is_current(&self, key_id: &str) -> bool {
        key_id == self.key_id
    }

    /// Whether this box opens what `key_id` sealed (the current key or a previous one).
    #[must_use]
    pub fn opens(&self, key_id: &str) -> bool {
        key_id == self.key_id || self.previous.iter().any(|(id, _)| id == key_id)
    }

    /// A fresh random key, base64-encoded (for the SQLite key file).
    #[must_use]
    pub fn generate_base64() -> String {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        STANDARD.encode(key)
    }

    #[must_use]
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Encrypts `plaintext`, bound to `aad` (the app id) so that a ciphertext copied to another
    /// row does not decrypt. Output: base64(nonce ‖ ciphertext).
    pub fn seal(&self, plaintext: &[u8], aad: &str) -> Result<String, CryptoError> {
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(STANDARD.encode(out))
    }

    pub fn open(&self, sealed: &str, key_id: &str, aad: &str) -> Result<Vec<u8>, CryptoError> {
        let cipher = if key_id == self.key_id {
            &self.cipher
        } else {
            self.previous
                .iter()
                .find(|(id, _)| id == key_id)
                .map(|(_, c)| c)
                .ok_or_else(|| CryptoError::UnknownKeyId(key_id.to_owned()))?
        };
        let raw = STANDARD.decode(sealed).map_err(|_| CryptoError::Decrypt)?;
        if raw.len() < 12 + 16 {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = raw.split_at(12);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)
    }
}

/// Reads the credential key file of a SQLite database; `None` when there is none. Whether a
/// missing file may be created is the caller's decision (not when credentials are sealed).
pub fn load_key_file(path: &std::path::Path) -> Result<Option<SecretBox>, CryptoError> {
    match std::fs::read_to_string(path) {
        Ok(contents) => Ok(Some(SecretBox::from_base64(&SecretString::from(contents))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CryptoError::KeyFile {
            action: "read",
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Creates a new key file (mode 0600), failing if one exists.
pub fn create_key_file(path: &std::path::Path) -> Result<SecretBox, CryptoError> {
    let encoded = SecretBox::generate_base64();
    write_private_file(path, &encoded).map_err(|source| CryptoError::KeyFile {
        action: "create",
        path: path.display().to_string(),
        source,
    })?;
    SecretBox::from_base64(&SecretString::from(encoded))
}

fn write_private_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// API keys are 32 random bytes, so a single SHA-256 is enough to make a stolen table useless
/// (a slow password hash protects low-entropy secrets; these have 256 bits).
#[must_use]
pub fn hash_api_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A new random API-key secret (URL-safe, 43 characters).
#[must_use]
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the X-Roster-Signature header is missing")]
    Missing,
    #[error("the X-Roster-Signature header is not `t=<unix seconds>,v1=<hex>`")]
    Malformed,
    #[error("the signature timestamp is outside the ±300 s window")]
    Expired,
    #[error("the signature does not match the body")]
    Mismatch,
}

pub const SIGNATURE_WINDOW_SECS: i64 = 300;

/// Checks `X-Roster-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.<raw body>">`.
pub fn verify_webhook_signature(
    secret: &SecretString,
    header: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), SignatureError> {
    let mut check = SignatureCheck::start(secret, header, now_unix)?;
    check.update(body);
    check.finish()
}

/// The webhook signature check over a body read in pieces (an HR snapshot is streamed): the
/// header and its time window are checked first, the MAC as the bytes arrive, the match last.
pub struct SignatureCheck {
    mac: Hmac<Sha256>,
    candidates: Vec<String>,
}

impl SignatureCheck {
    pub fn start(
        secret: &SecretString,
        header: Option<&str>,
        now_unix: i64,
    ) -> Result<Self, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let mut t = None;
        let mut v1 = Vec::new();
        for part in header.split(',') {
            match part.trim().split_once('=') {
                Some(("t", value)) => t = value.parse::<i64>().ok(),
                Some(("v1", value)) => v1.push(value.to_owned()),
                _ => {}
            }
        }
        let t = t.ok_or(SignatureError::Malformed)?;
        if v1.is_empty() {
            return Err(SignatureError::Malformed);
        }
        // `abs_diff`: `now - t` overflows i64 for `t` near `i64::MIN` (a hostile header).
        if now_unix.abs_diff(t) > SIGNATURE_WINDOW_SECS.unsigned_abs() {
            return Err(SignatureError::Expired);
        }
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose_secret().as_bytes())
            .map_err(|_| SignatureError::Malformed)?;
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        Ok(Self {
            mac,
            candidates: v1,
        })
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.mac.update(bytes);
    }

    pub fn finish(self) -> Result<(), SignatureError> {
        let expected = hex::encode(self.mac.finalize().into_bytes());
        if self
            .candidates
            .iter()
            .any(|candidate| constant_time_eq(candidate.as_bytes(), expected.as_bytes()))
        {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// The hex HMAC-SHA256 of `"{t}.{body}"`: what an HR system puts after `v1=`.
#[must_use]
pub fn sign_webhook(secret: &SecretString, t: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose_secret().as_bytes())
    else {
        return String::new();
    };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretBox {
        SecretBox::from_base64(&SecretString::from(SecretBox::generate_base64())).unwrap()
    }

    #[test]
    fn sealed_secrets_open_only_with_the_same_key_and_app() {
        let k = key();
        let sealed = k.seal(b"token-123", "app-1").unwrap();
        assert!(!sealed.contains("token-123"));
        assert_eq!(k.open(&sealed, k.key_id(), "app-1").unwrap(), b"token-123");
        assert!(matches!(
            k.open(&sealed, k.key_id(), "app-2"),
            Err(CryptoError::Decrypt)
        ));
        let other = key();
        assert!(other.open(&sealed, other.key_id(), "app-1").is_err());
        assert!(matches!(
            k.open(&sealed, "deadbeef", "app-1"),
            Err(CryptoError::UnknownKeyId(_))
        ));
    }

    #[test]
    fn a_rotation_opens_old_rows_and_seals_with_the_new_key() {
        let old_raw = SecretString::from(SecretBox::generate_base64());
        let old = SecretBox::from_base64(&old_raw).unwrap();
        let sealed = old.seal(b"token", "app-1").unwrap();
        let new =
            SecretBox::from_base64(&SecretString::from(SecretBox::generate_base64())).unwrap();
        assert!(matches!(
            new.open(&sealed, old.key_id(), "app-1"),
            Err(CryptoError::UnknownKeyId(_))
        ));
        let rotating = new.clone().with_previous(&old_raw).unwrap();
        assert_eq!(
            rotating.open(&sealed, old.key_id(), "app-1").unwrap(),
            b"token"
        );
        assert!(!rotating.is_current(old.key_id()));
        let resealed = rotating.seal(b"token", "app-1").unwrap();
        assert_eq!(
            new.open(&resealed, new.key_id(), "app-1").unwrap(),
            b"token"
        );
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        for bad in ["", "not base64!", "c2hvcnQ="] {
            assert!(SecretBox::from_base64(&SecretString::from(bad)).is_err());
        }
    }

    #[test]
    fn webhook_signatures_are_checked_with_a_window() {
        let secret = SecretString::from("whsec");
        let body = br#"{"event_id":"e1"}"#;
        let sig = sign_webhook(&secret, 1_000, body);
        let header = format!("t=1000,v1={sig}");
        assert_eq!(
            verify_webhook_signature(&secret, Some(&header), body, 1_100),
            Ok(())
        );
        assert_eq!(
            verify_webhook_signature(&secret, Some(&header), body, 1_301),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            verify_webhook_signature(&secret, Some(&header), b"{}", 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_webhook_signature(&secret, None, body, 1_000),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_webhook_signature(&secret, Some("v1=abc"), body, 1_000),
            Err(SignatureError::Malformed)
        );
        // Timestamps at the ends of i64 are expired, not an arithmetic overflow.
        for t in [i64::MIN, i64::MIN + 1, i64::MAX] {
            let header = format!("t={t},v1={sig}");
            assert_eq!(
                verify_webhook_signature(&secret, Some(&header), body, 1_784_000_000),
                Err(SignatureError::Expired),
                "t={t}"
            );
        }
    }
}
