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

/// Most ticket slots an acceptor keeps promises for: requests for more are refused (and
/// logged) until old promises expire.
const MAX_PROMISED: usize = 4096;

/// Most ticket slots one process may hold promises of at one acceptor.
const MAX_PROMISED_PER_HOLDER: usize = 256;

/// Most `(resource, slot)` terms an acceptor remembers; past it, terms of slots with no
/// promise left are forgotten.
const MAX_TERMS: usize = 2 * MAX_PROMISED;

/// A term more than this above what a node knows is not believed (a hostile or corrupt
/// message would otherwise push terms to the end of their range).
const MAX_TERM_STEP: u64 = 1 << 32;

/// One promise an acceptor made.
#[derive(Clone, Copy, Debug)]
struct Promise {
    holder: SocketAddr,
    boot: u64,
    term: u64,
    /// The round that last granted or renewed it.
    round: u64,
    until: Duration,
}

/// What an `Unpromise` releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    /// A tenure the holder gave up: the promise if it is for this term.
    Tenure(u64),
    /// A round that failed: the promise if that round made or last renewed it.
    Round(u64),
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
    /// The next round id of this node's own requests (answers echo the boot as well).
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
    /// The slot held (while holding or told to stop).
    pub(crate) slot: u16,
    /// The term of the tenure held (while holding or told to stop).
    pub(crate) term: u64,
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
        let (named, unnamed) = self.live_names();
        // Members whose record has not arrived yet (a restart at a new address, before
        // its old address is declared down) do not make the fleet too large.
        let too_many = named > usize::from(members);
        if too_many && !self.quorum.too_many_reported {
            warn!(
                live = named,
                members,
                "more live members than the quorum's size: holding nothing (two majorities \
                 could exist); set the quorum to the fleet's size"
            );
        }
        self.quorum.too_many_reported = too_many;
        !too_many && (named + unnamed) * 2 > usize::from(members)
    }

    /// Distinct names among the live members, this node's own included, and how many
    /// live members have no known name yet.
    fn live_names(&self) -> (usize, usize) {
        let mut names: BTreeSet<&str> = BTreeSet::new();
        names.insert(&self.cfg.name);
        let mut unnamed = 0;
        for addr in self.view.members.keys() {
            match self.name_at(addr) {
                Some(name) => {
                    names.insert(name);
                }
                None => unnamed += 1,
            }
        }
        (names.len(), unnamed)
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

    /// The slot a desired node that holds nothing asks for: the desired nodes that do not
    /// hold take the free slots in rank order, so nodes with one view ask for different
    /// ones.
    fn slot_to_ask(&mut self, resource: &str) -> Option<u16> {
        let own = self.cfg.addr;
        let placement = self.view.placement(resource);
        let claim = self.leases.claims.get_mut(resource)?;
        let tickets = claim.tickets.max(1);
        claim
            .quorum
            .taken
            .retain(|_, a| *a != own && placement.holders.contains(a));
        let free: Vec<u16> = (0..tickets)
            .filter(|s| !claim.quorum.taken.contains_key(s))
            .collect();
        let index = placement
            .desired
            .iter()
            .filter(|a| **a == own || !placement.holders.contains(a))
            .position(|a| *a == own)
            .unwrap_or(0);
        Some(if free.is_empty() {
            // What it learnt is out of date (the tickets shrank): start over.
            claim.quorum.taken.clear();
            (index % usize::from(tickets)) as u16
        } else {
            free[index % free.len()]
        })
    }

    /// Sends a round of promise requests for `resource`: a renewal while holding, a
    /// request for a slot otherwise.
    fn start_round(&mut self, now: Duration, resource: &str) {
        let margins = self.cfg.quorum_margins();
        let Some(lease) = self.leases.claims.get(resource).map(|c| c.lease) else {
            return;
        };
        let (slot, term, acquire) = match lease {
            LeaseState::Held { term, .. } => {
                let slot = self
                    .leases
                    .claims
                    .get(resource)
                    .map_or(0, |c| c.quorum.slot);
                (slot, term, false)
            }
            LeaseState::Idle => {
                let Some(slot) = self.slot_to_ask(resource) else {
                    return;
                };
                // Above every term it knows, its own grants included.
                let known = self.known_term_of(resource, slot);
                (slot, known.saturating_add(1), true)
            }
            LeaseState::Lost { .. } => return,
        };
        let id = self.quorum.next_round;
        self.quorum.next_round += 1;
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
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
        let (own, boot, name) = (self.cfg.addr, self.cfg.boot, self.cfg.name.clone());
        let renew = !acquire;
        if self.grant(now, (own, boot), resource, (slot, term, id), renew) {
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
    /// failed (a rival holds the slot, or too few answered): release what it got and ask
    /// again if the lease rules still say so.
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
                self.abandon_round(resource);
                self.leases.dirty.insert(resource.to_string());
            }
            LeaseState::Lost { .. } => {}
        }
    }

    /// Drops the acquisition round in flight for `resource`, if it has not acquired, and
    /// releases the promises it got, so that a rival asking for the same slot is not held
    /// up by them.
    fn abandon_round(&mut self, resource: &str) {
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
        if !claim
            .quorum
            .round
            .as_ref()
            .is_some_and(|r| r.acquire && !r.counted)
        {
            return;
        }
        let Some(round) = claim.quorum.round.take() else {
            return;
        };
        self.release_round(resource, &round);
    }

    /// Releases the promises round `round` got (here and at the members that granted).
    fn release_round(&mut self, resource: &str, round: &Round) {
        let (own, boot) = (self.cfg.addr, self.cfg.boot);
        self.release_promise(resource, round.slot, (own, boot), Release::Round(round.id));
        let message = Message::Unpromise {
            resource: resource.to_string(),
            slot: round.slot,
            boot,
            term: round.term,
            round: Some(round.id),
        };
        for addr in &round.granted_by {
            self.send_message(*addr, &message);
        }
    }

    /// The acceptor's rule: promise slot `slot` of `resource` to `holder` (process
    /// `boot`) for a tenure with term `term`, asked in round `round` (`renew`: a tenure
    /// already granted)?
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
        (slot, term, round): (u16, u64, u64),
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
        // Only slots of the resource's tickets, as the fleet's records say.
        if slot >= self.view.placement(resource).tickets {
            return false;
        }
        let key = (resource.to_string(), slot);
        let current = self.quorum.promises.get(&key).copied();
        let same = current.is_some_and(|p| p.holder == holder && p.boot == boot);
        if current.is_some_and(|p| !same && p.until > now) {
            return false;
        }
        // A request of an older tenure of the same process, arriving late.
        if same && current.is_some_and(|p| term < p.term) {
            return false;
        }
        let renewal = renew || (same && current.is_some_and(|p| p.term == term));
        if !renewal && term <= self.known_term_of(resource, slot) {
            return false;
        }
        if current.is_none() {
            let held = self
                .quorum
                .promises
                .values()
                .filter(|p| p.holder == holder && p.until > now)
                .count();
            if held >= MAX_PROMISED_PER_HOLDER {
                return false;
            }
            if self.quorum.promises.len() >= MAX_PROMISED {
                self.purge_promises(now);
                if self.quorum.promises.len() >= MAX_PROMISED {
                    warn!(
                        resource,
                        "too many ticket slots promised: refusing until old promises expire"
                    );
                    return false;
                }
            }
        }
        self.quorum.promises.insert(
            key.clone(),
            Promise {
                holder,
                boot,
                term,
                round,
                until: now + margins.promise_for,
            },
        );
        let t = self.quorum.terms.entry(key).or_default();
        *t = (*t).max(term);
        if self.quorum.terms.len() > MAX_TERMS {
            let promises = &self.quorum.promises;
            self.quorum
                .terms
                .retain(|key, _| promises.contains_key(key));
        }
        true
    }

    /// The highest term of slot `slot` of `resource` this node knows: granted, held or
    /// seen in records (records name terms per resource).
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
    /// cannot be waiting on them any more). Terms stay (see [`MAX_TERMS`]).
    fn purge_promises(&mut self, now: Duration) {
        let keep = self.cfg.quorum_margins().start_wait;
        self.quorum.promises.retain(|_, p| p.until + keep > now);
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
        if validate_resource(&resource).is_err()
            || term
                > self
                    .known_term_of(&resource, slot)
                    .saturating_add(MAX_TERM_STEP)
        {
            self.drop_datagram(from, DropReason::Invalid);
            return;
        }
        let granted = self.grant(now, (from, boot), &resource, (slot, term, round), renew);
        let taken_by = self
            .quorum
            .promises
            .get(&(resource.clone(), slot))
            .filter(|p| !granted && p.until > now && p.holder != from)
            .map(|p| p.holder);
        let answer = Message::Promised {
            term: self.known_term_of(&resource, slot),
            resource,
            slot,
            round,
            boot,
            granted,
            taken_by,
        };
        self.send_message(from, &answer);
    }

    /// A member answered one of this node's rounds.
    pub(super) fn handle_promised(
        &mut self,
        now: Duration,
        from: SocketAddr,
        (resource, slot, round, boot, granted, term): (String, u16, u64, u64, bool, u64),
        taken_by: Option<SocketAddr>,
    ) {
        // An answer to a round of an earlier process of this node does not count.
        if boot != self.cfg.boot || !self.view.members.contains_key(&from) {
            return;
        }
        // A majority counts names: the name the fleet's records give the sender.
        let Some(name) = self.name_at(&from).map(str::to_string) else {
            return;
        };
        let Some(claim) = self.leases.claims.get_mut(&resource) else {
            return;
        };
        if term > claim.known_term.saturating_add(MAX_TERM_STEP) {
            self.drop_datagram(from, DropReason::Invalid);
            return;
        }
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
                    if let Some(round) = claim.quorum.round.take() {
                        self.release_round(resource, &round);
                    }
                    return;
                }
                claim.quorum.slot = slot;
                claim.quorum.term = term;
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

    /// This node's application dropped the lease of `resource`: the promises of its
    /// tenure end now, here and at every member.
    pub(super) fn unpromise(&mut self, resource: &str) {
        if self.cfg.safety.quorum().is_none() {
            return;
        }
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
        claim.quorum.fence_at = None;
        let (slot, term) = (claim.quorum.slot, claim.quorum.term);
        let (own, boot) = (self.cfg.addr, self.cfg.boot);
        self.release_promise(resource, slot, (own, boot), Release::Tenure(term));
        let mut members: Vec<SocketAddr> = self.view.members.keys().copied().collect();
        members.sort_unstable();
        let message = Message::Unpromise {
            resource: resource.to_string(),
            slot,
            boot,
            term,
            round: None,
        };
        for addr in members {
            self.send_message(addr, &message);
        }
        info!(resource, slot, term, "released the promises");
    }

    /// Ends the promise of `slot` of `resource` if it is `holder`'s (process `boot`) and
    /// `which` names it.
    fn release_promise(
        &mut self,
        resource: &str,
        slot: u16,
        (holder, boot): (SocketAddr, u64),
        which: Release,
    ) {
        let key = (resource.to_string(), slot);
        if let Some(p) = self.quorum.promises.get_mut(&key)
            && p.holder == holder
            && p.boot == boot
            && match which {
                Release::Tenure(term) => p.term == term,
                Release::Round(round) => p.round == round,
            }
        {
            p.until = Duration::ZERO;
        }
    }

    /// A member released promises: a tenure it gave up, or a round that failed.
    pub(super) fn handle_unpromise(
        &mut self,
        from: SocketAddr,
        (resource, slot, boot, term, round): (String, u16, u64, u64, Option<u64>),
    ) {
        // Only the holder's own address can end its promise, member or not (a leaving
        // node may have been dropped from views by the time its release arrives).
        let which = round.map_or(Release::Tenure(term), Release::Round);
        self.release_promise(&resource, slot, (from, boot), which);
        // A candidate waiting for its next round asks at once if the lease rules let it.
        if which == Release::Tenure(term)
            && self
                .leases
                .claims
                .get(&resource)
                .is_some_and(|c| c.lease == LeaseState::Idle)
        {
            self.abandon_round(&resource);
            if let Some(claim) = self.leases.claims.get_mut(&resource) {
                claim.quorum.round_at = None;
            }
            self.leases.dirty.insert(resource);
        }
    }

    /// To whom, and for which term, slot `slot` of `resource` is promised now.
    #[cfg(test)]
    pub(super) fn promised_to(
        &self,
        now: Duration,
        resource: &str,
        slot: u16,
    ) -> Option<(SocketAddr, u64)> {
        self.quorum
            .promises
            .get(&(resource.to_string(), slot))
            .filter(|p| p.until > now)
            .map(|p| (p.holder, p.term))
    }
}
