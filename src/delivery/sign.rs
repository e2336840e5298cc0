//! Standard Webhooks signing: `webhook-signature` is `v1,<base64 HMAC-SHA256>` of
//! `{webhook-id}.{webhook-timestamp}.{body}` under each configured secret, space-separated
//! during a rotation. A secret is `whsec_` + base64 of 24–64 random bytes.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;
use ring::hmac;
use std::path::Path;

/// Why a route's secret file cannot be used; the message says what a valid one looks like.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line} is not a Standard Webhooks secret (whsec_ + base64 of 24 to 64 random bytes)")]
    Malformed { path: String, line: usize },
    #[error("{path}: holds no secret (one line; a second during a rotation)")]
    Empty { path: String },
    #[error("{path}: at most two secrets (the new one first, then the previous)")]
    TooMany { path: String },
}

/// A route's signing keys: the current secret, then the previous one during a rotation.
pub struct Secrets {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} keys)", self.keys.len())
    }
}

/// The key bytes of one `whsec_…` secret (padded or not); `None` if it is not one.
fn key_bytes(secret: &str) -> Option<Vec<u8>> {
    let b64 = secret.strip_prefix("whsec_")?;
    let bytes = STANDARD
        .decode(b64)
        .or_else(|_| STANDARD_NO_PAD.decode(b64))
        .ok()?;
    (24..=64).contains(&bytes.len()).then_some(bytes)
}

impl Secrets {
    /// Parses a secret file's text: one secret a line, blank lines ignored.
    pub fn parse(text: &str, path: &str) -> Result<Secrets, SecretError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bytes = key_bytes(line).ok_or(SecretError::Malformed {
                path: path.to_string(),
                line: i + 1,
            })?;
            keys.push(hmac::Key::new(hmac::HMAC_SHA256, &bytes));
        }
        match keys.len() {
            0 => Err(SecretError::Empty {
                path: path.to_string(),
            }),
            1 | 2 => Ok(Secrets { keys }),
            _ => Err(SecretError::TooMany {
                path: path.to_string(),
            }),
        }
    }

    /// Reads and parses a secret file.
    pub fn load(path: &Path) -> Result<Secrets, SecretError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
            path: shown.clone(),
            source,
        })?;
        Secrets::parse(&text, &shown)
    }

    /// The `webhook-signature` value of one attempt.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let mut out = String::with_capacity(self.keys.len() * 48);
        for key in &self.keys {
            let mut ctx = hmac::Context::with_key(key);
            ctx.update(id.as_bytes());
            ctx.update(b".");
            ctx.update(ts.as_bytes());
            ctx.update(b".");
            ctx.update(body);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            STANDARD.encode_string(ctx.sign().as_ref(), &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification (its reference libraries' test).
    #[test]
    fn the_specifications_example() {
        let s = Secrets::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n", "f").unwrap();
        assert_eq!(
            s.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn two_secrets_sign_twice_new_first() {
        let new = format!("whsec_{}", STANDARD.encode([7u8; 32]));
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let both = Secrets::parse(&format!("{new}\n{old}\n"), "f").unwrap();
        let sig = both.sign("msg_1", 1, b"{}");
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[0],
            Secrets::parse(&new, "f").unwrap().sign("msg_1", 1, b"{}")
        );
        assert_eq!(
            parts[1],
            Secrets::parse(old, "f").unwrap().sign("msg_1", 1, b"{}")
        );
    }

    #[test]
    fn bad_secrets_are_refused_with_the_line() {
        let e = Secrets::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\nnope\n", "s.key")
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.key: line 2"), "{e}");
        assert!(Secrets::parse("\n\n", "f").is_err());
        let short = format!("whsec_{}", STANDARD.encode([1u8; 16]));
        assert!(
            Secrets::parse(&short, "f").is_err(),
            "16 bytes is too short"
        );
        let unpadded = format!("whsec_{}", STANDARD_NO_PAD.encode([1u8; 32]));
        assert!(Secrets::parse(&unpadded, "f").is_ok());
        let three = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n".repeat(3);
        assert!(matches!(
            Secrets::parse(&three, "f"),
            Err(SecretError::TooMany { .. })
        ));
    }
}
