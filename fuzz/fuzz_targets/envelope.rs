//! Vault envelopes: arbitrary bytes never open (and never panic); sealing
//! arbitrary plaintext always opens back to it, and only under its own row.
#![no_main]

use authstamp_token_service::secrets::{KeyRing, MasterKey};
use authstamp_token_service::vault::{envelope_version, Aad, Field, Vault};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn vault() -> &'static Vault {
    static VAULT: OnceLock<Vault> = OnceLock::new();
    VAULT.get_or_init(|| {
        let mut ring = KeyRing::default();
        ring.insert(1, MasterKey::generate());
        ring.insert(2, MasterKey::generate());
        Vault::from_ring(&ring, 1).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let vault = vault();
    let aad = Aad::connection("app_1", "slack", "alice", Field::AccessToken);
    // Arbitrary bytes as a stored blob.
    let _ = envelope_version(data);
    assert!(vault.open(&aad, data).is_err(), "forged envelope opened");
    // Arbitrary bytes as a plaintext.
    let blob = vault.seal(&aad, data).unwrap();
    assert_eq!(envelope_version(&blob), Ok(2));
    assert_eq!(vault.open(&aad, &blob).unwrap().as_slice(), data);
    let other = Aad::connection("app_1", "slack", "bob", Field::AccessToken);
    assert!(vault.open(&other, &blob).is_err());
    // Any single flipped bit of the sealed blob fails.
    if let Some(&first) = data.first() {
        let mut bad = blob.clone();
        let i = usize::from(first) % bad.len();
        bad[i] ^= 1 << (data.len() % 8);
        assert!(vault.open(&aad, &bad).is_err());
    }
});
