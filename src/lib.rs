//! Coordinator-free election for worker fleets.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod api;
pub mod core;
mod driver;
mod error;
pub mod placement;
pub mod record;
pub mod wire;

pub use api::{Candidacy, Election, Lease, MemberInfo, MemberState, Node, NodeBuilder, NodeInfo};
pub use core::{LostReason, NodeState, OwnerInfo, Owners, Timing};
pub use driver::Socket;
pub use error::{Error, Result};
