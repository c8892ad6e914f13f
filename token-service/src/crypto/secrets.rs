//! Secret newtypes (redacted `Debug`, zeroized on drop), random tokens and
//! digests compared in constant time.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore as _;
use secrecy::{ExposeSecret as _, SecretBox, SecretString};
use sha2::{Digest as _, Sha256};
use std::fmt;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

/// Declares a string secret: no `Display`, a redacted `Debug`, and the value
/// only through `expose()`.
macro_rules! secret_string {
    ($($(#[$meta:meta])* $name:ident;)+) => {$(
        $(#[$meta])*
        #[derive(Clone)]
        pub struct $name(SecretString);

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self(SecretString::from(value.into()))
            }

            /// The secret itself; keep the borrow short and never log it.
            pub fn expose(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<redacted>)"))
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                <String as serde::Deserialize>::deserialize(d).map(Self::new)
            }
        }
    )+};
}

secret_string! {
    /// Proves that a caller is an app (`ask_…`); only its SHA-256 is stored.
    AppKey;
    /// Bearer token of the admin API.
    AdminToken;
    /// Bearer token the Envoy filter sends to the filter listener.
    FilterToken;
    /// OAuth client secret of a provider configuration.
    ClientSecret;
    /// A user's access token at a provider.
    AccessToken;
    /// A user's refresh token at a provider.
    RefreshToken;
    /// The OAuth `state` parameter.
    OAuthState;
    /// The token in a connect URL.
    SessionToken;
    /// The PKCE code verifier.
    PkceVerifier;
    /// The browser-binding nonce of a connect flow (cookie value).
    BrowserNonce;
    /// The authorization code from the callback.
    AuthorizationCode;
    /// The connect page's CSRF token (hidden form field and cookie).
    CsrfToken;
    /// The one-time result the browser carries back to the app's
    /// `return_to`; the app's backend confirms it.
    ConnectResultToken;
}

/// The 32-byte vault key. Only its base64 form ever leaves memory (the key
/// file written in local mode).
pub struct MasterKey(SecretBox<[u8; 32]>);

#[derive(Debug, thiserror::Error)]
#[error("a master key must be base64 of exactly 32 bytes")]
pub struct BadMasterKey;

impl MasterKey {
    pub fn generate() -> Self {
        let mut key = Box::new([0u8; 32]);
        OsRng.fill_bytes(&mut key[..]);
        Self(SecretBox::new(key))
    }

    /// Parses base64 (standard or URL-safe, padding optional), surrounding
    /// whitespace ignored.
    pub fn from_base64(text: &str) -> Result<Self, BadMasterKey> {
        let text = text.trim();
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text)
                .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
                .map_err(|_| BadMasterKey)?,
        );
        if decoded.len() != 32 {
            return Err(BadMasterKey);
        }
        let mut key = Box::new([0u8; 32]);
        key.copy_from_slice(&decoded);
        Ok(Self(SecretBox::new(key)))
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.expose_secret()))
    }

    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// The vault's master keys by version (1, 2, …). The highest version is the
