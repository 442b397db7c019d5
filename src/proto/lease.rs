//! The lease rules, all in one place.
//!
//! A node **acquires** `r` when it is ready, it is among the desired owners of `r`, and
//! no other holder blocks it (every live member whose record says it holds `r` is itself
//! desired; a live member whose record is unknown counts as a possible holder). A blocker
//! that neither yields nor goes down within `handoff_timeout` + one anti-entropy period
//! is passed over, and that is logged.
//!
//! A holder **loses** `r` when it leaves the desired owners, when a newer process with
//! its name appears, when it withdraws, or when it leaves. It reports the loss at once
//! and **yields** (clears `held` in its record, which it sends to the nodes it unblocks)
//! when the application drops the lease, or after `handoff_timeout` at the latest.
//! Dropping a lease that was not lost steps down: the node yields and stays out of the
//! candidates for `step_down_backoff`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tracing::{info, warn};

use super::{CommandError, Core, CoreTimer, Event, NodeState, Owners};
use crate::record::{RECORD_CAP, validate_resource};

/// Copies of its record a yielding holder sends each node it unblocks.
const HANDOVER_COPIES: usize = 2;

/// Identifies one tenure of one resource on one node: the node numbers its acquisitions
/// 1, 2, 3, ... from its start, across resources. It tells one tenure from the next on
/// this node; it is not a fencing token across nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(u64);

impl LeaseId {
    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }

    pub(crate) const FIRST: LeaseId = LeaseId(1);

    pub(crate) fn next(self) -> LeaseId {
        LeaseId(self.0 + 1)
    }
}

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a lease was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LostReason {
    /// A higher-ranked candidate became ready (or tickets shrank): the node left the
    /// desired owners.
    Displaced,
    /// A newer process with this node's name runs.
    Superseded,
    /// The application withdrew its candidacy.
    Withdrawn,
    /// The node is leaving the fleet.
    Leaving,
    /// The node stopped without handing over (a crash-like stop, or its protocol thread
    /// ended); reported by the API, never by the core.
    Stopped,
    /// The node lost every member and does not run alone ([`Alone::Never`](super::Alone::Never)).
    Isolated,
    /// Quorum mode: no majority of the fleet renewed its promises in time (a partition,
    /// loss, or a pause), or it sees no majority live: it gives the ticket up before the
    /// majority side may take it.
    NoQuorum,
}

impl LostReason {
    /// A short label, for logs and the debug endpoint.
    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::Displaced => "displaced",
            LostReason::Superseded => "superseded",
            LostReason::Withdrawn => "withdrawn",
            LostReason::Leaving => "leaving",
            LostReason::Stopped => "stopped",
            LostReason::Isolated => "isolated",
            LostReason::NoQuorum => "no-quorum",
        }
    }
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one of this node's leases stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// Not holding.
    Idle,
    /// Holding since `since`, with fencing term `term`.
    Held {
        lease: LeaseId,
        since: Duration,
        term: u64,
    },
    /// Told to stop; still a holder until the lease is dropped or the deadline passes.
    Lost { lease: LeaseId },
}

/// This node's interest in one resource.
#[derive(Clone, Debug)]
pub(crate) struct OwnClaim {
    pub tickets: u16,
    pub lease: LeaseState,
    /// The application withdrew: the claim goes once the lease is yielded.
    pub withdrawn: bool,
    /// Stepped down: out of the candidates until then.
    pub backoff_until: Option<Duration>,
    /// Holders that block, and when this node, ready and desired, first saw each block.
    pub blocked_since: BTreeMap<SocketAddr, Duration>,
    /// When this node, ready and desired, first saw members whose records it lacks (each
    /// a possible holder); such a member blocks from then or from when it went missing.
    pub missing_blocked_since: Option<Duration>,
    /// The tickets mismatch last reported, if any.
    pub mismatch: Option<u16>,
    /// When the pending escape check fires, if one is scheduled.
    pub escape_at: Option<Duration>,
    /// The lease is dropped only once a job this crate runs has ended: no forced yield
    /// (see [`Core::keep_until_dropped`]).
    pub keep_until_dropped: bool,
    /// The highest fencing term of the resource this node knows: from its own leases and
    /// from every record it has seen; published in its record.
    pub known_term: u64,
    /// Quorum mode: rounds, the slot held, the fencing deadline.
    pub quorum: super::quorum::QuorumClaim,
}

impl OwnClaim {
    pub fn candidate(&self) -> bool {
        !self.withdrawn && self.backoff_until.is_none()
    }

    pub fn held(&self) -> bool {
        !matches!(self.lease, LeaseState::Idle)
    }
}

