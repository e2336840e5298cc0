//! Auth Tokens at rest: sealed with AES-256-GCM under the service's master key, so the
//! state file never holds a token in the clear.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Environment variable that, when set, overrides `control.master_key_file`.
pub const MASTER_KEY_ENV: &str = "SMS_INGRESS_MASTER_KEY";

/// The key `take_from_env` moved out of the environment (`None`: there was none).
static TAKEN_FROM_ENV: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Why a master key or a sealed secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key is not base64 of 32 bytes (generate one with `sms-ingress keygen`)")]
    BadKey,
    #[error("cannot read master key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("no master key: set control.master_key_file or {MASTER_KEY_ENV}")]
    NoKey,
    #[error(
        "master key file {path} may be read by other users (mode {mode:03o}): chmod 600 {path}"
    )]
    KeyFileMode { path: String, mode: u32 },
    #[error("sealed secret is malformed")]
    Malformed,
    #[error("sealed secret does not open under this master key (wrong key or tampered state)")]
    Open,
    #[error("system random generator failed")]
    Random,
}

/// The key that seals every Auth Token; loaded once at start, never printed.
pub struct MasterKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// A token as it is stored: base64 nonce and ciphertext (with the GCM tag).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub nonce: String,
    pub ciphertext: String,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealed(<ciphertext>)")
    }
}

/// A decrypted secret that hides itself from `Debug` and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret so it cannot be printed by accident.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself, for the few places that must use it (HMAC keys, Basic auth).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl MasterKey {
    /// Builds a key from its base64 text (what `keygen` prints).
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let raw = B64.decode(text.trim()).map_err(|_| CryptoError::BadKey)?;
        if raw.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        let unbound = UnboundKey::new(&AES_256_GCM, &raw).map_err(|_| CryptoError::BadKey)?;
        Ok(MasterKey {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    /// Loads the key from the environment variable, else from the configured file.
    pub fn load(file: Option<&Path>) -> Result<Self, CryptoError> {
        let from_env = TAKEN_FROM_ENV
            .get()
            .cloned()
            .flatten()
            .or_else(|| std::env::var(MASTER_KEY_ENV).ok());
        if let Some(text) = from_env {
            return Self::from_base64(&text);
        }
        let path = file.ok_or(CryptoError::NoKey)?;
        let key_file_err = |source| CryptoError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(key_file_err)?.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CryptoError::KeyFileMode {
                path: path.display().to_string(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(key_file_err)?;
        Self::from_base64(&text)
    }

    /// Moves `SMS_INGRESS_MASTER_KEY` out of the environment into this process's memory,
    /// so no child process and no `/proc/<pid>/environ` reader sees it. Call it before
    /// any other thread starts (changing the environment is not thread-safe).
    pub fn take_from_env() {
        let value = std::env::var(MASTER_KEY_ENV).ok();
        if value.is_some() {
            // `/proc/<pid>/environ` shows the block the process started with, which
            // unsetting does not touch: overwrite the value there first.
            let name = std::ffi::CString::new(MASTER_KEY_ENV).expect("no NUL in the name");
            // SAFETY: no other thread runs yet; getenv points into the environment block,
            // whose value bytes (up to its NUL) are this process's writable memory.
            unsafe {
                let p = libc::getenv(name.as_ptr());
                if !p.is_null() {
                    std::ptr::write_bytes(p, 0, libc::strlen(p));
                }
            }
            std::env::remove_var(MASTER_KEY_ENV);
        }
        let _ = TAKEN_FROM_ENV.set(value);
    }

    /// Fresh random key material as base64, for `sms-ingress keygen`.
    pub fn generate_base64() -> Result<String, CryptoError> {
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| CryptoError::Random)?;
        Ok(B64.encode(raw))
    }

    /// Encrypts a secret with a fresh random nonce; `aad` binds it to its owner (the integration id).
    pub fn seal(&self, secret: &Secret, aad: &str) -> Result<Sealed, CryptoError> {
        let mut nonce_bytes = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce_bytes)
            .map_err(|_| CryptoError::Random)?;
        let mut buf = secret.expose().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad.as_bytes()),
                &mut buf,
            )
            .map_err(|_| CryptoError::Random)?;
        Ok(Sealed {
            nonce: B64.encode(nonce_bytes),
            ciphertext: B64.encode(buf),
        })
    }

    /// Decrypts a sealed secret; fails if the key, the owner or the bytes differ.
    pub fn open(&self, sealed: &Sealed, aad: &str) -> Result<Secret, CryptoError> {
        let nonce_raw = B64
            .decode(&sealed.nonce)
            .map_err(|_| CryptoError::Malformed)?;
        let nonce =
            Nonce::try_assume_unique_for_key(&nonce_raw).map_err(|_| CryptoError::Malformed)?;
        let mut buf = B64
            .decode(&sealed.ciphertext)
            .map_err(|_| CryptoError::Malformed)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| CryptoError::Open)?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| CryptoError::Malformed)?;
        Ok(Secret(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MasterKey {
        MasterKey::from_base64(&MasterKey::generate_base64().unwrap()).unwrap()
    }

    #[test]
    fn seal_open_round_trip() {
        let k = key();
        let s = k.seal(&Secret::new("tok-123"), "int-1").unwrap();
        assert!(!s.ciphertext.contains("tok-123"));
        assert_eq!(k.open(&s, "int-1").unwrap().expose(), "tok-123");
    }

    #[test]
    fn wrong_owner_or_key_fails() {
        let k = key();
        let s = k.seal(&Secret::new("tok"), "int-1").unwrap();
        assert!(matches!(k.open(&s, "int-2"), Err(CryptoError::Open)));
        assert!(matches!(key().open(&s, "int-1"), Err(CryptoError::Open)));
    }

    #[test]
    fn bad_keys_rejected() {
        assert!(MasterKey::from_base64("not base64!").is_err());
        assert!(MasterKey::from_base64(&B64.encode([0u8; 16])).is_err());
    }

    #[test]
    fn debug_never_shows_secret() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
