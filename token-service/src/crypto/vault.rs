//! Encryption at rest: XChaCha20-Poly1305 envelopes bound to their row and
//! field by associated data.
//!
//! Envelope: `[0x01][key_version u32 BE][24-byte nonce][ciphertext + tag]`.
//! The header (format and key version included) is part of the associated
//! data, so a blob cannot be moved to another row or field, nor relabelled
//! with another key version. The vault holds every key version of its ring
//! (minus those below `min_version`, which it refuses) and seals with the
//! active one; `keys.rs` keeps the active version in the database and
//! re-encrypts rows on rotation.

use crate::crypto::secrets::{KeyRing, MasterKey};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, RwLock};
use zeroize::Zeroizing;

const FORMAT_V1: u8 = 0x01;
const NONCE_LEN: usize = 24;
pub const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
pub const TAG_LEN: usize = 16;
const AAD_DOMAIN: &[u8] = b"authstamp/v1";
/// What a key check blob holds (see [`Vault::key_check`]).
const KEY_CHECK_PLAINTEXT: &[u8] = b"authstamp vault key check";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VaultError {
    #[error("encrypted value is truncated or not in a known format")]
    Malformed,
    #[error("encrypted value uses unknown key version {0}")]
    UnknownKeyVersion(u32),
    #[error("encrypted value uses retired key version {0} (below the minimum key version)")]
    RetiredKeyVersion(u32),
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
    KeyCheck,
    WebhookSecret,
}

