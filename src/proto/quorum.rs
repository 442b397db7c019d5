//! Quorum mode: tickets held on promises from a majority, renewed, and given up before
//! the promises can run out.
//!
//! Every node is an **acceptor**: for each ticket slot of each resource it promises one
//! holder at a time, for [`QuorumMargins::promise_for`] from when the request reached it
//! (its own clock). A candidate that is desired asks every member for a slot; once a strict
//! majority of the fleet's names (itself included) promised it within one round, it
//! holds, with the fencing term it asked for (higher than every term those acceptors
//! know, so terms rise from holder to holder). A holder renews every
//! [`QuorumMargins::renew_every`] and tells its application to stop
//! [`QuorumMargins::fence_after`] after the last round a majority answered was *sent*:
//! before any of those promises ends, under the drift, pause and drop bounds. A holder
//! that gives the ticket up once its application dropped the lease releases the
//! promises at once (a handover takes milliseconds); otherwise they run out.
//!
//! Membership only decides who asks (the desired owners) and when to stop early (no
//! majority in view); the promises alone keep two holders of one slot apart, whatever
//! the failure detector believes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tracing::{info, warn};

use super::lease::LeaseState;
use super::{Core, CoreTimer, LostReason, NodeState};
use crate::record::validate_resource;
use crate::wire::{DropReason, Message};

/// Most ticket slots an acceptor keeps promises and terms for: requests for more are
/// refused (and logged) until old promises expire.
const MAX_PROMISED: usize = 4096;

/// One promise an acceptor made.
#[derive(Clone, Copy, Debug)]
struct Promise {
    holder: SocketAddr,
    boot: u64,
    term: u64,
    until: Duration,
}

/// What this node promised others, and its rounds counter.
#[derive(Debug, Default)]
pub(super) struct Acceptor {
    /// The promise per `(resource, slot)`; expired ones stay until replaced or purged, so a
    /// holder whose renewal came late is recognised.
    promises: BTreeMap<(String, u16), Promise>,
    /// The highest term this node granted per `(resource, slot)`. Per slot, so that the
    /// holders of a resource's several tickets, acquiring at once, do not refuse each
    /// other's terms.
    terms: BTreeMap<(String, u16), u64>,
    /// The next round id of this node's own requests.
    next_round: u64,
    /// A fleet larger than the quorum's size was reported (reset once it is not).
    too_many_reported: bool,
}

/// One round of promise requests for a claim of this node.
#[derive(Clone, Debug)]
pub(crate) struct Round {
    id: u64,
    sent: Duration,
    slot: u16,
    term: u64,
    grants: BTreeSet<String>,
    /// The members that granted (to release their promises if the round fails).
    granted_by: Vec<SocketAddr>,
    counted: bool,
    /// Sent while not holding: a majority acquires. (A renewal's majority that comes
    /// after the holder gave up acquires nothing: its term is spent.)
    acquire: bool,
}

/// The quorum side of one of this node's claims.
#[derive(Clone, Debug, Default)]
pub(crate) struct QuorumClaim {
    /// The round in flight (or the last one).
    round: Option<Round>,
    /// When the next round is due, if one is scheduled.
    round_at: Option<Duration>,
    /// The slot held (while holding).
    pub(crate) slot: u16,
    /// Slots acceptors said are promised to another node: while that node holds a ticket
    /// (its record says so), this one asks for a free slot instead.
    taken: BTreeMap<u16, SocketAddr>,
    /// While holding: when the holder must have told its application to stop.
    pub(crate) fence_at: Option<Duration>,
}

impl Core {
    /// Whether it sees a strict majority of the quorum's members live, and no more
    /// members than that (always true in available mode).
    pub(super) fn quorum_seen(&mut self) -> bool {
        let Some(members) = self.cfg.safety.quorum() else {
            return true;
        };
        let live = self.live_names();
        let too_many = live > usize::from(members);
        if too_many && !self.quorum.too_many_reported {
            warn!(
                live,
                members,
                "more live members than the quorum's size: holding nothing (two majorities \
                 could exist); set the quorum to the fleet's size"
            );
        }
        self.quorum.too_many_reported = too_many;
        !too_many && live * 2 > usize::from(members)
    }

    /// Distinct names among the live members, this node's own included.
    fn live_names(&self) -> usize {
        let mut names: BTreeSet<String> = BTreeSet::new();
        names.insert(self.cfg.name.clone());
        for addr in self.view.members.keys() {
            names.insert(
                self.name_at(addr)
                    .map_or_else(|| addr.to_string(), str::to_string),
            );
        }
        names.len()
    }

