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

/// Most resources an acceptor keeps promises and terms for: requests for more are
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
    /// The highest term per resource this node granted.
    terms: BTreeMap<String, u64>,
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
    counted: bool,
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
    /// Rounds that failed since the last acquisition: the slot asked for moves on.
    attempts: u16,
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
        let rank = self
            .view
            .placement(resource)
            .desired
            .iter()
            .position(|a| *a == own)
            .unwrap_or(0);
        let id = self.quorum.next_round;
        self.quorum.next_round += 1;
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
        let (slot, term) = match claim.lease {
            LeaseState::Held { term, .. } => (claim.quorum.slot, term),
            LeaseState::Idle => {
                let tickets = usize::from(claim.tickets.max(1));
                let slot = (rank + usize::from(claim.quorum.attempts)) % tickets;
                (slot as u16, claim.known_term + 1)
            }
            LeaseState::Lost { .. } => return,
        };
        claim.quorum.round = Some(Round {
            id,
            sent: now,
            slot,
            term,
            grants: BTreeSet::new(),
            counted: false,
        });
        claim.quorum.round_at = Some(now + margins.renew_every);
        self.schedule(
            now + margins.renew_every,
            CoreTimer::QuorumRound {
                resource: resource.to_string(),
            },
        );
        let (boot, name) = (self.cfg.boot, self.cfg.name.clone());
        if self.grant(now, own, boot, resource, slot, term) {
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
                claim.quorum.attempts = claim.quorum.attempts.wrapping_add(1);
                self.leases.dirty.insert(resource.to_string());
            }
            LeaseState::Lost { .. } => {}
        }
    }

    /// The acceptor's rule: promise slot `slot` of `resource` to `holder` (process
    /// `boot`) for a tenure with term `term`?
    fn grant(
        &mut self,
        now: Duration,
        holder: SocketAddr,
        boot: u64,
        resource: &str,
        slot: u16,
        term: u64,
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
        let renewal = same && current.is_some_and(|p| p.term == term);
        let known = self.known_term_of(resource);
        if !renewal && term <= known {
            return false;
        }
        if current.is_none() && !self.quorum.terms.contains_key(resource) {
            self.purge_promises(now);
            if self.quorum.terms.len() >= MAX_PROMISED {
                warn!(
                    resource,
                    "too many resources promised: refusing until old promises expire"
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
        let t = self.quorum.terms.entry(resource.to_string()).or_default();
        *t = (*t).max(term);
        true
    }

    /// The highest term of `resource` this node knows: granted, held or seen in records.
    fn known_term_of(&self, resource: &str) -> u64 {
        let granted = self.quorum.terms.get(resource).copied().unwrap_or(0);
        let own = self.leases.claims.get(resource).map_or(0, |c| c.known_term);
        granted.max(own).max(self.view.max_term(resource))
    }

    /// Forgets promises that ended long ago (a previous process of their holder's name
    /// cannot be waiting on them any more), and the terms of resources with none left.
    fn purge_promises(&mut self, now: Duration) {
        let keep = self.cfg.quorum_margins().start_wait;
        self.quorum.promises.retain(|_, p| p.until + keep > now);
        let promised: BTreeSet<String> = self
            .quorum
            .promises
            .keys()
            .map(|(r, _)| r.clone())
            .collect();
        self.quorum.terms.retain(|r, _| promised.contains(r));
    }

    /// A member asks for (or renews) a promise.
    pub(super) fn handle_promise(
        &mut self,
        now: Duration,
        from: SocketAddr,
        (resource, slot, round, term, boot): (String, u16, u64, u64, u64),
    ) {
        let known = self.view.members.get(&from).map(|id| id.boot());
        if self.cfg.safety.quorum().is_none() || known != Some(boot) {
            return;
        }
        if validate_resource(&resource).is_err() {
            self.drop_datagram(from, DropReason::Invalid);
            return;
        }
        let granted = self.grant(now, from, boot, &resource, slot, term);
        let answer = Message::Promised {
            term: self.known_term_of(&resource),
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
        (resource, slot, round, granted, term, name): (String, u16, u64, bool, u64, String),
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
        if granted && current {
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
        let (sent, slot, term) = (r.sent, r.slot, r.term);
        let valid_until = sent + margins.fence_after;
        if now >= valid_until {
            return;
        }
        match claim.lease {
            LeaseState::Held { term: held, .. } if held == term => {
                claim.quorum.fence_at = Some(valid_until);
                self.schedule(
                    valid_until,
                    CoreTimer::Fence {
                        resource: resource.to_string(),
                    },
                );
            }
            LeaseState::Idle => {
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
                claim.quorum.attempts = 0;
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
        if self.view.members.contains_key(&from) || self.membership.leavers.contains(&from) {
            self.release_promise(&resource, slot, from, boot);
        }
    }

    /// What the promise bookkeeping holds: `(promises, resources with terms)`.
    pub fn promises_kept(&self) -> (usize, usize) {
        (self.quorum.promises.len(), self.quorum.terms.len())
    }
}
