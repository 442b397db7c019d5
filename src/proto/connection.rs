//! Connecting to a fleet: announcing to seeds, losing and regaining every member, the
//! candidacy bar after a reconnect, raising the boot the fleet refused, running alone,
//! readiness, and the state the node reports.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use foca::Member;
use tracing::{debug, info, warn};

/// Whether this node is connected to a fleet, and since when.
pub(super) struct Connection {
    pub(super) active: bool,
    pub(super) active_since: Option<Duration>,
    /// When the node last stopped being connected (its start, before it ever was).
    pub(super) inactive_since: Duration,
    /// When a datagram last arrived from a member, a former member or a seed.
    pub(super) last_heard: Option<Duration>,
    /// When the node lost every member (not by their leaving), within the last
    /// [`REJOIN_WINDOW`].
    pub(super) idles: VecDeque<Duration>,
    /// Out of the candidates until then, or until a member answers (see
    /// [`Core::rejoined_after_idle`]).
    pub(super) rejoin_bar_until: Option<Duration>,
}

use super::{
    ANNOUNCE_TO_MEMBERS, Alone, Core, CoreTimer, Event, LostReason, NodeId, NodeState,
    REJOIN_BAR_MAX, REJOIN_WINDOW,
};

impl Core {
    pub(super) fn seed_placeholders(&mut self, now: Duration) {
        // Seeds as down placeholders (boot 0 loses to any real identity): foca's announce
        // to down members then keeps trying them, which merges islands.
        let placeholders: Vec<Member<NodeId>> = self
            .cfg
            .seeds
            .iter()
            .map(|addr| Member::down(NodeId::new(*addr, 0, 0)))
            .collect();
        if let Err(err) = self.membership.foca.apply_many(
            placeholders.into_iter(),
            false,
            &mut self.membership.runtime,
        ) {
            debug!(%err, "seed placeholders refused");
        }
        self.drain_runtime(now);
    }

    /// Replaces the seeds (the driver resolved seed names again): new ones become
    /// placeholders and, while the node is not connected, are announced to at once. Its
    /// own address, scoped addresses and addresses of the other family are left out.
    pub fn set_seeds(&mut self, now: Duration, mut seeds: Vec<SocketAddr>) {
        // Only this node's address family: an IPv4 node cannot send to `[::1]`.
        let family = self.cfg.addr.is_ipv4();
        seeds.retain(|s| {
            *s != self.cfg.addr && s.is_ipv4() == family && !super::timing::is_scoped(s)
        });
        seeds.sort();
        seeds.dedup();
        if seeds == self.cfg.seeds {
            return;
        }
        let new: Vec<SocketAddr> = seeds
            .iter()
            .filter(|s| !self.cfg.seeds.contains(s))
            .copied()
            .collect();
        debug!(?seeds, "seeds changed");
        self.cfg.seeds = seeds;
        if new.is_empty() || self.leaving {
            return;
        }
        self.seed_placeholders(now);
        if !self.conn.active {
            for addr in new {
                if let Err(err) = self
                    .membership
                    .foca
                    .announce(NodeId::new(addr, 0, 0), &mut self.membership.runtime)
                {
                    debug!(%err, "announce failed");
                }
            }
            self.drain_runtime(now);
        }
    }

    /// Announces to the seeds and to a few members of the view (foca accepts an announce
    /// by address, whatever identity it names).
    pub(super) fn announce(&mut self, now: Duration) {
        self.stats.announces += 1;
        let mut to = self.cfg.seeds.clone();
        for _ in 0..ANNOUNCE_TO_MEMBERS {
            if let Some(addr) = self.view.random_member(&mut self.rng)
                && !to.contains(&addr)
            {
                to.push(addr);
            }
        }
        for addr in to {
            let placeholder = NodeId::new(addr, 0, 0);
            if let Err(err) = self
                .membership
                .foca
                .announce(placeholder, &mut self.membership.runtime)
            {
                debug!(%err, "announce failed");
            }
        }
        self.drain_runtime(now);
    }