/// The resources this node competes for or watches.
pub(super) struct Leases {
    pub(super) claims: BTreeMap<String, OwnClaim>,
    pub(super) watched: BTreeSet<String>,
    pub(super) owners_seen: BTreeMap<String, Owners>,
    /// Resources whose index changed: evaluate them and report their owners.
    pub(super) dirty: BTreeSet<String>,
    /// Membership changed: evaluate every claim (its owners change only with its index).
    pub(super) evaluate_claims: bool,
    pub(super) next_lease: LeaseId,
}

impl Core {
    /// Starts competing for `resource` with `tickets`.
    pub fn obtain(
        &mut self,
        now: Duration,
        resource: &str,
        tickets: u16,
    ) -> Result<(), CommandError> {
        validate_resource(resource)?;
        if tickets == 0 {
            return Err(CommandError::ZeroTickets);
        }
        if self.leaving || matches!(self.state, NodeState::Superseded | NodeState::Left) {
            return Err(CommandError::NotRunning(self.state));
        }
        if self
            .leases
            .claims
            .get(resource)
            .is_some_and(|c| !c.withdrawn)
        {
            return Err(CommandError::AlreadyCompeting(resource.to_string()));
        }
        let previous = self.leases.claims.get(resource).cloned();
        let claim = OwnClaim {
            tickets,
            lease: previous
                .as_ref()
                .map_or(super::lease::LeaseState::Idle, |c| c.lease),
            withdrawn: false,
            // Withdrawing and competing again does not cut a step-down back-off short.
            backoff_until: previous.as_ref().and_then(|c| c.backoff_until),
            blocked_since: BTreeMap::new(),
            missing_blocked_since: None,
            mismatch: None,
            escape_at: None,
            keep_until_dropped: false,
            quorum: previous
                .as_ref()
                .map(|c| c.quorum.clone())
                .unwrap_or_default(),
            known_term: previous
                .as_ref()
                .map_or(0, |c| c.known_term)
                .max(self.view.max_term(resource)),
        };
        self.leases.claims.insert(resource.to_string(), claim);
        let size = self.build_record(u64::MAX).encode().len();
        if size > RECORD_CAP {
            match previous {
                Some(previous) => self.leases.claims.insert(resource.to_string(), previous),
                None => self.leases.claims.remove(resource),
            };
            return Err(CommandError::RecordFull {
                resource: resource.to_string(),
                size,
                cap: RECORD_CAP,
            });
        }
        info!(resource, tickets, "competing");
        self.bump_record(now);
        self.leases.dirty.insert(resource.to_string());
        self.after_input(now);
        Ok(())
    }

    /// Stops competing for `resource`. A held lease is reported
    /// lost and yielded when dropped; a node that does not compete ignores this.
    pub fn withdraw(&mut self, now: Duration, resource: &str) {
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
        claim.withdrawn = true;
        match claim.lease {
            // A claim backing off stays (withdrawn, out of the record) until its back-off
            // ends, so that competing again at once still waits it out.
            LeaseState::Idle if claim.backoff_until.is_some() => {}
            LeaseState::Idle => {
                self.leases.claims.remove(resource);
            }
            LeaseState::Held { .. } => self.lose(now, resource, super::LostReason::Withdrawn),
            LeaseState::Lost { .. } => {}
        }
        info!(resource, "withdrawn");
        self.bump_record(now);
        self.after_input(now);
    }

    /// The application dropped lease `lease` of `resource`: yield it (and step down if
    /// it was not lost).
    pub fn lease_dropped(&mut self, now: Duration, resource: &str, lease: LeaseId) {
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
        match claim.lease {
            LeaseState::Held { lease: id, .. } if id == lease => {
                let until = now + self.cfg.step_down_backoff;
                claim.backoff_until = Some(until);
                info!(resource, backoff = ?self.cfg.step_down_backoff, "stepping down");
                self.schedule(
                    until,
                    CoreTimer::Backoff {
                        resource: resource.to_string(),
                    },
                );
                self.yield_lease(now, resource, false);
            }
            LeaseState::Lost { lease: id } if id == lease => self.yield_lease(now, resource, false),
            _ => {}
        }
        self.after_input(now);
    }

