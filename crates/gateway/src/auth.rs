//! API keys on routes: `Authorization: Bearer KEY` checked against SHA-256 digests of the
//! accepted keys. Only digests are held, so neither the config nor memory dumps of the table
//! give a key away; comparing digests in constant time keeps response timing from telling an
//! attacker how much of a guess was right.

use hyper::header::{HeaderMap, AUTHORIZATION};
use sha2::{Digest, Sha256};

/// The SHA-256 digest of `key`, as routes hold accepted keys.
pub fn key_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Why a request was not let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A bearer token that is none of the route's keys.
    Wrong,
}

/// Whether the request's bearer token is one of `accepted` (digests). Every digest is
/// compared, in constant time, whatever matched first.
pub(crate) fn check(headers: &HeaderMap, accepted: &[[u8; 32]]) -> Result<(), Refusal> {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
        .ok_or(Refusal::Missing)?;
    let presented = key_digest(token);
    let mut matched = 0u8;
    for digest in accepted {
        matched |= constant_time_eq(&presented, digest);
    }
    if matched == 1 {
        Ok(())
    } else {
        Err(Refusal::Wrong)
    }
}

/// `Bearer TOKEN` (the scheme is case-insensitive, RFC 9110 11.1) → `TOKEN`.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 1 when equal, else 0, looking at every byte either way.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> u8 {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Without a branch on the data: 0 → 1, anything else → 0.
    (((u16::from(difference)).wrapping_sub(1) >> 8) & 1) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn digest_is_sha256() {
        let hex: String = key_digest("abc")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn any_accepted_key_passes_and_others_do_not() {
        let accepted = [key_digest("one"), key_digest("two")];
        assert_eq!(check(&headers(Some("Bearer one")), &accepted), Ok(()));
        assert_eq!(check(&headers(Some("bearer  two ")), &accepted), Ok(()));
        assert_eq!(
            check(&headers(Some("Bearer three")), &accepted),
            Err(Refusal::Wrong)
        );
        assert_eq!(
            check(&headers(Some("Bearer one")), &[]),
            Err(Refusal::Wrong)
        );
    }

    #[test]
    fn anything_but_a_bearer_token_is_missing() {
        let accepted = [key_digest("one")];
        for value in [
            None,
            Some("Basic b25lOg=="),
            Some("Bearer"),
            Some("Bearer   "),
            Some("one"),
        ] {
            assert_eq!(
                check(&headers(value), &accepted),
                Err(Refusal::Missing),
                "{value:?}"
            );
        }
    }

    #[test]
    fn constant_time_eq_says_equal_only_when_equal() {
        let a = [7u8; 32];
        let mut b = a;
        assert_eq!(constant_time_eq(&a, &b), 1);
        b[31] ^= 0x80;
        assert_eq!(constant_time_eq(&a, &b), 0);
        assert_eq!(constant_time_eq(&[0; 32], &[255; 32]), 0);
    }
}
