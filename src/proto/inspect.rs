//! Read-only accessors: what this node believes, for the application, the debug endpoint,
//! metrics and the simulator's checkers.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use foca::Member;

use super::{Core, CoreConfig, NodeId, NodeState, OwnerInfo, Owners, Stats, lease};
use crate::record::{Claim, Record};

/// How a member stands in a node's view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Not answering; will be declared down unless it refutes. Still counts as live.
    Suspect,
    /// Declared down (or left).
    Down,
}

impl MemberState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

/// One member as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's name, once its record is known.
    pub name: Option<String>,
    /// Its advertise address.
    pub addr: SocketAddr,
    /// Its process start.
    pub boot: u64,
    /// Its state.
    pub state: MemberState,
    /// Its SWIM incarnation.
    pub incarnation: u16,
}

/// A snapshot of a node's own state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// Its advertise address.
    pub addr: SocketAddr,
    /// Its process start.
    pub boot: u64,
    /// What it is doing.
    pub state: NodeState,
    /// Live members it sees, itself excluded.
    pub live_members: usize,
    /// Time since it started.
    pub uptime: Duration,
    /// Its counters.
    pub stats: Stats,
}

impl Core {
    /// This node's current foca identity.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The configuration the core runs with.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// What the node is doing.
    pub fn state(&self) -> NodeState {
        self.state
    }