    /// Leaves the fleet: every lease is lost, yielded when dropped (or after
    /// `handoff_timeout`), then the node leaves the membership and reports [`Event::Left`].
    pub fn leave(&mut self, now: Duration) {
        if self.leaving || self.state == NodeState::Left {
            return;
        }
        info!("leaving");
        self.leaving = true;
        self.state = NodeState::Leaving;
        self.events
            .push_back(Event::StateChanged(NodeState::Leaving));
        self.lose_all(now, super::LostReason::Leaving);
        for claim in self.leases.claims.values_mut() {
            claim.withdrawn = true;
        }
        self.leases.claims.retain(|_, c| c.held());
        self.bump_record(now);
        if self.leases.claims.is_empty() {
            self.finish_leave(now, false);
        } else {
            self.schedule(now + self.cfg.handoff_timeout, CoreTimer::LeaveDeadline);
        }
        self.after_input(now);
    }

    pub(super) fn finish_leave(&mut self, now: Duration, forced: bool) {
        if self.state == NodeState::Left {
            return;
        }
        let resources: Vec<String> = self.leases.claims.keys().cloned().collect();
        for resource in resources {
            self.yield_lease(now, &resource, forced);
        }
        self.leases.claims.clear();
        self.bump_record(now);
        // Tell the members directly that nothing is held here any more, then leave.
        let own = self.own_record();
        let mut members: Vec<SocketAddr> = self.view.members.keys().copied().collect();
        members.sort_unstable();
        for addr in members {
            self.send_records(addr, std::slice::from_ref(&own));
            self.send_message(addr, &crate::wire::Message::Leaving);
        }
        if let Err(err) = self
            .membership
            .foca
            .leave_cluster(&mut self.membership.runtime)
        {
            warn!(%err, "leaving the membership failed");
        }
        self.drain_runtime(now);
        self.conn.active = false;
        self.state = NodeState::Left;
        self.timers.heap.clear();
        info!("left");
        self.events.push_back(Event::StateChanged(NodeState::Left));
        self.events.push_back(Event::Left);
    }

    /// Marks the claim on `resource` as one whose lease the application drops only once
    /// its job has ended (the job is run and cancelled by this crate): a lost lease is then
    /// not yielded after `handoff_timeout` while the job still runs, only when the lease is
    /// dropped (or when a leave's deadline passes).
    pub fn keep_until_dropped(&mut self, resource: &str) {
        if let Some(claim) = self.leases.claims.get_mut(resource) {
            claim.keep_until_dropped = true;
        }
    }

    pub(super) fn handoff_expired(&mut self, now: Duration, resource: &str, lease: LeaseId) {
        let Some(claim) = self.leases.claims.get(resource) else {
            return;
        };
        let expired = claim.lease == LeaseState::Lost { lease };
        if expired && claim.keep_until_dropped {
            warn!(
                resource,
                "the job still runs handoff_timeout after its lease was lost: the ticket is yielded when it ends"
            );
        } else if expired {
            warn!(
                resource,
                "lease not dropped within handoff_timeout: yielding anyway"
            );
            self.yield_lease(now, resource, true);
        }
    }

    pub(super) fn backoff_expired(&mut self, now: Duration, resource: &str) {
        if let Some(claim) = self.leases.claims.get_mut(resource)
            && claim.backoff_until.is_some_and(|t| t <= now)
        {
            claim.backoff_until = None;
            if claim.withdrawn && !claim.held() {
                self.leases.claims.remove(resource);
                return;
            }
            self.bump_record(now);
            self.leases.dirty.insert(resource.to_string());
        }
    }

    pub(super) fn lose_all(&mut self, now: Duration, reason: super::LostReason) {
        let held: Vec<String> = self
            .leases
            .claims
            .iter()
            .filter(|(_, c)| matches!(c.lease, LeaseState::Held { .. }))
            .map(|(r, _)| r.clone())
            .collect();
        for resource in held {
            self.lose(now, &resource, reason);
        }
    }

    pub(super) fn lose(&mut self, now: Duration, resource: &str, reason: super::LostReason) {
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
        let LeaseState::Held { lease, since, .. } = claim.lease else {
            return;
        };
        claim.lease = LeaseState::Lost { lease };
        self.stats.losses += 1;
        info!(resource, %reason, held_for = ?now.saturating_sub(since), "lease lost");
        self.events.push_back(Event::Lost {
            resource: resource.to_string(),
            lease,
            reason,
        });
        self.schedule(
            now + self.cfg.handoff_timeout,
            CoreTimer::Handoff {
                resource: resource.to_string(),
                lease,
            },
        );
    }

