//! The foca identity of a node: small, because it rides in every packet header.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `{ addr, boot, bump }`: where to send, which process start, which renewal.
///
/// The stable node `name` is not here: it travels in the node's record, so a restarted
/// worker ranks where it ranked before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    /// The advertise address.
    pub addr: SocketAddr,
    /// Rises on every process start.
    pub boot: u64,
    /// Rises when foca renews the identity (declared down while running).
    pub bump: u32,
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            bump: self.bump.wrapping_add(1),
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.boot, self.bump) > (adversary.boot, adversary.bump)
    }
}