    /// A desired, ready candidate in quorum mode: ask for a slot unless a round is
    /// already scheduled.
    pub(super) fn want_promises(&mut self, now: Duration, resource: &str) {
        if self
            .leases
            .claims
            .get(resource)
            .is_some_and(|c| c.quorum.round_at.is_none())
        {
            self.start_round(now, resource);
        }
    }

    /// Sends a round of promise requests for `resource`: a renewal while holding, a
    /// request for a slot otherwise.
    fn start_round(&mut self, now: Duration, resource: &str) {
        let margins = self.cfg.quorum_margins();
        let own = self.cfg.addr;
        let placement = self.view.placement(resource);
        let id = self.quorum.next_round;
        self.quorum.next_round += 1;
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
        let (slot, term) = match claim.lease {
            LeaseState::Held { term, .. } => (claim.quorum.slot, term),
            LeaseState::Idle => {
                // The desired nodes that do not hold take the free slots in rank order:
                // nodes with the same view ask for different slots.
                claim
                    .quorum
                    .taken
                    .retain(|_, a| *a != own && placement.holders.contains(a));
                let free: Vec<u16> = (0..claim.tickets.max(1))
                    .filter(|s| !claim.quorum.taken.contains_key(s))
                    .collect();
                let index = placement
                    .desired
                    .iter()
                    .filter(|a| **a == own || !placement.holders.contains(a))
                    .position(|a| *a == own)
                    .unwrap_or(0);
                let slot = if free.is_empty() {
                    // What it learnt is out of date (the tickets shrank): start over.
                    claim.quorum.taken.clear();
                    (index % usize::from(claim.tickets.max(1))) as u16
                } else {
                    free[index % free.len()]
                };
                (slot, claim.known_term + 1)
            }
            LeaseState::Lost { .. } => return,
        };
        let acquire = claim.lease == LeaseState::Idle;
        claim.quorum.round = Some(Round {
            id,
            sent: now,
            slot,
            term,
            grants: BTreeSet::new(),
            granted_by: Vec::new(),
            counted: false,
            acquire,
        });
        claim.quorum.round_at = Some(now + margins.renew_every);
        self.schedule(
            now + margins.renew_every,
            CoreTimer::QuorumRound {
                resource: resource.to_string(),
            },
        );
        let (boot, name) = (self.cfg.boot, self.cfg.name.clone());
        let renew = !acquire;
        if self.grant(now, (own, boot), resource, (slot, term), renew) {
            self.granted(now, resource, id, name);
        }
        let mut members: Vec<SocketAddr> = self.view.members.keys().copied().collect();
        members.sort_unstable();
        let request = Message::Promise {
            resource: resource.to_string(),
            slot,
            round: id,
            term,
            boot,
            renew,
        };
        for addr in members {
            self.send_message(addr, &request);
        }
    }

    /// A round is due for `resource`: renew while holding; otherwise the last request
    /// failed (a rival holds the slot, or too few answered), so ask again for the next
    /// slot if the lease rules still say so.
    pub(super) fn round_due(&mut self, now: Duration, resource: &str) {
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
        if claim.quorum.round_at.is_none_or(|at| at > now) {
            return;
        }
        claim.quorum.round_at = None;
        match claim.lease {
            LeaseState::Held { .. } => self.start_round(now, resource),
            LeaseState::Idle => {
                // The round failed: release what it got, so that a rival asking for the
                // same slot is not held up by these promises.
                if let Some(round) = claim.quorum.round.take()
                    && !round.counted
                {
                    let message = Message::Unpromise {
                        resource: resource.to_string(),
                        slot: round.slot,
                        boot: self.cfg.boot,
                    };
                    let (own, boot) = (self.cfg.addr, self.cfg.boot);
                    self.release_promise(resource, round.slot, own, boot);
                    for addr in round.granted_by {
                        self.send_message(addr, &message);
                    }
                }
                self.leases.dirty.insert(resource.to_string());
            }
            LeaseState::Lost { .. } => {}
        }
    }

