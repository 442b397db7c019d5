//! Coordinator-free election for worker fleets.
//!
//! Workers join a SWIM membership over UDP (foca) and each computes, on its own, which
//! live workers own each named resource by rendezvous hashing over the workers that
//! compete for it. `tickets` says how many may hold a resource at once. When an owner
//! crashes, failure detection moves its ticket; when it releases or leaves, the next
//! worker takes over at once; an owner is told when it must stop.
//!
//! ```no_run
//! # async fn demo() -> gossip_election::Result<()> {
//! use gossip_election::Node;
//!
//! let node = Node::builder("worker-1")
//!     .bind("127.0.0.1:7946".parse().unwrap())
//!     .join(["127.0.0.1:7947"])
//!     .start()
//!     .await?;
//! let mut candidacy = node.obtain("echo", 1).await?;
//! let lease = candidacy.acquired().await?;
//! // ... run `echo` ...
//! let reason = lease.lost().await; // told to stop: stop, then drop the lease
//! drop(lease);
//! # let _ = reason; Ok(()) }
//! ```
//!
//! What this is not: a lock service. In the default (available) mode each side of a
//! partition elects its own owners; see the README for what is and is not promised.
//!
//! The layout follows the architecture: [`placement`] (pure, pinned hashing),
//! [`record`] (the gossiped state), [`wire`] (the datagram envelope), [`proto`] (the
//! sans-IO state machine the tokio driver and the simulator both run), and the API types
//! re-exported here.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::all)]

mod api;
#[cfg(feature = "debug")]
pub mod debug;
mod driver;
mod error;
mod identity;
pub mod placement;
pub mod proto;
pub mod record;
pub mod seal;
mod seed;
pub mod wire;

pub use api::{Candidacy, Election, Lease, Node, NodeBuilder, Tenure};
pub use driver::Socket;
pub use error::{Error, Result};
pub use identity::NodeId;
pub use proto::{
    Alone, CommandError, LeaseId, LostReason, MemberInfo, MemberState, NodeInfo, NodeState,
    OwnerInfo, Owners, QuorumMargins, Safety, Stats, Timing,
};
pub use seal::{Key, KeyError, KeyFileError, Keyring, Plaintext};
pub use seed::{Seed, SeedError};