/// newest; which one seals new blobs is the vault's active version (kept in
/// the database, see `keys.rs`).
#[derive(Default)]
pub struct KeyRing(std::collections::BTreeMap<u32, MasterKey>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadKeyRing {
    #[error("key ring entry {0}: expected VERSION:BASE64 with a version from 1 and a base64 key of 32 bytes")]
    BadEntry(usize),
    #[error("key version {0} appears twice")]
    Duplicate(u32),
    #[error("the key ring is empty")]
    Empty,
}

impl KeyRing {
    /// One key, version 1 (`AUTHSTAMP_MASTER_KEY`, a bare key file).
    pub fn single(key: MasterKey) -> Self {
        let mut ring = Self::default();
        ring.0.insert(1, key);
        ring
    }

    /// Parses `VERSION:BASE64` entries separated by commas, whitespace or
    /// newlines (`#` starts a comment up to the end of its line). A text that
    /// is one bare base64 key is version 1.
    pub fn parse(text: &str) -> Result<Self, BadKeyRing> {
        let entries: Vec<&str> = text
            .lines()
            .map(|line| line.split('#').next().unwrap_or_default())
            .flat_map(|line| line.split(|c: char| c == ',' || c.is_whitespace()))
            .filter(|entry| !entry.is_empty())
            .collect();
        if let [only] = entries.as_slice() {
            if !only.contains(':') {
                return MasterKey::from_base64(only)
                    .map(Self::single)
                    .map_err(|_| BadKeyRing::BadEntry(1));
            }
        }
        let mut ring = Self::default();
        for (index, entry) in entries.iter().enumerate() {
            let bad = || BadKeyRing::BadEntry(index + 1);
            let (version, key) = entry.split_once(':').ok_or_else(bad)?;
            let version: u32 = version.trim().parse().map_err(|_| bad())?;
            if version == 0 {
                return Err(bad());
            }
            let key = MasterKey::from_base64(key).map_err(|_| bad())?;
            if ring.0.insert(version, key).is_some() {
                return Err(BadKeyRing::Duplicate(version));
            }
        }
        if ring.0.is_empty() {
            return Err(BadKeyRing::Empty);
        }
        Ok(ring)
    }

    /// `VERSION:BASE64` lines, for a key file.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::new());
        for (version, key) in &self.0 {
            out.push_str(&format!("{version}:{}\n", key.to_base64().as_str()));
        }
        out
    }

    pub fn insert(&mut self, version: u32, key: MasterKey) -> bool {
        self.0.insert(version, key).is_none()
    }

    pub fn get(&self, version: u32) -> Option<&MasterKey> {
        self.0.get(&version)
    }

    pub fn versions(&self) -> Vec<u32> {
        self.0.keys().copied().collect()
    }

    pub fn newest(&self) -> Option<u32> {
        self.0.keys().next_back().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &MasterKey)> {
        self.0.iter().map(|(v, k)| (*v, k))
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("versions", &self.versions())
            .finish_non_exhaustive()
    }
}

pub type Digest = [u8; 32];

pub fn sha256(data: &[u8]) -> Digest {
    Sha256::digest(data).into()
}

/// Constant-time equality of two digests (different lengths are unequal).
pub fn digest_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

/// `N` random bytes as unpadded base64url (32 bytes give 43 characters).
pub fn random_token<const N: usize>() -> Zeroizing<String> {
    let bytes = Zeroizing::new(random_bytes::<N>());
    Zeroizing::new(URL_SAFE_NO_PAD.encode(&bytes[..]))
}

/// Lowercase hex, for identifiers.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

impl AppKey {
    pub fn generate() -> Self {
        Self::new(format!("ask_{}", random_token::<32>().as_str()))
    }
}

impl AdminToken {
    pub fn generate() -> Self {
        Self::new(random_token::<32>().as_str())
    }
}

impl OAuthState {
    pub fn generate() -> Self {
        Self::new(random_token::<32>().as_str())
    }
}

impl SessionToken {
    pub fn generate() -> Self {
        Self::new(random_token::<32>().as_str())
    }
}

impl BrowserNonce {
    pub fn generate() -> Self {
        Self::new(random_token::<32>().as_str())
    }
}

impl CsrfToken {
    pub fn generate() -> Self {
        Self::new(random_token::<32>().as_str())
    }
}

