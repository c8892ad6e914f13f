//! The operations behind the handlers and the command line: apps and their
//! keys, provider configurations, connect sessions, connections (reading,
//! stored credentials, disconnect and reconnect), the shared app state,
//! refresh and its background scheduler, the token journal, webhook
//! delivery, key rotation and seeding. They return the domain
//! [`Error`](crate::error::Error), never an HTTP type.

pub mod apps;
pub mod background;
pub mod connect;
pub mod connections;
pub mod credentials;
pub mod journal;
pub mod journalled_connect;
pub mod journalled_result;
pub mod keys;
pub mod lifecycle;
pub mod lookup;
pub mod providers;
pub mod refresh;
pub mod seed;
pub mod state;
pub mod webhooks;
