//! The core's timers: foca's (tagged with the foca instance they belong to) and the
//! election's own, in one queue ordered by deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use foca::Timer;
use tracing::{debug, warn};

/// The pending timers.
pub(super) struct Timers {
    pub(super) heap: BinaryHeap<Reverse<(Duration, CoreTimer, u64)>>,
    pub(super) seq: u64,
    /// When the repair timer fires next.
    pub(super) repair_at: Duration,
    /// When the pending [`CoreTimer::AloneCheck`] fires, if one is scheduled.
    pub(super) alone_check_at: Option<Duration>,
}

use super::{Alone, Core, LeaseId, NodeId};

impl Core {
    pub(super) fn schedule(&mut self, at: Duration, timer: CoreTimer) {
        self.timers.seq += 1;
        self.timers.heap.push(Reverse((at, timer, self.timers.seq)));
    }

    pub(super) fn fire(&mut self, now: Duration, timer: CoreTimer) {
        match timer {
            CoreTimer::Foca { instance, timer } => {
                if instance == self.membership.foca_instance
                    && matches!(timer, Timer::PeriodicGossip(_))
                    && self.membership.foca.updates_backlog() == 0
                    && self.membership.foca.custom_broadcast_backlog() == 0
                {
                    self.membership.parked_gossip = Some((instance, timer));
                    return;
                }
                if instance == self.membership.foca_instance && (self.conn.active || !self.leaving)
                {
                    // foca forgets down members after `DORMANT_FOR`, seeds too: put a
                    // seed's placeholder back, so announces to down members keep trying it.
                    let forgot_seed = matches!(&timer, Timer::RemoveDown(id) if self.cfg.seeds.contains(&id.addr()));
                    self.membership.declaring = matches!(timer, Timer::ChangeSuspectToDown { .. });
                    if let Err(err) = self
                        .membership
                        .foca
                        .handle_timer(timer, &mut self.membership.runtime)
                    {
                        debug!(%err, "foca timer failed");
                    }
                    if forgot_seed {
                        self.seed_placeholders(now);
                    }
                    self.drain_runtime(now);
                    self.membership.declaring = false;
                }
            }
            CoreTimer::Announce => {
                // Re-announce until connected; `Idle` and `reconnect` schedule this again.
                if !self.conn.active && !self.leaving {
                    self.announce(now);
                    self.schedule(now + self.cfg.timing.announce_interval, CoreTimer::Announce);
                }
            }
            CoreTimer::SyncTimeout => {
                // Re-armed until the node is ready: one that connected, never synced and
                // then lost every member runs alone `sync_timeout` after it lost them.
                if self.sync.ready || self.leaving {
                    return;
                }
                let wait = self.alone_after();
                let due = self.conn.inactive_since + wait;
                if self.conn.active {
                    self.schedule(now + wait, CoreTimer::SyncTimeout);
                } else if now >= due {
                    if self.cfg.alone == Alone::Never {
                        warn!(
                            after = ?wait,
                            "reached nobody; not running alone (alone: never): check the join list"
                        );
                    } else {
                        // `update_state` says it at WARN.
                        debug!(after = ?wait, "reached nobody: running alone");
                        self.set_ready(now);
                    }
                } else {
                    self.schedule(due, CoreTimer::SyncTimeout);
                }
            }
            CoreTimer::Repair => {
                if now < self.timers.repair_at {
                    return; // superseded by an earlier one
                }
                self.pull_missing(now);
                if self.conn.active && !self.sync.members_synced {
                    self.request_members(now, None);
                }
                if self.conn.active && !self.sync.ready {
                    // Confirm the view with a peer before taking anything over.
                    self.send_digest(now);
                }
                // Fast while something is missing or unconfirmed, else at the
                // anti-entropy pace (a member seen coming up also brings it forward).
                let busy = !self.view.missing.is_empty() || !self.sync.ready;
                let timing = &self.cfg.timing;
                let next = if busy {
                    timing.repair_interval
                } else {
                    timing.anti_entropy_interval
                };
                self.timers.repair_at = now + next;
                self.schedule(self.timers.repair_at, CoreTimer::Repair);
            }
            CoreTimer::AntiEntropy => {
                self.forget_dormant(now);
                self.send_digest(now);
                self.schedule(
                    now + self.cfg.timing.anti_entropy_interval,
                    CoreTimer::AntiEntropy,
                );
            }
            CoreTimer::Handoff { resource, lease } => self.handoff_expired(now, &resource, lease),
            CoreTimer::Backoff { resource } => self.backoff_expired(now, &resource),
            CoreTimer::Escape { resource } => {
                self.leases.dirty.insert(resource);
            }
            CoreTimer::RejoinBar => {
                if self.conn.rejoin_bar_until.is_some_and(|t| t <= now) {
                    self.end_rejoin_bar(now);
                }
            }
            CoreTimer::AloneCheck => {
                self.timers.alone_check_at = None;
                self.leases.evaluate_claims = true;
            }
            CoreTimer::LeaveDeadline => self.finish_leave(now, true),
            CoreTimer::QuorumRound { resource } => self.round_due(now, &resource),
            // `after_input`, which follows every timer, gives up what is due.
            CoreTimer::Fence { .. } => {}
            CoreTimer::SuccessorTick => self.successor_tick(now),
            CoreTimer::SuccessorResend => self.successor_resend(now),
        }
    }
}

/// A timer of the core: foca's (tagged with the foca instance) or the election's own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum CoreTimer {
    Foca {
        instance: u32,
        timer: Timer<NodeId>,
    },
    Announce,
    SyncTimeout,
    Repair,
    AntiEntropy,
    Handoff {
        resource: String,
        lease: LeaseId,
    },
    Backoff {
        resource: String,
    },
    Escape {
        resource: String,
    },
    /// A disconnected node may run alone if it has heard nobody since.
    AloneCheck,
    /// The bar on candidacy after repeated losses of every member ends.
    RejoinBar,
    LeaveDeadline,
    /// Quorum mode: the next round of promise requests for a resource is due.
    QuorumRound {
        resource: String,
    },
    /// Quorum mode: a holding's promises may run out now unless renewed.
    Fence {
        resource: String,
    },
    /// A probe period of the successor probes.
    SuccessorTick,
    /// Unanswered successor probes are sent again.
    SuccessorResend,
}
