//! The test kit of the workspace: what the token service's tests, the
//! end-to-end tests (tests/) and the benchmarks (bench/) share. Kept free of
//! browser and YAML tooling so that the token service's tests stay quick to
//! build.

pub mod eventually;
pub mod json;
pub mod postgres;
pub mod process;
pub mod prom;
pub mod standin;

pub use eventually::eventually;
pub use json::json_of;
pub use process::{free_port, Process};
