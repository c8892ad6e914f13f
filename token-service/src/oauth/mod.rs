//! The provider side of OAuth: the token endpoint client.

pub mod client;
