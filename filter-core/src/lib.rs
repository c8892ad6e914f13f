//! authstamp's filter logic, independent of the host it runs in.
//!
//! The proxy-wasm glue (the root package) and the native Envoy module each
//! implement [`host::Host`] and forward every callback to one object:
//! [`stream::StreamFilter`] per request, [`stream::WorkerFilter`] per worker
//! (token answers delivered to the worker, ticks) and
//! [`stream::UpstreamFilter`] per attempt of the upstream instance. The unit
//! tests drive the same objects over [`host::mock::MockHost`].

pub mod cache;
pub mod config;
pub mod egress;
pub mod filter;
pub mod heal;
pub mod host;
pub mod inflight;
pub mod metrics;
pub mod reply;
pub mod request;
pub mod stamp;
pub mod store;
pub mod stream;
pub mod workload;
