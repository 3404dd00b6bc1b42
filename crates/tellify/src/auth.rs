//! Who is calling: bearer tokens, stored as SHA-256 hashes so a stolen database holds no
//! usable token. Tokens are 256-bit random values, so a fast hash is enough (no password
//! stretching is needed for secrets that cannot be guessed).

use rand::RngCore;
use sha2::{Digest, Sha256};

/// The name of the user created on first start.
pub const ADMIN: &str = "admin";

/// What a token may do.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    /// Everything its user may do.
    #[default]
    Api,
    /// Only reading `/metrics` (a Prometheus scraper's token); refused everywhere else.
    Metrics,
}

impl TokenScope {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Api => "api",
            TokenScope::Metrics => "metrics",
        }
    }

    /// The scope as stored; anything unknown grants the least.
    pub fn from_stored(text: &str) -> Self {
        match text {
            "api" => TokenScope::Api,
            _ => TokenScope::Metrics,
        }
    }
}

/// A fresh token: `tfy_` and 64 hex digits.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("tfy_{}", hex::encode(bytes))
}

/// What the store keeps of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 68);
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), a);
    }
}
