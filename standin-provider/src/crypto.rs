//! Random tokens, PKCE and constant-time comparison.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Prefix of authorization codes.
pub const CODE_PREFIX: &str = "sco_";
/// Prefix of access tokens.
pub const ACCESS_PREFIX: &str = "sat_";
/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "srt_";
/// Prefix of the bot token in Slack-style answers.
pub const BOT_PREFIX: &str = "sbt_";

/// `prefix` followed by 256 random bits, base64url without padding.
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The S256 code challenge of a verifier: BASE64URL-NOPAD(SHA256(ASCII(verifier))).
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~"`.
/// Code challenges use the same shape.
pub fn is_pkce_string(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Does `verifier` hash to `challenge`? Compared in constant time.
pub fn verify_pkce(verifier: &str, challenge: &str) -> bool {
    ct_eq(&s256_challenge(verifier), challenge)
}

/// Constant-time string equality (the length may leak, the contents do not).
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(data)
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert_eq!(s256_challenge(verifier), challenge);
        assert!(verify_pkce(verifier, challenge));
        assert!(!verify_pkce(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXX",
            challenge
        ));
        assert!(is_pkce_string(verifier));
        assert!(is_pkce_string(challenge));
    }

    #[test]
    fn pkce_string_shape() {
        assert!(!is_pkce_string(&"a".repeat(42)));
        assert!(is_pkce_string(&"a".repeat(43)));
        assert!(is_pkce_string(&"~._-".repeat(32)));
        assert!(!is_pkce_string(&"a".repeat(129)));
        assert!(!is_pkce_string(&format!("{}+", "a".repeat(43))));
        assert!(!is_pkce_string(&format!("{}é", "a".repeat(43))));
    }

    #[test]
    fn random_tokens() {
        let a = random_token(ACCESS_PREFIX);
        let b = random_token(ACCESS_PREFIX);
        assert!(a.starts_with("sat_"));
        assert_eq!(a.len(), 4 + 43);
        assert_ne!(a, b);
    }

    #[test]
    fn hex_digest() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(ct_eq("abc", "abc"));
        assert!(!ct_eq("abc", "abd"));
        assert!(!ct_eq("abc", "abcd"));
    }
}