    /// The node connected again after it lost every member: it was not alone after all.
    /// Hearing the fleet while the fleet does not hear it (its packets do not get out, a
    /// one-way cut) looks just like this, and each time it would take tickets and give
    /// them back. So it stays out of the candidates (for what it does not hold) until a
    /// member answers one of its requests (proof that its packets get out, usually within one anti-entropy period),
    /// or [`REJOIN_BAR_MAX`] at most.
    pub(super) fn rejoined_after_idle(&mut self, now: Duration) {
        while self
            .conn
            .idles
            .front()
            .is_some_and(|t| *t + REJOIN_WINDOW <= now)
        {
            self.conn.idles.pop_front();
        }
        if self.conn.idles.is_empty() {
            return;
        }
        let until = now + REJOIN_BAR_MAX;
        if self.conn.rejoin_bar_until.is_some() {
            return;
        }
        info!(
            losses = self.conn.idles.len(),
            "lost every member yet connected again: out of the candidates until a member \
             answers (this node's packets may not get out)"
        );
        self.stats.rejoin_bars += 1;
        self.conn.rejoin_bar_until = Some(until);
        self.schedule(until, CoreTimer::RejoinBar);
        self.bump_record(now);
        self.leases.evaluate_claims = true;
    }

    /// The candidacy bar ends.
    pub(super) fn end_rejoin_bar(&mut self, now: Duration) {
        if self.conn.rejoin_bar_until.take().is_some() {
            self.conn.idles.clear();
            self.bump_record(now);
            self.leases.evaluate_claims = true;
        }
    }

    /// Raises this node's boot by a step that doubles with every raise, until the fleet
    /// accepts the identity.
    pub(super) fn raise_boot(&mut self, now: Duration, why: &str) {
        let boot = self.cfg.boot.saturating_add(self.membership.boot_step);
        self.membership.boot_step = self.membership.boot_step.saturating_mul(2).min(1 << 32);
        let id = NodeId::new(self.cfg.addr, boot, 0);
        if let Err(err) = self
            .membership
            .foca
            .change_identity(id, &mut self.membership.runtime)
        {
            debug!(%err, "cannot raise the boot");
            return;
        }
        warn!(from = self.cfg.boot, to = boot, "{why}: raising the boot");
        self.stats.boot_raises += 1;
        self.view.set_own_boot(self.cfg.boot, boot);
        self.cfg.boot = boot;
        self.id = id;
        self.bump_record(now);
    }

    /// After a change of identity foca is disconnected and deaf until a packet addressed
    /// to the new identity arrives, and its timers are gone; members may still know only
    /// the old one (two that renewed at once address each other by the old identities and
    /// would never talk again). Announce by address until foca connects again.
    pub(super) fn reconnect(&mut self, now: Duration) {
        self.disconnected(now);
        self.announce(now);
        let announcing = self
            .timers
            .heap
            .iter()
            .any(|Reverse((_, timer, _))| *timer == CoreTimer::Announce);
        if !announcing {
            self.schedule(now + self.cfg.timing.announce_interval, CoreTimer::Announce);
        }
    }

    /// The node is no longer connected to the fleet.
    pub(super) fn disconnected(&mut self, now: Duration) {
        if self.conn.active {
            self.conn.inactive_since = now;
            self.conn.last_heard = Some(now);
        }
        self.conn.active = false;
        if self.cfg.alone == Alone::Never {
            // Held tickets go (see `evaluate`): this node does not run alone.
            self.leases.evaluate_claims = true;
        }
    }

    /// Synced: connected, holding a whole membership answer and the record of every live
    /// member, and either a peer confirmed the same view (equal digests) or the node has
    /// been connected for `sync_timeout`. The confirmation matters: a newcomer may have
    /// heard of only some members when it first connects.
    pub(super) fn synced(&self, now: Duration) -> bool {
        self.conn.active
            && self.sync.members_synced
            && self.view.missing.is_empty()
            && (self.sync.view_confirmed
                || self
                    .conn
                    .active_since
                    .is_some_and(|t| now >= t + self.cfg.sync_timeout))
    }

    /// The readiness escape: connected with a whole membership answer for `sync_timeout`,
    /// and a record has been missing for the claim escape's patience (`handoff_timeout`
    /// plus one anti-entropy period) despite repair: a member whose record does not
    /// decode here (a newer build) or a phantom must not keep the node from ever being
    /// ready.
    pub(super) fn ready_escape_due(&self, now: Duration) -> bool {
        let patience = self.cfg.handoff_timeout + self.cfg.timing.anti_entropy_interval;
        self.conn.active
            && self.sync.members_synced
            && self
                .conn
                .active_since
                .is_some_and(|t| now >= t + self.cfg.sync_timeout)
            && self
                .view
                .missing
                .values()
                .map(|m| m.since)
                .min()
                .is_some_and(|since| now >= since + patience)
    }

