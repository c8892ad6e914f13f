//! Encryption at rest: XChaCha20-Poly1305 envelopes bound to their row and
//! field by associated data.
//!
//! Envelope: `[0x01][key_version u32 BE][24-byte nonce][ciphertext + tag]`.

use crate::secrets::MasterKey;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use std::fmt;
use zeroize::Zeroizing;

const FORMAT_V1: u8 = 0x01;
const CURRENT_KEY_VERSION: u32 = 1;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
const TAG_LEN: usize = 16;
const AAD_DOMAIN: &[u8] = b"authstamp/v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("encrypted value is truncated or not in a known format")]
    Malformed,
    #[error("encrypted value uses unknown key version {0}")]
    UnknownKeyVersion(u32),
    #[error("encrypted value failed authentication (wrong key, row or field)")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
    #[error("decrypted value is not UTF-8")]
    NotUtf8,
}

/// Which secret a blob holds; part of the associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    ClientSecret,
    AccessToken,
    RefreshToken,
    PkceVerifier,
}

impl Field {
    fn as_str(self) -> &'static str {
        match self {
            Field::ClientSecret => "client_secret",
            Field::AccessToken => "access_token",
            Field::RefreshToken => "refresh_token",
            Field::PkceVerifier => "pkce_verifier",
        }
    }
}

/// Associated data: the table, the row key and the field, each
/// length-prefixed so that no two rows share an encoding.
#[derive(Clone, PartialEq, Eq)]
pub struct Aad(Vec<u8>);

impl Aad {
    fn new(table: &str, key: &[&[u8]], field: Field) -> Self {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(AAD_DOMAIN);
        for part in std::iter::once(table.as_bytes())
            .chain(key.iter().copied())
            .chain(std::iter::once(field.as_str().as_bytes()))
        {
            // Parts are short (ids, names, digests); u32 covers every one.
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
        Self(out)
    }

    pub fn provider_secret(app_id: &str, provider: &str) -> Self {
        Self::new(
            "providers",
            &[app_id.as_bytes(), provider.as_bytes()],
            Field::ClientSecret,
        )
    }

    pub fn connection(app_id: &str, provider: &str, user: &str, field: Field) -> Self {
        Self::new(
            "connections",
            &[app_id.as_bytes(), provider.as_bytes(), user.as_bytes()],
            field,
        )
    }

    pub fn oauth_state(state_hash: &[u8]) -> Self {
        Self::new("oauth_states", &[state_hash], Field::PkceVerifier)
    }

    fn with_header(&self, header: &[u8]) -> Vec<u8> {
        let mut out = self.0.clone();
        out.extend_from_slice(header);
        out
    }
}

impl fmt::Debug for Aad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Aad(..)")
    }
}

/// Seals and opens envelopes. Holds the ciphers (which zeroize their keys on
/// drop), never the raw key.
pub struct Vault {
    current_version: u32,
    keys: Vec<(u32, XChaCha20Poly1305)>,
}

impl Vault {
    pub fn new(master_key: &MasterKey) -> Self {
        let cipher = XChaCha20Poly1305::new(Key::from_slice(master_key.expose()));
        Self {
            current_version: CURRENT_KEY_VERSION,
            keys: vec![(CURRENT_KEY_VERSION, cipher)],
        }
    }