    /// The acceptor's rule: promise slot `slot` of `resource` to `holder` (process
    /// `boot`) for a tenure with term `term` (`renew`: a tenure already granted)?
    ///
    /// Never while the slot is promised to another process and the promise has not run
    /// out: that keeps holders apart. A new tenure only with a term above every term this
    /// node knows: that makes terms rise (a majority that granted a term intersects the
    /// majority of the next tenure).
    fn grant(
        &mut self,
        now: Duration,
        (holder, boot): (SocketAddr, u64),
        resource: &str,
        (slot, term): (u16, u64),
        renew: bool,
    ) -> bool {
        if matches!(self.state, NodeState::Superseded | NodeState::Left) {
            return false;
        }
        let margins = self.cfg.quorum_margins();
        // Promises a previous process of this node made have not all run out yet.
        if now < self.started + margins.start_wait {
            return false;
        }
        let key = (resource.to_string(), slot);
        let current = self.quorum.promises.get(&key).copied();
        let same = current.is_some_and(|p| p.holder == holder && p.boot == boot);
        if current.is_some_and(|p| !same && p.until > now) {
            return false;
        }
        let renewal = renew || (same && current.is_some_and(|p| p.term == term));
        let known = self.known_term_of(resource, slot);
        if !renewal && term <= known {
            return false;
        }
        if current.is_none() && self.quorum.promises.len() >= MAX_PROMISED {
            self.purge_promises(now);
            if self.quorum.promises.len() >= MAX_PROMISED {
                warn!(
                    resource,
                    "too many ticket slots promised: refusing until old promises expire"
                );
                return false;
            }
        }
        self.quorum.promises.insert(
            key,
            Promise {
                holder,
                boot,
                term,
                until: now + margins.promise_for,
            },
        );
        let t = self
            .quorum
            .terms
            .entry((resource.to_string(), slot))
            .or_default();
        *t = (*t).max(term);
        true
    }

    /// The highest term of `resource` this node knows: granted, held or seen in records.
    fn known_term_of(&self, resource: &str, slot: u16) -> u64 {
        let granted = self
            .quorum
            .terms
            .get(&(resource.to_string(), slot))
            .copied()
            .unwrap_or(0);
        let own = self.leases.claims.get(resource).map_or(0, |c| c.known_term);
        granted.max(own).max(self.view.max_term(resource))
    }

    /// Forgets promises that ended long ago (a previous process of their holder's name
    /// cannot be waiting on them any more), and the terms of resources with none left.
    fn purge_promises(&mut self, now: Duration) {
        let keep = self.cfg.quorum_margins().start_wait;
        self.quorum.promises.retain(|_, p| p.until + keep > now);
        let promises = &self.quorum.promises;
        self.quorum
            .terms
            .retain(|key, _| promises.contains_key(key));
    }

    /// A member asks for (or renews) a promise.
    pub(super) fn handle_promise(
        &mut self,
        now: Duration,
        from: SocketAddr,
        (resource, slot, round, term, boot): (String, u16, u64, u64, u64),
        renew: bool,
    ) {
        let known = self.view.members.get(&from).map(|id| id.boot());
        if self.cfg.safety.quorum().is_none() || known != Some(boot) {
            return;
        }
        if validate_resource(&resource).is_err() {
            self.drop_datagram(from, DropReason::Invalid);
            return;
        }
        let granted = self.grant(now, (from, boot), &resource, (slot, term), renew);
        let taken_by = self
            .quorum
            .promises
            .get(&(resource.clone(), slot))
            .filter(|p| !granted && p.until > now && p.holder != from)
            .map(|p| p.holder);
        let answer = Message::Promised {
            taken_by,
            term: self.known_term_of(&resource, slot),
            resource,
            slot,
            round,
            granted,
            name: self.cfg.name.clone(),
        };
        self.send_message(from, &answer);
    }

    /// A member answered one of this node's rounds.
    pub(super) fn handle_promised(
        &mut self,
        now: Duration,
        from: SocketAddr,
        (resource, slot, round, granted, term): (String, u16, u64, bool, u64),
        (name, taken_by): (String, Option<SocketAddr>),
    ) {
        if !self.view.members.contains_key(&from) {
            return;
        }
        let Some(claim) = self.leases.claims.get_mut(&resource) else {
            return;
        };
        claim.known_term = claim.known_term.max(term);
        let current = claim
            .quorum
            .round
            .as_ref()
            .is_some_and(|r| r.id == round && r.slot == slot);
        if let Some(holder) = taken_by.filter(|_| current) {
            // A node holds one slot of a resource: the latest word on it counts.
            claim.quorum.taken.retain(|_, a| *a != holder);
            claim.quorum.taken.insert(slot, holder);
        }
        if granted && current {
            if let Some(r) = claim.quorum.round.as_mut() {
                r.granted_by.push(from);
            }
            self.granted(now, &resource, round, name);
        }
    }