    pub(super) fn set_ready(&mut self, now: Duration) {
        if !self.sync.ready {
            self.sync.ready = true;
            self.sync.ready_at = Some(now);
            info!(
                members = self.view.members.len(),
                "synced: ready to take over"
            );
            self.bump_record(now);
            self.leases.dirty.extend(self.leases.claims.keys().cloned());
        }
    }

    /// How long a disconnected node must hear nobody before it runs alone: one suspicion
    /// and one announce-to-down period, in which a fleet that still runs would have
    /// probed or announced to it.
    pub(super) fn alone_quiet(&self) -> Duration {
        self.cfg.timing.suspect_to_down + self.cfg.timing.announce_to_down_interval
    }

    /// Whether a disconnected node may run alone: it has heard from no member, former
    /// member or seed for [`Core::alone_quiet`]. A node that hears a fleet it cannot
    /// reach (its outgoing packets are lost) is not alone: running alone it would take
    /// tickets, rejoin at the next announce, yield, and again.
    pub(super) fn may_run_alone(&self, now: Duration) -> bool {
        self.cfg.alone != Alone::Never
            && self
                .conn
                .last_heard
                .is_none_or(|t| now >= t + self.alone_quiet())
    }

    /// How long a node that never connected waits before it runs alone (with
    /// [`Alone::Never`]: before it says that it will not).
    pub(super) fn alone_after(&self) -> Duration {
        match self.cfg.alone {
            Alone::After(wait) => wait,
            Alone::Never => self.cfg.sync_timeout,
        }
    }

    /// Schedules a look at whether the node may run alone, when its quiet time ends.
    pub(super) fn check_alone_later(&mut self) {
        if self.cfg.alone == Alone::Never {
            return;
        }
        if let Some(heard) = self.conn.last_heard {
            let at = heard + self.alone_quiet();
            if self.timers.alone_check_at.is_none_or(|t| t < at) {
                self.timers.alone_check_at = Some(at);
                self.schedule(at, CoreTimer::AloneCheck);
            }
        }
    }

    pub(super) fn update_state(&mut self, now: Duration) {
        if matches!(
            self.state,
            NodeState::Superseded | NodeState::Left | NodeState::Leaving
        ) {
            return;
        }
        let state = if self.leaving {
            NodeState::Leaving
        } else if !self.sync.ready {
            NodeState::Joining
        } else if !self.quorum_seen() {
            NodeState::NoQuorum
        } else if self.conn.active {
            NodeState::Active
        } else if self.may_run_alone(now) {
            NodeState::Alone
        } else {
            self.check_alone_later();
            NodeState::Joining
        };
        if state != self.state {
            // Alone because the others left is no surprise; alone because nobody answers is.
            if state == NodeState::Alone && !self.membership.last_gone_left {
                warn!(
                    from = %self.state,
                    "running alone: no member is reachable (check the join list if this node should \
                     have found a fleet), and this node takes the tickets it ranks for on its own view"
                );
            }
            info!(from = %self.state, to = %state, "state changed");
            self.state = state;
            self.events.push_back(Event::StateChanged(state));
        }
    }

    pub(super) fn check_superseded(&mut self, now: Duration) {
        if self.state == NodeState::Superseded {
            return;
        }
        for old in self.view.older_namesakes(&self.cfg.addr) {
            if self.membership.namesakes_reported.insert(old) {
                warn!(%old, "an older process with this name still runs; it will stand down");
                self.events.push_back(Event::SupersedesOther { old });
            }
        }
        if let Some(by) = self.view.superseded(&self.cfg.addr) {
            warn!(%by, "a newer process with this name runs: standing down");
            self.state = NodeState::Superseded;
            self.events
                .push_back(Event::StateChanged(NodeState::Superseded));
            self.events.push_back(Event::Superseded { by });
            self.lose_all(now, LostReason::Superseded);
            self.bump_record(now);
        }
    }

    /// A member answered this node: its packets get out. It competes again once the
    /// suspicions it raised while they did not have run out (one suspicion time and one
    /// probe period): a member it declares down meanwhile is not gossiped (see the
    /// `MemberDown` notification).
    pub(super) fn lift_rejoin_bar(&mut self, now: Duration) {
        if self.conn.rejoin_bar_until.is_none() || self.conn.idles.is_empty() {
            return;
        }
        debug!("a member answered: competing again after the suspicions run out");
        self.conn.idles.clear();
        let until = now + self.cfg.timing.suspect_to_down + self.cfg.timing.probe_period;
        self.conn.rejoin_bar_until = Some(until);
        self.schedule(until, CoreTimer::RejoinBar);
    }
}