    fn yield_lease(&mut self, now: Duration, resource: &str, forced: bool) {
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
        let lease = match claim.lease {
            LeaseState::Idle => return,
            LeaseState::Held { lease, .. } | LeaseState::Lost { lease } => lease,
        };
        claim.lease = LeaseState::Idle;
        claim.quorum.fence_at = None;
        // Quorum mode: the application dropped the lease, so the promises may end now. A
        // forced yield lets them run out instead: the application may still be stopping.
        if !forced {
            self.unpromise(resource);
        }
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
        if claim.withdrawn && claim.backoff_until.is_none() && !self.leaving {
            self.leases.claims.remove(resource);
        }
        self.stats.yields += 1;
        info!(resource, forced, "yielded");
        self.events.push_back(Event::Yielded {
            resource: resource.to_string(),
            lease,
            forced,
        });
        self.bump_record(now);
        self.after_record_change();
        // Send the new record straight to the nodes this unblocks, twice: a lost copy
        // would leave them to gossip, tens of milliseconds later (at 1 % loss, one
        // handover in a hundred), and a second small datagram is cheap.
        let placement = self.view.placement(resource);
        let own = self.own_record();
        let direct = !self.bug(|b| b.no_direct_repair);
        for addr in placement.desired.into_iter().filter(|_| direct) {
            if addr != self.cfg.addr {
                for _ in 0..HANDOVER_COPIES {
                    self.send_records(addr, std::slice::from_ref(&own));
                }
            }
        }
        self.leases.dirty.insert(resource.to_string());
        if self.leaving && !self.leases.claims.values().any(OwnClaim::held) {
            self.finish_leave(now, forced);
        }
    }

    /// Reindexes our own record right away, so decisions in this step see it.
    fn after_record_change(&mut self) {
        let own = self.cfg.addr;
        if !super::store::lock(&self.store).changed.remove(&own) {
            return;
        }
        let touched = {
            let store = super::store::lock(&self.store);
            self.view.reindex(own, &store, Duration::ZERO)
        };
        self.leases.dirty.extend(touched);
    }

    /// Applies the lease rules to `resource`.
    pub(super) fn evaluate(&mut self, now: Duration, resource: &str) {
        self.after_record_change();
        let placement = self.view.placement(resource);
        let own = self.cfg.addr;
        let superseded = self.state == NodeState::Superseded;
        let keep_when_displaced = self.bug(|b| b.never_yield_when_displaced);
        let hold_off = !self.bug(|b| b.acquire_before_synced || b.no_ready_hold_off);
        // A disconnected node that still hears the fleet does not run alone.
        let alone_barred = !self.conn.active && !self.may_run_alone(now);
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };

        // Tickets agreement.
        let mismatch =
            (claim.candidate() && placement.tickets != 0 && placement.tickets != claim.tickets)
                .then_some(placement.tickets);
        if mismatch != claim.mismatch {
            claim.mismatch = mismatch;
            let ours = claim.tickets;
            self.events.push_back(match mismatch {
                Some(effective) => {
                    warn!(
                        resource,
                        ours, effective, "tickets disagree with the other candidates"
                    );
                    Event::TicketsMismatch {
                        resource: resource.to_string(),
                        ours,
                        effective,
                    }
                }
                None => Event::TicketsAgreed {
                    resource: resource.to_string(),
                },
            });
        }

