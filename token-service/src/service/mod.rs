//! The operations behind the handlers and the command line: apps and their
//! keys, provider configurations, the shared app state, refresh and its
//! background scheduler, the token journal, webhook delivery, key rotation
//! and seeding.

pub mod apps;
pub mod background;
pub mod journal;
pub mod journalled_connect;
pub mod journalled_result;
pub mod keys;
pub mod providers;
pub mod refresh;
pub mod seed;
pub mod state;
pub mod webhooks;