    fn cipher(&self, version: u32) -> Result<&XChaCha20Poly1305, VaultError> {
        self.keys
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, c)| c)
            .ok_or(VaultError::UnknownKeyVersion(version))
    }

    pub fn seal(&self, aad: &Aad, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        let nonce: [u8; NONCE_LEN] = crate::secrets::random_bytes();
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.push(FORMAT_V1);
        header.extend_from_slice(&self.current_version.to_be_bytes());
        header.extend_from_slice(&nonce);
        let ciphertext = self
            .cipher(self.current_version)?
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad.with_header(&header),
                },
            )
            .map_err(|_| VaultError::Encrypt)?;
        let mut blob = header;
        blob.extend_from_slice(&ciphertext);
        Ok(blob)
    }

    pub fn open(&self, aad: &Aad, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if blob.len() < HEADER_LEN + TAG_LEN || blob[0] != FORMAT_V1 {
            return Err(VaultError::Malformed);
        }
        let (header, ciphertext) = blob.split_at(HEADER_LEN);
        let mut version = [0u8; 4];
        version.copy_from_slice(&header[1..5]);
        let cipher = self.cipher(u32::from_be_bytes(version))?;
        cipher
            .decrypt(
                XNonce::from_slice(&header[5..HEADER_LEN]),
                Payload {
                    msg: ciphertext,
                    aad: &aad.with_header(header),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Decrypt)
    }

    pub fn seal_str(&self, aad: &Aad, plaintext: &str) -> Result<Vec<u8>, VaultError> {
        self.seal(aad, plaintext.as_bytes())
    }

    pub fn open_string(&self, aad: &Aad, blob: &[u8]) -> Result<Zeroizing<String>, VaultError> {
        let bytes = self.open(aad, blob)?;
        std::str::from_utf8(&bytes)
            .map(|s| Zeroizing::new(s.to_owned()))
            .map_err(|_| VaultError::NotUtf8)
    }
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("current_version", &self.current_version)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        Vault::new(&MasterKey::generate())
    }

    fn aad() -> Aad {
        Aad::connection("app_1", "slack", "alice", Field::AccessToken)
    }

    #[test]
    fn round_trip() {
        let v = vault();
        let blob = v.seal_str(&aad(), "xoxp-secret").unwrap();
        assert_eq!(blob[0], 0x01);
        assert_eq!(&blob[1..5], &1u32.to_be_bytes());
        assert_eq!(blob.len(), HEADER_LEN + "xoxp-secret".len() + TAG_LEN);
        assert!(!blob.windows(11).any(|w| w == b"xoxp-secret"));
        assert_eq!(
            v.open_string(&aad(), &blob).unwrap().as_str(),
            "xoxp-secret"
        );
        // A fresh nonce every time.
        assert_ne!(blob, v.seal_str(&aad(), "xoxp-secret").unwrap());
    }

    #[test]
    fn every_flipped_byte_fails() {
        let v = vault();
        let blob = v.seal_str(&aad(), "token").unwrap();
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(v.open(&aad(), &bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn blob_moved_to_another_row_or_field_fails() {
        let v = vault();
        let blob = v.seal_str(&aad(), "token").unwrap();
        let others = [
            Aad::connection("app_1", "slack", "bob", Field::AccessToken),
            Aad::connection("app_2", "slack", "alice", Field::AccessToken),
            Aad::connection("app_1", "github", "alice", Field::AccessToken),
            Aad::connection("app_1", "slack", "alice", Field::RefreshToken),
            // Shifting bytes between parts must not collide.
            Aad::connection("app_1s", "lack", "alice", Field::AccessToken),
            Aad::provider_secret("app_1", "slack"),
        ];
        for other in others {
            assert_eq!(v.open(&other, &blob), Err(VaultError::Decrypt));
        }
    }

    #[test]
    fn unknown_key_version_fails() {
        let v = vault();
        let mut blob = v.seal_str(&aad(), "token").unwrap();
        blob[1..5].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(v.open(&aad(), &blob), Err(VaultError::UnknownKeyVersion(2)));
    }

    #[test]
    fn truncated_or_unknown_format_fails() {
        let v = vault();
        let blob = v.seal_str(&aad(), "token").unwrap();
        for len in [0, 1, 5, HEADER_LEN, HEADER_LEN + TAG_LEN - 1] {
            assert_eq!(v.open(&aad(), &blob[..len]), Err(VaultError::Malformed));
        }
        assert_eq!(
            v.open(&aad(), &blob[..blob.len() - 1]),
            Err(VaultError::Decrypt)
        );
        let mut bad = blob.clone();
        bad[0] = 0x02;
        assert_eq!(v.open(&aad(), &bad), Err(VaultError::Malformed));
    }

    #[test]
    fn another_master_key_fails() {
        let blob = vault().seal_str(&aad(), "token").unwrap();
        assert_eq!(vault().open(&aad(), &blob), Err(VaultError::Decrypt));
    }
}
