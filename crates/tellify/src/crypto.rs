//! Secrets at rest: channel settings such as webhook URLs, routing keys and passwords are
//! stored sealed with the server's secret key (ChaCha20-Poly1305, a fresh random nonce per
//! value), so a copy of the database alone reveals none of them.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

const PREFIX: &str = "sealed:v1:";

/// Seals and opens secrets with the server key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl SecretBox {
    /// Reads the key from `DATA_DIR/secret.key` (64 hex digits).
    pub fn load(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("secret.key");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("Failed to read {}", path.display()))?;
        let bytes = hex::decode(text.trim())
            .map_err(|_| anyhow!("{} is not 64 hex digits", path.display()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| anyhow!("the key must be 32 bytes"))?;
        Ok(Self::from_key(key))
    }

    pub fn from_key(key: [u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(&Key::from(key)),
        }
    }

    pub fn seal(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(&Nonce::from(nonce), plaintext.as_bytes())
            .expect("encrypting into a Vec cannot fail");
        format!("{PREFIX}{}{}", hex::encode(nonce), hex::encode(sealed))
    }

    /// Opens a sealed value. A wrong key or a tampered value is an error, never garbage.
    pub fn open(&self, sealed: &str) -> Result<String> {
        let body = sealed
            .strip_prefix(PREFIX)
            .ok_or_else(|| anyhow!("not a sealed value"))?;
        let bytes = hex::decode(body).map_err(|_| anyhow!("a sealed value is damaged"))?;
        if bytes.len() < 12 + 16 {
            bail!("a sealed value is damaged");
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce
            .try_into()
            .map_err(|_| anyhow!("a sealed value is damaged"))?;
        let plain = self
            .cipher
            .decrypt(&Nonce::from(nonce), ciphertext)
            .map_err(|_| anyhow!("a sealed value does not open with this server's key"))?;
        String::from_utf8(plain).map_err(|_| anyhow!("a sealed value is damaged"))
    }

    pub fn is_sealed(value: &str) -> bool {
        value.starts_with(PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_refuses_tampering() {
        let a = SecretBox::from_key([7u8; 32]);
        let sealed = a.seal("https://hooks.slack.com/services/T000/B000/XXXX");
        assert!(SecretBox::is_sealed(&sealed));
        assert!(!sealed.contains("hooks.slack.com"));
        assert_ne!(
            sealed,
            a.seal("https://hooks.slack.com/services/T000/B000/XXXX"),
            "a fresh nonce each time"
        );
        assert_eq!(
            a.open(&sealed).expect("opens"),
            "https://hooks.slack.com/services/T000/B000/XXXX"
        );
        let b = SecretBox::from_key([8u8; 32]);
        assert!(b.open(&sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('0') { '1' } else { '0' });
        assert!(a.open(&tampered).is_err());
    }
}