impl ConnectResultToken {
    pub fn generate() -> Self {
        Self::new(random_token::<32>().as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_every_secret_type_is_redacted() {
        let secret = "very-secret-value-123";
        let debugs = [
            format!("{:?}", AppKey::new(secret)),
            format!("{:?}", AdminToken::new(secret)),
            format!("{:?}", FilterToken::new(secret)),
            format!("{:?}", ClientSecret::new(secret)),
            format!("{:?}", AccessToken::new(secret)),
            format!("{:?}", RefreshToken::new(secret)),
            format!("{:?}", OAuthState::new(secret)),
            format!("{:?}", SessionToken::new(secret)),
            format!("{:?}", PkceVerifier::new(secret)),
            format!("{:?}", BrowserNonce::new(secret)),
            format!("{:?}", AuthorizationCode::new(secret)),
            format!("{:?}", CsrfToken::new(secret)),
            format!("{:?}", ConnectResultToken::new(secret)),
        ];
        for debug in debugs {
            assert!(!debug.contains(secret), "{debug}");
            assert!(debug.contains("redacted"), "{debug}");
        }
        let key = MasterKey::generate();
        let debug = format!("{key:?}");
        assert!(!debug.contains(key.to_base64().as_str()));
        assert_eq!(debug, "MasterKey(<redacted>)");
    }

    #[test]
    fn master_key_parses_base64_of_32_bytes_only() {
        let key = MasterKey::generate();
        let text = key.to_base64();
        let parsed = MasterKey::from_base64(&format!("  {}\n", text.as_str())).unwrap();
        assert_eq!(parsed.expose(), key.expose());
        let url_safe = URL_SAFE_NO_PAD.encode(key.expose());
        assert_eq!(
            MasterKey::from_base64(&url_safe).unwrap().expose(),
            key.expose()
        );
        assert!(MasterKey::from_base64(&STANDARD.encode([1u8; 31])).is_err());
        assert!(MasterKey::from_base64(&STANDARD.encode([1u8; 33])).is_err());
        assert!(MasterKey::from_base64("not base64!").is_err());
    }

    #[test]
    fn key_rings_parse_versions_and_refuse_bad_entries() {
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        let (a64, b64) = (a.to_base64(), b.to_base64());
        let bare = KeyRing::parse(&format!("{}\n", a64.as_str())).unwrap();
        assert_eq!(bare.versions(), [1]);
        assert_eq!(bare.get(1).unwrap().expose(), a.expose());
        for text in [
            format!("1:{},2:{}", a64.as_str(), b64.as_str()),
            format!(
                "# keys\n1:{}\n\n2:{}  # newest\n",
                a64.as_str(),
                b64.as_str()
            ),
            format!("2:{} 1:{}", b64.as_str(), a64.as_str()),
        ] {
            let ring = KeyRing::parse(&text).unwrap();
            assert_eq!(ring.versions(), [1, 2], "{text}");
            assert_eq!(ring.newest(), Some(2));
            assert_eq!(ring.get(2).unwrap().expose(), b.expose());
            let again = KeyRing::parse(&ring.to_text()).unwrap();
            assert_eq!(again.get(1).unwrap().expose(), a.expose());
        }
        assert_eq!(
            KeyRing::parse(&format!("1:{},1:{}", a64.as_str(), b64.as_str())).unwrap_err(),
            BadKeyRing::Duplicate(1)
        );
        assert_eq!(
            KeyRing::parse(&format!("0:{}", a64.as_str())).unwrap_err(),
            BadKeyRing::BadEntry(1)
        );
        assert_eq!(
            KeyRing::parse(&format!("1:{},x", a64.as_str())).unwrap_err(),
            BadKeyRing::BadEntry(2)
        );
        assert_eq!(
            KeyRing::parse(" # nothing\n").unwrap_err(),
            BadKeyRing::Empty
        );
        assert!(KeyRing::parse("1:c2hvcnQ=").is_err());
        let debug = format!(
            "{:?}",
            KeyRing::parse(&format!("1:{}", a64.as_str())).unwrap()
        );
        assert!(!debug.contains(a64.as_str()), "{debug}");
    }

    #[test]
    fn app_keys_have_the_documented_shape() {
        let key = AppKey::generate();
        let rest = key.expose().strip_prefix("ask_").unwrap();
        assert_eq!(rest.len(), 43);
        assert_eq!(URL_SAFE_NO_PAD.decode(rest).unwrap().len(), 32);
        assert_ne!(AppKey::generate().expose(), key.expose());
    }

    #[test]
    fn digests_compare_by_value() {
        assert!(digest_eq(&sha256(b"a"), &sha256(b"a")));
        assert!(!digest_eq(&sha256(b"a"), &sha256(b"b")));
        assert!(!digest_eq(&sha256(b"a")[..31], &sha256(b"a")));
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