        // Terms travel in records: remember the highest seen, to publish and to exceed.
        claim.known_term = claim.known_term.max(self.view.max_term(resource));
        let desired = placement.desired.contains(&own);
        let isolated = self.cfg.alone == super::Alone::Never && !self.conn.active;
        let quorum = self.cfg.safety.quorum().is_some();
        let no_quorum = quorum && !self.quorum_seen();
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
        match claim.lease {
            LeaseState::Held { .. } => {
                if isolated {
                    warn!(
                        resource,
                        "lost every member and does not run alone: giving the ticket up"
                    );
                    self.lose(now, resource, super::LostReason::Isolated);
                    self.bump_record(now);
                } else if no_quorum && !self.bug(|b| b.no_self_fencing) {
                    warn!(
                        resource,
                        "no majority of the fleet is live here: giving the ticket up"
                    );
                    self.lose(now, resource, super::LostReason::NoQuorum);
                    self.bump_record(now);
                } else if !desired && !superseded && !keep_when_displaced {
                    self.lose(now, resource, super::LostReason::Displaced);
                    self.bump_record(now);
                }
            }
            LeaseState::Lost { .. } => {}
            LeaseState::Idle => {
                if !(claim.candidate()
                    && desired
                    && self.sync.ready
                    && !self.leaving
                    && !superseded)
                    || alone_barred
                {
                    claim.blocked_since.clear();
                    claim.missing_blocked_since = None;
                    if alone_barred {
                        self.check_alone_later();
                    }
                    return;
                }
                // Quorum mode: the promises of a majority decide, not the records: no
                // hold-off, no blockers, no escape.
                if quorum {
                    if !no_quorum {
                        self.want_promises(now, resource);
                    }
                    return;
                }
                // A node that just became ready waits one probe round trip, so that an
                // acquisition another node made just before it was ready reaches it.
                if let Some(ready_at) = self.sync.ready_at.filter(|_| hold_off) {
                    let hold_off = ready_at + self.cfg.timing.probe_rtt;
                    if self.conn.active && now < hold_off {
                        if claim.escape_at != Some(hold_off) {
                            claim.escape_at = Some(hold_off);
                            self.schedule(
                                hold_off,
                                CoreTimer::Escape {
                                    resource: resource.to_string(),
                                },
                            );
                        }
                        return;
                    }
                }
                let blockers: Vec<SocketAddr> = placement
                    .holders
                    .iter()
                    .filter(|h| **h != own && !placement.desired.contains(h))
                    .copied()
                    .collect();
                claim.blocked_since.retain(|b, _| blockers.contains(b));
                for b in &blockers {
                    claim.blocked_since.entry(*b).or_insert(now);
                }
                let missing = self.view.missing.len();
                if missing == 0 {
                    claim.missing_blocked_since = None;
                } else {
                    claim.missing_blocked_since.get_or_insert(now);
                }
                let patience = self.cfg.handoff_timeout + self.cfg.timing.anti_entropy_interval;
                let missing_deadline = claim
                    .missing_blocked_since
                    .zip(self.view.latest_missing())
                    .map(|(seen, since)| seen.max(since) + patience);
                let waiting = claim
                    .blocked_since
                    .values()
                    .map(|since| *since + patience)
                    .chain(missing_deadline)
                    .filter(|deadline| *deadline > now)
                    .max();
                if let Some(deadline) = waiting {
                    // Look again when the last blocker's patience runs out.
                    if claim.escape_at.is_some_and(|at| at >= deadline && at > now) {
                        return;
                    }
                    claim.escape_at = Some(deadline);
                    self.schedule(
                        deadline,
                        CoreTimer::Escape {
                            resource: resource.to_string(),
                        },
                    );
                    return;
                }
                let blocked = !blockers.is_empty() || missing > 0;
                if blocked {
                    warn!(
                        resource,
                        ?blockers,
                        missing_records = missing,
                        "blockers neither yielded nor went down: acquiring anyway"
                    );
                    self.stats.escapes += 1;
                }
                let reason = if blocked {
                    "blockers timed out"
                } else if self.conn.active {
                    "desired"
                } else {
                    "desired, running alone"
                };
                self.acquire(now, resource, reason, None);
            }
        }
    }

    /// Acquires `resource`: with the fencing term `term` (quorum mode, where the
    /// acceptors checked it), or one above every term this node knows.
    pub(super) fn acquire(
        &mut self,
        now: Duration,
        resource: &str,
        reason: &str,
        term: Option<u64>,
    ) {
        let lease = self.leases.next_lease;
        self.leases.next_lease = lease.next();
        let seen = self.view.max_term(resource);
        let Some(claim) = self.leases.claims.get_mut(resource) else {
            return;
        };
        // One above every term this node knows of: a successor that saw its
        // predecessor's term (or a record naming it) fences it off.
        let term = term.unwrap_or(claim.known_term.max(seen).saturating_add(1));
        claim.known_term = claim.known_term.max(term);
        claim.lease = LeaseState::Held {
            lease,
            since: now,
            term,
        };
        claim.blocked_since.clear();
        claim.missing_blocked_since = None;
        claim.escape_at = None;
        // A failover: the previous holder went away (suspected or down) before this.
        let gone_since = self
            .membership
            .lost_since
            .iter()
            .filter(|(addr, _)| !self.view.members.contains_key(addr))
            .map(|(_, t)| *t)
            .max();
        if let Some(since) = gone_since {
            self.stats.last_failover = Some(now.saturating_sub(since));
        }
        self.membership
            .lost_since
            .retain(|addr, _| self.view.members.contains_key(addr));
        self.stats.acquisitions += 1;
        info!(resource, lease = lease.get(), term, reason, "acquired");
        self.events.push_back(Event::Acquired {
            resource: resource.to_string(),
            lease,
            term,
        });
        self.bump_record(now);
        self.after_record_change();
        // Nodes that could conflict (ready or about to be) hear it directly, not only by
        // gossip.
        let own = self.own_record();
        let interested = self.view.interested(resource);
        let direct = !self.bug(|b| b.no_direct_repair);
        for addr in interested.into_iter().filter(|_| direct) {
            if addr != self.cfg.addr {
                self.send_records(addr, std::slice::from_ref(&own));
            }
        }
    }
}
