//! What the core reports and answers: its state, events, datagrams to send, refusals and
//! counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// What a node is doing, as it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum NodeState {
    /// Not connected to the fleet: started and not yet synced, or it lost every member
    /// but still hears from some (it reconnects, and does not run alone meanwhile).
    Joining,
    /// Synced with the fleet and competing.
    Active,
    /// Reached nobody within `sync_timeout` (or lost every member): runs on its own view.
    Alone,
    /// Leaving: leases are being handed over.
    Leaving,
    /// Left the fleet; the node does nothing more.
    Left,
    /// A newer process with the same name runs: this one holds nothing and competes no more.
    Superseded,
    /// Quorum mode: synced, but it sees no strict majority of the fleet's members live (or
    /// more members than the fleet's size): it holds nothing until it does.
    NoQuorum,
}

impl NodeState {
    /// Every state, in declaration order.
    pub const ALL: [NodeState; 7] = [
        NodeState::Joining,
        NodeState::Active,
        NodeState::Alone,
        NodeState::Leaving,
        NodeState::Left,
        NodeState::Superseded,
        NodeState::NoQuorum,
    ];

    /// The lowercase name used in logs and the debug endpoint.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Active => "active",
            NodeState::Alone => "alone",
            NodeState::Leaving => "leaving",
            NodeState::Left => "left",
            NodeState::Superseded => "superseded",
            NodeState::NoQuorum => "no-quorum",
        }
    }
}

use super::{LeaseId, LostReason, NodeId};
use crate::wire::DropReason;

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node as the owners of a resource name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerInfo {
    /// The node's name.
    pub name: String,
    /// The node's advertise address.
    pub addr: SocketAddr,
}

/// Who holds a resource and who should, in one node's view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    /// The effective tickets (0 when nobody competes).
    pub tickets: u16,
    /// Nodes whose records say they hold it, in rank order.
    pub holders: Vec<OwnerInfo>,
    /// The top-`tickets` candidates, in rank order. Holders converge to these.
    pub desired: Vec<OwnerInfo>,
}

/// Something the core reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The node's state changed.
    StateChanged(NodeState),
    /// This node acquired a ticket of `resource`.
    Acquired {
        /// The resource.
        resource: String,
        /// Identifies this tenure; quote it in [`Core::lease_dropped`](super::Core::lease_dropped).
        lease: LeaseId,
        /// The tenure's fencing term: one above every term of the resource this node
        /// knew of when it acquired.
        term: u64,
    },
    /// This node must stop running `resource`; it yields when the lease is dropped.
    Lost {
        /// The resource.
        resource: String,
        /// The tenure that ended.
        lease: LeaseId,
        /// Why.
        reason: LostReason,
    },
    /// This node no longer holds `resource`, and told the fleet.
    Yielded {
        /// The resource.
        resource: String,
        /// The tenure that ended.
        lease: LeaseId,
        /// True when `handoff_timeout` ran out before the application dropped the lease.
        forced: bool,
    },
    /// This node advertises other tickets for `resource` than most candidates do, and is
    /// not counted as a candidate until it agrees.
    TicketsMismatch {
        /// The resource.
        resource: String,
        /// What this node advertises.
        ours: u16,
        /// What most candidates advertise.
        effective: u16,
    },
    /// This node's tickets for `resource` agree with the fleet again.
    TicketsAgreed {
        /// The resource.
        resource: String,
    },
    /// The owners of a resource this node competes for or watches changed.
    OwnersChanged {
        /// The resource.
        resource: String,
        /// The new owners.
        owners: Owners,
    },
    /// A member became live in this node's view.
    MemberUp(NodeId),
    /// A member was declared down (or left) in this node's view.
    MemberDown(NodeId),
    /// A member stopped answering probes (with `report_suspicions`).
    MemberSuspect(NodeId),
    /// A suspected member refuted the suspicion (with `report_suspicions`).
    MemberAlive(NodeId),
    /// Another process with this node's name and a newer boot runs at `by`.
    Superseded {
        /// Where the newer process runs.
        by: SocketAddr,
    },
    /// A process with the same name and an older boot runs at `old`; it will stand down.
    SupersedesOther {
        /// Where the older process runs.
        old: SocketAddr,
    },
    /// The node left the fleet; nothing more will happen.
    Left,
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address.
    pub to: SocketAddr,
    /// The whole datagram, envelope included.
    pub data: Vec<u8>,
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The resource name is empty or too long.
    #[error("invalid resource name: {0}")]
    InvalidResource(#[from] crate::record::RecordError),
    /// Zero tickets.
    #[error("tickets must be at least 1")]
    ZeroTickets,
    /// The node already competes for this resource.
    #[error("this node already competes for {0:?}: keep the first Candidacy or withdraw it")]
    AlreadyCompeting(String),
    /// Adding the claim would push the record over its size cap.
    #[error(
        "claiming {resource:?} would make this node's record {size} bytes, over the cap of {cap}; compete for fewer or shorter resources"
    )]
    RecordFull {
        /// The resource.
        resource: String,
        /// The size the record would have.
        size: usize,
        /// The cap.
        cap: usize,
    },
    /// The node is leaving, has left, or was superseded.
    #[error("the node is {0} and takes no new candidacies")]
    NotRunning(NodeState),
}

/// Counters, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams handed to the core.
    pub datagrams_in: u64,
    /// Bytes handed to the core.
    pub bytes_in: u64,
    /// Datagrams the core produced.
    pub datagrams_out: u64,
    /// Bytes the core produced.
    pub bytes_out: u64,
    /// Dropped incoming datagrams by reason.
    pub dropped: BTreeMap<DropReason, u64>,
    /// Record broadcasts that did not validate.
    pub invalid_records: u64,
    /// Outgoing foca `TurnUndead` messages suppressed because the target is live here.
    pub suppressed_turn_undead: u64,
    /// foca instances rebuilt after going idle.
    pub rebuilds: u64,
    /// Times this node raised its boot because the fleet refused its identity.
    pub boot_raises: u64,
    /// Announces to the seeds (made while not connected).
    pub announces: u64,
    /// Acquisitions.
    pub acquisitions: u64,
    /// Losses.
    pub losses: u64,
    /// Yields.
    pub yields: u64,
    /// Acquisitions that went ahead past an unresponsive blocker.
    pub escapes: u64,
    /// Times this node became ready while records it could not get were still missing.
    pub ready_escapes: u64,
    /// Times this node stayed out of the candidates after it lost every member and
    /// connected again (its packets may not get out).
    pub rejoin_bars: u64,
    /// Changes of this node's view (members or their records).
    pub view_changes: u64,
    /// Members seen turning suspect (with `report_suspicions`).
    pub suspicions_raised: u64,
    /// Suspected members seen alive again (with `report_suspicions`).
    pub suspicions_refuted: u64,
    /// Quorum mode: tickets given up because no majority renewed its promises in time.
    pub fences: u64,
    /// Holders this node suspected because they left a probe period of its successor
    /// probes unanswered (see [`Timing::successor_probes`](super::Timing::successor_probes)).
    pub successor_suspicions: u64,
    /// The last failover this node took part in: from when it first saw the previous
    /// holder suspected (or down) until it acquired.
    pub last_failover: Option<Duration>,
}