impl Field {
    fn as_str(self) -> &'static str {
        match self {
            Field::ClientSecret => "client_secret",
            Field::AccessToken => "access_token",
            Field::RefreshToken => "refresh_token",
            Field::PkceVerifier => "pkce_verifier",
            Field::KeyCheck => "key_check",
            Field::WebhookSecret => "webhook_secret",
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

    /// The signing secret of an app's webhook (`webhooks.secret`).
    pub fn webhook_secret(app_id: &str) -> Self {
        Self::new("webhooks", &[app_id.as_bytes()], Field::WebhookSecret)
    }

    /// A token of a connect result waiting for the app's confirmation.
    pub fn connect_result(result_hash: &[u8], field: Field) -> Self {
        Self::new("connect_results", &[result_hash], field)
    }

    pub fn oauth_state(state_hash: &[u8]) -> Self {
        Self::new("oauth_states", &[state_hash], Field::PkceVerifier)
    }

    /// The check blob of one key version (table `vault_keys`).
    pub fn key_check(version: u32) -> Self {
        Self::new("vault_keys", &[&version.to_be_bytes()], Field::KeyCheck)
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

/// The key version an envelope names, without opening it.
pub fn envelope_version(blob: &[u8]) -> Result<u32, VaultError> {
    if blob.len() < HEADER_LEN + TAG_LEN || blob[0] != FORMAT_V1 {
        return Err(VaultError::Malformed);
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(&blob[1..5]);
    Ok(u32::from_be_bytes(version))
}

type ReloadFn = Box<dyn Fn() -> anyhow::Result<KeyRing> + Send + Sync>;

/// Seals and opens envelopes. Holds the ciphers (which zeroize their keys on
/// drop), never the raw keys.
pub struct Vault {
    ciphers: RwLock<BTreeMap<u32, XChaCha20Poly1305>>,
    active: AtomicU32,
    min_version: u32,
    reload: Option<(ReloadFn, Mutex<()>)>,
}

fn ciphers_of(ring: &KeyRing, min_version: u32) -> BTreeMap<u32, XChaCha20Poly1305> {
    ring.iter()
        .filter(|(version, _)| *version >= min_version)
        .map(|(version, key)| {
            (
                version,
                XChaCha20Poly1305::new(Key::from_slice(key.expose())),
            )
        })
        .collect()
}

impl Vault {
    /// One key, version 1.
    pub fn new(master_key: &MasterKey) -> Self {
        let mut ciphers = BTreeMap::new();
        ciphers.insert(
            1,
            XChaCha20Poly1305::new(Key::from_slice(master_key.expose())),
        );
        Self {
            ciphers: RwLock::new(ciphers),
            active: AtomicU32::new(1),
            min_version: 1,
            reload: None,
        }
    }

    /// Every key of `ring` from `min_version` on; seals with the newest until
    /// [`Vault::set_active`] says otherwise.
    pub fn from_ring(ring: &KeyRing, min_version: u32) -> anyhow::Result<Self> {
        let min_version = min_version.max(1);
        let ciphers = ciphers_of(ring, min_version);
        let Some(newest) = ciphers.keys().next_back().copied() else {
            anyhow::bail!(
                "the key ring has no key of version {min_version} or later (versions {:?})",
                ring.versions()
            );
        };
        Ok(Self {
            ciphers: RwLock::new(ciphers),
            active: AtomicU32::new(newest),
            min_version,
            reload: None,
        })
    }

    /// Where to read the ring again when a blob or the database names a
    /// version this vault does not know (a key file extended by
    /// `authstamp keys rotate` while the service runs).
    pub fn with_reload(
        mut self,
        reload: impl Fn() -> anyhow::Result<KeyRing> + Send + Sync + 'static,
    ) -> Self {
        self.reload = Some((Box::new(reload), Mutex::new(())));
        self
    }

    pub fn active_version(&self) -> u32 {
        self.active.load(Ordering::Acquire)
    }

    pub fn min_version(&self) -> u32 {
        self.min_version
    }

    /// The versions this vault can open.
    pub fn versions(&self) -> Vec<u32> {
        self.read_ciphers().keys().copied().collect()
    }

    pub fn knows(&self, version: u32) -> bool {
        self.read_ciphers().contains_key(&version) || self.reload_for(version)
    }

    /// Seals new blobs with `version` from now on.
    pub fn set_active(&self, version: u32) -> Result<(), VaultError> {
        if version < self.min_version {
            return Err(VaultError::RetiredKeyVersion(version));
        }
        if !self.knows(version) {
            return Err(VaultError::UnknownKeyVersion(version));
        }
        self.active.store(version, Ordering::Release);
        Ok(())
    }

    fn read_ciphers(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, XChaCha20Poly1305>> {
        self.ciphers.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the key source again, unless `version` became known while
    /// waiting for another caller's reload. `true`: `version` is known now.
    /// Reloads are serialized; reading a small key file costs microseconds,
    /// and only a blob or a database naming an unknown version causes one.
    fn reload_for(&self, version: u32) -> bool {
        let Some((load, lock)) = &self.reload else {
            return false;
        };
        let _serialized = lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.read_ciphers().contains_key(&version) {
            return true;
        }
        let ring = match load() {
            Ok(ring) => ring,
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "could not read the master keys again");
                return false;
            }
        };
        let fresh = ciphers_of(&ring, self.min_version);
        if !fresh.contains_key(&self.active_version()) {
            tracing::error!(
                active = self.active_version(),
                "the master keys read again lack the active key version; keeping the old ones"
            );
            return false;
        }
        let known = fresh.contains_key(&version);
        if fresh.keys().ne(self.read_ciphers().keys()) {
            tracing::info!(versions = ?fresh.keys().collect::<Vec<_>>(), "master keys read again");
            *self.ciphers.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        }
        known
    }

    fn with_cipher<T>(
        &self,
        version: u32,
        f: impl Fn(&XChaCha20Poly1305) -> T,
    ) -> Result<T, VaultError> {
        if version < self.min_version {
            return Err(VaultError::RetiredKeyVersion(version));
        }
        if let Some(cipher) = self.read_ciphers().get(&version) {
            return Ok(f(cipher));
        }
        if self.reload_for(version) {
            if let Some(cipher) = self.read_ciphers().get(&version) {
                return Ok(f(cipher));
            }
        }
        Err(VaultError::UnknownKeyVersion(version))
    }

    pub fn seal(&self, aad: &Aad, plaintext: &[u8]) -> Result<Vec<u8>, VaultError> {
        self.seal_with(self.active_version(), aad, plaintext)
    }

    /// Seals with a given key version (key checks; tests).
    pub fn seal_with(
        &self,
        version: u32,
        aad: &Aad,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, VaultError> {
        let nonce: [u8; NONCE_LEN] = crate::crypto::secrets::random_bytes();
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.push(FORMAT_V1);
        header.extend_from_slice(&version.to_be_bytes());
        header.extend_from_slice(&nonce);
        let full_aad = aad.with_header(&header);
        let ciphertext = self
            .with_cipher(version, |cipher| {
                cipher.encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: plaintext,
                        aad: &full_aad,
                    },
                )
            })?
            .map_err(|_| VaultError::Encrypt)?;
        let mut blob = header;
        blob.extend_from_slice(&ciphertext);
        Ok(blob)
    }

    pub fn open(&self, aad: &Aad, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let version = envelope_version(blob)?;
        let (header, ciphertext) = blob.split_at(HEADER_LEN);
        let full_aad = aad.with_header(header);
        self.with_cipher(version, |cipher| {
            cipher.decrypt(
                XNonce::from_slice(&header[5..HEADER_LEN]),
                Payload {
                    msg: ciphertext,
                    aad: &full_aad,
                },
            )
        })?
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

    /// A blob that only the key of `version` opens: stored once per version
    /// in the database, it proves that every replica holds the same key
    /// under the same version (and that a restarted service got the right one).
    pub fn key_check(&self, version: u32) -> Result<Vec<u8>, VaultError> {
        self.seal_with(version, &Aad::key_check(version), KEY_CHECK_PLAINTEXT)
    }

    /// Whether `check` (from [`Vault::key_check`]) opens with our key of `version`.
    pub fn check_matches(&self, version: u32, check: &[u8]) -> Result<bool, VaultError> {
        if envelope_version(check)? != version {
            return Ok(false);
        }
        match self.open(&Aad::key_check(version), check) {
            Ok(plain) => Ok(plain.as_slice() == KEY_CHECK_PLAINTEXT),
            Err(VaultError::Decrypt) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("active_version", &self.active_version())
            .field("versions", &self.versions())
            .field("min_version", &self.min_version)
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

    fn ring(n: u32) -> (KeyRing, Vec<String>) {
        let mut ring = KeyRing::default();
        let mut texts = Vec::new();
        for version in 1..=n {
            let key = MasterKey::generate();
            texts.push(key.to_base64().to_string());
            ring.insert(version, key);
        }
        (ring, texts)
    }

    #[test]
    fn a_ring_opens_every_version_and_seals_with_the_active_one() {
        let (keys, _) = ring(3);
        let v = Vault::from_ring(&keys, 1).unwrap();
        assert_eq!(v.versions(), [1, 2, 3]);
        assert_eq!(v.active_version(), 3);
        let old = v.seal_with(1, &aad(), b"old").unwrap();
        assert_eq!(envelope_version(&old), Ok(1));
        v.set_active(2).unwrap();
        let sealed = v.seal(&aad(), b"new").unwrap();
        assert_eq!(envelope_version(&sealed), Ok(2));
        assert_eq!(v.open(&aad(), &old).unwrap().as_slice(), b"old");
        assert_eq!(v.open(&aad(), &sealed).unwrap().as_slice(), b"new");
        assert_eq!(v.set_active(9), Err(VaultError::UnknownKeyVersion(9)));
        assert_eq!(v.active_version(), 2);
    }

    #[test]
    fn versions_below_the_minimum_are_refused() {
        let (keys, _) = ring(2);
        let all = Vault::from_ring(&keys, 1).unwrap();
        let old = all.seal_with(1, &aad(), b"x").unwrap();
        let newer = Vault::from_ring(&keys, 2).unwrap();
        assert_eq!(newer.versions(), [2]);
        assert_eq!(
            newer.open(&aad(), &old),
            Err(VaultError::RetiredKeyVersion(1))
        );
        assert_eq!(newer.set_active(1), Err(VaultError::RetiredKeyVersion(1)));
        assert!(Vault::from_ring(&keys, 3).is_err());
    }

    #[test]
    fn relabelling_a_blob_with_another_known_version_fails() {
        let (keys, _) = ring(2);
        let v = Vault::from_ring(&keys, 1).unwrap();
        let mut blob = v.seal_with(1, &aad(), b"x").unwrap();
        blob[1..5].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(v.open(&aad(), &blob), Err(VaultError::Decrypt));
    }

    #[test]
    fn key_checks_tell_the_right_key_from_another() {
        let (keys, _) = ring(2);
        let v = Vault::from_ring(&keys, 1).unwrap();
        let check = v.key_check(2).unwrap();
        assert_eq!(v.check_matches(2, &check), Ok(true));
        assert_eq!(v.check_matches(1, &check), Ok(false));
        let (other, _) = ring(2);
        let w = Vault::from_ring(&other, 1).unwrap();
        assert_eq!(w.check_matches(2, &check), Ok(false));
    }

    #[test]
    fn an_unknown_version_reads_the_key_source_again() {
        let (keys, texts) = ring(2);
        let only_one = KeyRing::parse(&format!("1:{}", texts[0])).unwrap();
        let full = Vault::from_ring(&keys, 1).unwrap();
        let blob = full.seal_with(2, &aad(), b"rotated").unwrap();
        let text = format!("1:{},2:{}", texts[0], texts[1]);
        let reloads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = reloads.clone();
        let v = Vault::from_ring(&only_one, 1)
            .unwrap()
            .with_reload(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(KeyRing::parse(&text)?)
            });
        assert_eq!(v.open(&aad(), &blob).unwrap().as_slice(), b"rotated");
        assert_eq!(reloads.load(Ordering::SeqCst), 1);
        assert_eq!(v.versions(), [1, 2]);
        // Still sealing with version 1 until told otherwise.
        assert_eq!(v.active_version(), 1);
        v.set_active(2).unwrap();
        // Known versions never read the source again; unknown ones are refused.
        assert_eq!(v.open(&aad(), &blob).unwrap().as_slice(), b"rotated");
        assert_eq!(reloads.load(Ordering::SeqCst), 1);
        let mut bad = blob.clone();
        bad[1..5].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(v.open(&aad(), &bad), Err(VaultError::UnknownKeyVersion(7)));
        assert_eq!(reloads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn debug_shows_versions_only() {
        let (keys, texts) = ring(2);
        let debug = format!("{:?}", Vault::from_ring(&keys, 1).unwrap());
        assert!(debug.contains("active_version: 2"), "{debug}");
        for text in texts {
            assert!(!debug.contains(&text));
        }
    }

    #[test]
    fn another_master_key_fails() {
        let blob = vault().seal_str(&aad(), "token").unwrap();
        assert_eq!(vault().open(&aad(), &blob), Err(VaultError::Decrypt));
    }
}