    /// Acceptor `name` promised what round `round` of `resource` asked for; with a
    /// majority, acquire or extend the tenure.
    fn granted(&mut self, now: Duration, resource: &str, round: u64, name: String) {
        let Some(members) = self.cfg.safety.quorum() else {
            return;
        };
        let margins = self.cfg.quorum_margins();
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
        let Some(r) = claim.quorum.round.as_mut().filter(|r| r.id == round) else {
            return;
        };
        r.grants.insert(name);
        if r.counted || r.grants.len() * 2 <= usize::from(members) {
            return;
        }
        r.counted = true;
        let (sent, slot, term, acquire) = (r.sent, r.slot, r.term, r.acquire);
        let valid_until = sent + margins.fence_after;
        if now >= valid_until {
            return;
        }
        match claim.lease {
            LeaseState::Held { term: held, .. } if held == term && !acquire => {
                claim.quorum.fence_at = Some(valid_until);
                self.schedule(
                    valid_until,
                    CoreTimer::Fence {
                        resource: resource.to_string(),
                    },
                );
            }
            LeaseState::Idle if acquire => {
                let own = self.cfg.addr;
                let desired = self.view.placement(resource).desired.contains(&own);
                if !(claim.candidate() && desired)
                    || self.leaving
                    || !self.sync.ready
                    || self.state == NodeState::Superseded
                {
                    // The lease rules changed their mind meanwhile: let the slot go.
                    self.unpromise(now, resource, slot);
                    return;
                }
                claim.quorum.slot = slot;
                claim.quorum.taken.clear();
                claim.quorum.fence_at = Some(valid_until);
                self.schedule(
                    valid_until,
                    CoreTimer::Fence {
                        resource: resource.to_string(),
                    },
                );
                self.acquire(now, resource, "promised by a majority", Some(term));
            }
            _ => {}
        }
    }

    /// Gives up every holding whose promises may have run out by now: the application
    /// is told at once (the margins leave it `drop_within` to stop).
    pub(super) fn check_fences(&mut self, now: Duration) {
        if self.cfg.safety.quorum().is_none() || self.bug(|b| b.no_self_fencing) {
            return;
        }
        let due: Vec<String> = self
            .leases
            .claims
            .iter()
            .filter(|(_, c)| {
                matches!(c.lease, LeaseState::Held { .. })
                    && c.quorum.fence_at.is_some_and(|at| at <= now)
            })
            .map(|(r, _)| r.clone())
            .collect();
        for resource in due {
            warn!(
                resource,
                "no majority renewed the promises in time: giving the ticket up"
            );
            self.stats.fences += 1;
            self.lose(now, &resource, LostReason::NoQuorum);
            self.bump_record(now);
        }
    }

    /// This node's application dropped the lease of `slot` of `resource`: the promises to
    /// it end now, here and at every member.
    pub(super) fn unpromise(&mut self, now: Duration, resource: &str, slot: u16) {
        if self.cfg.safety.quorum().is_none() {
            return;
        }
        let (own, boot) = (self.cfg.addr, self.cfg.boot);
        self.release_promise(resource, slot, own, boot);
        if let Some(claim) = self.leases.claims.get_mut(resource) {
            claim.quorum.fence_at = None;
        }
        let mut members: Vec<SocketAddr> = self.view.members.keys().copied().collect();
        members.sort_unstable();
        let message = Message::Unpromise {
            resource: resource.to_string(),
            slot,
            boot,
        };
        for addr in members {
            self.send_message(addr, &message);
        }
        info!(resource, slot, ?now, "released the promises");
    }

    /// Ends the promise of `slot` of `resource` if it is `holder`'s (process `boot`).
    fn release_promise(&mut self, resource: &str, slot: u16, holder: SocketAddr, boot: u64) {
        let key = (resource.to_string(), slot);
        if self
            .quorum
            .promises
            .get(&key)
            .is_some_and(|p| p.holder == holder && p.boot == boot)
            && let Some(p) = self.quorum.promises.get_mut(&key)
        {
            p.until = Duration::ZERO;
        }
    }

    /// A member released its promises.
    pub(super) fn handle_unpromise(
        &mut self,
        from: SocketAddr,
        (resource, slot, boot): (String, u16, u64),
    ) {
        if !(self.view.members.contains_key(&from) || self.membership.leavers.contains(&from)) {
            return;
        }
        self.release_promise(&resource, slot, from, boot);
        // A candidate waiting for its next round asks at once if the lease rules let it.
        if let Some(claim) = self.leases.claims.get_mut(&resource)
            && claim.lease == LeaseState::Idle
        {
            claim.quorum.round_at = None;
            self.leases.dirty.insert(resource);
        }
    }

    /// What the promise bookkeeping holds: `(promises, slots with terms)`.
    pub fn promises_kept(&self) -> (usize, usize) {
        (self.quorum.promises.len(), self.quorum.terms.len())
    }
}
