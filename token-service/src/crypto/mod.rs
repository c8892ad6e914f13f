//! Key material and sealing: the vault (AEAD envelopes under the key ring)
//! and the secret newtypes that keep values out of logs.

pub mod secrets;
pub mod vault;