    /// True once the node is synced (its record says `ready`).
    pub fn is_ready(&self) -> bool {
        self.sync.ready
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Time since the core started.
    pub fn uptime(&self, now: Duration) -> Duration {
        now.saturating_sub(self.started)
    }

    /// Live members (alive or suspect), excluding this node, in no particular order.
    pub fn members(&self) -> impl Iterator<Item = &NodeId> {
        self.view.members.values()
    }

    /// A digest of what this node believes — live members and their records' readiness,
    /// interests and held lists — equal on nodes with equal views. Unlike
    /// [`Core::view_fingerprint`] it ignores record versions.
    pub fn view_digest(&self) -> u64 {
        self.view.content_digest()
    }

    /// The view digest each member last reported, and when (this node's `now`).
    pub fn reported_digests(&self) -> &BTreeMap<SocketAddr, (u64, Duration)> {
        &self.sync.reported
    }

    /// The name at `addr`: from its current record, else the last one seen there.
    pub fn name_at(&self, addr: &SocketAddr) -> Option<&str> {
        self.view
            .name_of(addr)
            .or_else(|| self.membership.known_names.get(addr).map(String::as_str))
    }

    /// Since when (this node's `now`) it holds `resource`, if it does.
    pub fn held_since(&self, resource: &str) -> Option<Duration> {
        self.leases
            .claims
            .get(resource)
            .and_then(|c| match c.lease {
                lease::LeaseState::Held { since, .. } => Some(since),
                _ => None,
            })
    }

    /// The highest fencing term of `resource` this node knows: from the records in its
    /// view and its own leases (0: none).
    pub fn term(&self, resource: &str) -> u64 {
        let own = self.leases.claims.get(resource).map_or(0, |c| c.known_term);
        own.max(self.view.max_term(resource))
    }

    /// How many live members (alive or suspect) this node sees, itself excluded.
    pub fn live_members(&self) -> usize {
        self.view.members.len()
    }

    /// foca's membership, including members held as down, with their states.
    pub fn membership(&self) -> impl Iterator<Item = &Member<NodeId>> {
        self.membership.foca.iter_membership_state()
    }

    /// The current record of a live member (or this node's own).
    pub fn record(&self, addr: &SocketAddr) -> Option<Record> {
        let store = super::store::lock(&self.store);
        store
            .records
            .get(addr)
            .filter(|r| self.view.is_valid(r))
            .cloned()
    }

    /// This node's own record.
    pub fn own_record(&self) -> Record {
        super::store::lock(&self.store).records[&self.cfg.addr].clone()
    }

    /// A hash of this node's view (live members and their record versions): equal on
    /// nodes that believe the same.
    pub fn view_fingerprint(&self) -> u64 {
        self.view.fingerprint()
    }

    /// Entries and approximate bytes of every table this node keeps per address, by
    /// table name: what must level off in a fleet whose workers get fresh addresses.
    pub fn address_tables(&self) -> Vec<(&'static str, usize, usize)> {
        use std::mem::size_of;
        let store = super::store::lock(&self.store);
        let record_bytes: usize = store
            .records
            .values()
            .map(|r| {
                size_of::<(SocketAddr, Record)>()
                    + r.name.len()
                    + r.claims
                        .iter()
                        .map(|c| size_of::<Claim>() + c.resource.len())
                        .sum::<usize>()
            })
            .sum();
        let names: usize = self
            .membership
            .known_names
            .values()
            .map(|n| size_of::<(SocketAddr, String)>() + n.len())
            .sum();
        let foca = self.membership.foca.iter_membership_state().count();
        let sized = |n: usize, each: usize| (n, n * each);
        let rows = [
            ("records", (store.records.len(), record_bytes)),
            (
                "records_unattached",
                sized(store.unattached(), size_of::<(Duration, SocketAddr)>()),
            ),
            ("foca_members", sized(foca, size_of::<Member<NodeId>>())),
            ("known_names", (self.membership.known_names.len(), names)),
            (
                "lost_since",
                sized(
                    self.membership.lost_since.len(),
                    size_of::<(SocketAddr, Duration)>(),
                ),
            ),
            (
                "reported",
                sized(
                    self.sync.reported.len(),
                    size_of::<(SocketAddr, (u64, Duration))>(),
                ),
            ),
            (
                "members_answered",
                sized(
                    self.sync.members_answered.len(),
                    size_of::<(SocketAddr, Duration)>(),
                ),
            ),
            (
                "namesakes_reported",
                sized(
                    self.membership.namesakes_reported.len(),
                    size_of::<SocketAddr>(),
                ),
            ),
            (
                "leavers",
                sized(self.membership.leavers.len(), size_of::<SocketAddr>()),
            ),
            (
                "dormant",
                sized(
                    self.membership.dormant.len(),
                    size_of::<(Duration, SocketAddr, Option<u64>)>(),
                ),
            ),
        ];
        rows.into_iter().map(|(n, (e, b))| (n, e, b)).collect()
    }

    /// Entries of the tables this node keeps per address (as [`Core::address_tables`],
    /// without counting bytes or foca's members): cheap enough to check often.
    pub fn address_table_entries(&self) -> [(&'static str, usize); 5] {
        [
            ("records", super::store::lock(&self.store).records.len()),
            ("known_names", self.membership.known_names.len()),
            ("lost_since", self.membership.lost_since.len()),
            ("reported", self.sync.reported.len()),
            (
                "namesakes_reported",
                self.membership.namesakes_reported.len(),
            ),
        ]
    }

    /// Live members whose current record this node lacks.
    pub fn missing_records(&self) -> usize {
        self.view.missing.len()
    }

    /// The owners of `resource` in this node's view.
    pub fn owners(&self, resource: &str) -> Owners {
        let placement = self.view.placement(resource);
        let info = |addr: &SocketAddr| OwnerInfo {
            name: self.view.name_of(addr).unwrap_or_default().to_string(),
            addr: *addr,
        };
        let mut holders: Vec<SocketAddr> = placement.holders.iter().copied().collect();
        let rank_of = |a: &SocketAddr| {
            let name = self.view.name_of(a).unwrap_or_default();
            (
                Reverse(crate::placement::score(resource, name)),
                name.to_string(),
            )
        };
        holders.sort_by_key(rank_of);
        Owners {
            tickets: placement.tickets,
            holders: holders.iter().map(info).collect(),
            desired: placement.desired.iter().map(info).collect(),
        }
    }

    /// Candidates of `resource` in rank order.
    pub fn candidates(&self, resource: &str) -> Vec<OwnerInfo> {
        self.view
            .candidates(resource)
            .iter()
            .map(|addr| OwnerInfo {
                name: self.view.name_of(addr).unwrap_or_default().to_string(),
                addr: *addr,
            })
            .collect()
    }

    /// Every resource some live record claims.
    pub fn resources(&self) -> Vec<String> {
        self.view.resources().map(str::to_string).collect()
    }

    /// Every member of this node's foca membership (seed placeholders left out), with its
    /// name once its record is known.
    pub fn member_infos(&self) -> Vec<MemberInfo> {
        self.membership()
            .filter(|m| m.id().boot() != 0)
            .map(|m| MemberInfo {
                name: self.name_at(&m.id().addr()).map(str::to_string),
                addr: m.id().addr(),
                boot: m.id().boot(),
                state: match m.state() {
                    foca::State::Alive => MemberState::Alive,
                    foca::State::Suspect => MemberState::Suspect,
                    foca::State::Down => MemberState::Down,
                },
                incarnation: m.incarnation(),
            })
            .collect()
    }

    /// A snapshot of this node's own state at `now`.
    pub fn node_info(&self, now: Duration) -> NodeInfo {
        NodeInfo {
            name: self.name().to_string(),
            addr: self.id().addr(),
            boot: self.id().boot(),
            state: self.state(),
            live_members: self.members().count(),
            uptime: self.uptime(now),
            stats: self.stats().clone(),
        }
    }
}
