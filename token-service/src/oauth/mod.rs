//! The OAuth side: token endpoint client, connect flow and callback.

pub mod callback;
pub mod client;
pub mod connect;
