//! The digest of a gateway API key. Only digests are ever written down (in `flowers.toml`, the
//! store, the API): a leaked config file then gives nobody a key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The SHA-256 digest of an API key, written `sha256:` followed by 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ApiKeyDigest(pub [u8; 32]);

const PREFIX: &str = "sha256:";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expected \"sha256:\" followed by 64 hex digits (the SHA-256 of the key, as `flowers gateway new-key` prints it), got {0:?}")]
pub struct ApiKeyDigestError(String);

impl FromStr for ApiKeyDigest {
    type Err = ApiKeyDigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = || ApiKeyDigestError(text.to_string());
        let hex = text
            .trim()
            .strip_prefix(PREFIX)
            .filter(|hex| hex.len() == 64)
            .ok_or_else(refuse)?;
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| refuse())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| refuse())?;
        }
        Ok(ApiKeyDigest(digest))
    }
}

impl fmt::Display for ApiKeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ApiKeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl TryFrom<String> for ApiKeyDigest {
    type Error = ApiKeyDigestError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<ApiKeyDigest> for String {
    fn from(digest: ApiKeyDigest) -> String {
        digest.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text_in_either_case() {
        let text = format!("sha256:{}", "0aF1".repeat(16));
        let digest: ApiKeyDigest = text.parse().unwrap();
        assert_eq!(digest.0[0], 0x0a);
        assert_eq!(digest.0[1], 0xf1);
        assert_eq!(digest.to_string(), text.to_lowercase());
        let json = serde_json::to_string(&digest).unwrap();
        assert_eq!(serde_json::from_str::<ApiKeyDigest>(&json).unwrap(), digest);
    }

    #[test]
    fn refuses_anything_but_a_prefixed_sha256() {
        for bad in [
            "",
            "sha256:",
            &"a".repeat(64),
            &format!("sha1:{}", "a".repeat(64)),
            &format!("sha256:{}", "a".repeat(63)),
            &format!("sha256:{}", "a".repeat(65)),
            &format!("sha256:{}", "g".repeat(64)),
            &format!("sha256:{}é", "a".repeat(62)),
        ] {
            assert!(bad.parse::<ApiKeyDigest>().is_err(), "{bad:?} accepted");
        }
    }
}
