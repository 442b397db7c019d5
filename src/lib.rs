//! Coordinator-free election for worker fleets.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod core;
pub mod placement;
pub mod record;
pub mod wire;
