//! Successor probes: the next candidate in rank of a resource watches its holders.
//!
//! foca probes one member per probe period, picked round-robin over a shuffled list, so a
//! crashed holder waits a random number of periods until some member happens to probe it;
//! at 100 members that wait is most of a failover's tail. The node that takes over when a
//! holder goes (the first candidate after the desired ones) has every reason to watch the
//! holder itself: it sends a [`Message::HolderProbe`] every probe period, resends it after
//! `probe_rtt` and `2·probe_rtt` while nothing came back, and when a whole period passed in
//! which nothing at all arrived from the holder (any datagram counts: under loss its foca
//! traffic often gets through where an answer did not) it suspects the holder through
//! foca, which gossips the suspicion and lets the holder refute it, exactly as after a
//! failed foca probe; the suspicion turns into a down `suspect_to_down` later unless
//! refuted. Later probes carry the suspicion, so a holder that was only stalled refutes it
//! in its answer as soon as it runs again.
//!
//! A holder that never answered (an older build, or a process that was gone before the
//! first probe) is never suspected this way: foca's own probes still find it. Nor is a
//! holder whose silence this node may have missed: a tick that runs late (this node
//! stalled, and answers wait in its socket behind the timer) counts no silence.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use foca::{Member, State, Timer};
use tracing::debug;

use super::{Core, CoreTimer, NodeId};
use crate::wire::Message;

/// How many times an unanswered probe is sent again within its period.
const RESENDS: u8 = 2;

/// The holders this node probes, and the probes in flight.
#[derive(Debug, Default)]
pub(super) struct SuccessorProbes {
    targets: BTreeMap<SocketAddr, Target>,
    /// Whether a [`CoreTimer::SuccessorTick`] is pending.
    ticking: bool,
    /// When the pending [`CoreTimer::SuccessorTick`] is due (None: the first tick).
    tick_due: Option<Duration>,
}

/// A tick that runs later than this after it was due means this node stalled: answers may
/// be waiting in its socket behind the timer, so silence does not count that period.
const LATE_TICK: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct Target {
    id: NodeId,
    /// Probed this period, and nothing heard from it since.
    awaiting: bool,
    resent: u8,
    /// Whether this process ever answered a probe (it speaks this protocol): only then is
    /// silence a reason to suspect it.
    answered: bool,
    /// Suspected by this node at this incarnation.
    suspected: Option<u16>,
}

impl SuccessorProbes {
    /// Whether no holder is probed.
    pub(super) fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The holders probed now, for tests and inspection.
    #[cfg(test)]
    pub(super) fn targets(&self) -> Vec<SocketAddr> {
        self.targets.keys().copied().collect()
    }
}

impl Core {
    /// Recomputes which holders this node watches: for every resource it competes for and
    /// does not hold, if it is the first candidate after the desired ones, the desired
    /// candidates and the holders. Called after every input that changed the view or the
    /// claims.
    pub(super) fn update_successor_targets(&mut self, now: Duration) {
        if !self.cfg.timing.successor_probes {
            return;
        }
        let own = self.cfg.addr;
        let mut wanted: BTreeMap<SocketAddr, NodeId> = BTreeMap::new();
        if self.conn.active && !self.leaving {
            for (resource, claim) in &self.leases.claims {
                if !claim.candidate() || claim.held() {
                    continue;
                }
                let placement = self.view.placement(resource);
                if self.view.successor(resource, placement.tickets) != Some(own) {
                    continue;
                }
                for addr in placement.desired.iter().chain(placement.holders.iter()) {
                    if *addr == own {
                        continue;
                    }
                    if let Some(id) = self.view.members.get(addr) {
                        wanted.insert(*addr, *id);
                    }
                }
            }
        }
        let probes = &mut self.successor;
        probes
            .targets
            .retain(|addr, t| wanted.get(addr) == Some(&t.id));
        for (addr, id) in wanted {
            probes.targets.entry(addr).or_insert(Target {
                id,
                awaiting: false,
                resent: 0,
                answered: false,
                suspected: None,
            });
        }
        if !probes.targets.is_empty() && !probes.ticking {
            probes.ticking = true;
            probes.tick_due = None;
            self.schedule(now, CoreTimer::SuccessorTick);
        }
    }

    /// A probe period: suspect the holders that left the last one unanswered, probe all.
    pub(super) fn successor_tick(&mut self, now: Duration) {
        let period = self.cfg.timing.probe_period;
        if self.successor.targets.is_empty() || self.state == super::NodeState::Left {
            self.successor.ticking = false;
            return;
        }
        self.clear_refuted();
        // Timers run before the datagrams that queued while this node stalled: a late tick
        // may find answers not read yet. Silence counts only over a period it ran.
        let ran = self
            .successor
            .tick_due
            .is_some_and(|due| now <= due + LATE_TICK);
        self.successor.tick_due = Some(now + period);
        let silent: Vec<SocketAddr> = self
            .successor
            .targets
            .iter()
            .filter(|(_, t)| t.awaiting && t.answered && t.suspected.is_none())
            .filter(|_| ran)
            .map(|(a, _)| *a)
            .collect();
        for addr in silent {
            self.suspect_holder(now, addr);
        }
        let addrs: Vec<SocketAddr> = self.successor.targets.keys().copied().collect();
        for addr in addrs {
            if let Some(t) = self.successor.targets.get_mut(&addr) {
                t.awaiting = true;
                t.resent = 0;
            }
            self.send_holder_probe(addr);
        }
        self.schedule(now + self.cfg.timing.probe_rtt, CoreTimer::SuccessorResend);
        self.schedule(now + period, CoreTimer::SuccessorTick);
    }

    /// Sends the unanswered probes of this period again.
    pub(super) fn successor_resend(&mut self, now: Duration) {
        let rtt = self.cfg.timing.probe_rtt;
        // A resend that would land after the next tick belongs to no period.
        if self
            .successor
            .tick_due
            .is_some_and(|due| now + rtt / 2 >= due)
        {
            return;
        }
        let due: Vec<SocketAddr> = self
            .successor
            .targets
            .iter()
            .filter(|(_, t)| t.awaiting && t.resent < RESENDS)
            .map(|(a, _)| *a)
            .collect();
        let mut again = false;
        for addr in due {
            if let Some(t) = self.successor.targets.get_mut(&addr) {
                t.resent += 1;
                again |= t.resent < RESENDS;
            }
            self.send_holder_probe(addr);
        }
        if again {
            self.schedule(now + rtt, CoreTimer::SuccessorResend);
        }
    }

    /// Forgets suspicions the holder refuted by gossip while its answers stayed away: the
    /// path from here to it is bad, not the holder, so silence stops counting against it
    /// until it answers again (foca's probes, which go indirect, still watch it).
    fn clear_refuted(&mut self) {
        if self
            .successor
            .targets
            .values()
            .all(|t| t.suspected.is_none())
        {
            return;
        }
        let current: BTreeMap<NodeId, u16> = self
            .membership
            .foca
            .iter_members()
            .filter(|m| {
                self.successor
                    .targets
                    .get(&m.id().addr())
                    .is_some_and(|t| t.id == *m.id())
            })
            .map(|m| (*m.id(), m.incarnation()))
            .collect();
        for t in self.successor.targets.values_mut() {
            if let Some(suspected) = t.suspected
                && current.get(&t.id).is_some_and(|now| *now > suspected)
            {
                t.suspected = None;
                t.answered = false;
            }
        }
    }

    fn send_holder_probe(&mut self, addr: SocketAddr) {
        let Some(t) = self.successor.targets.get(&addr).filter(|t| t.awaiting) else {
            return;
        };
        let message = Message::HolderProbe {
            target: t.id,
            suspected: t.suspected,
        };
        self.send_message(addr, &message);
    }

    /// Suspects the holder at `addr` through foca: the suspicion is gossiped like one from
    /// a failed foca probe, and becomes a down `suspect_to_down` from now unless refuted.
    fn suspect_holder(&mut self, now: Duration, addr: SocketAddr) {
        let Some(id) = self.successor.targets.get(&addr).map(|t| t.id) else {
            return;
        };
        let Some(incarnation) = self
            .membership
            .foca
            .iter_members()
            .find(|m| *m.id() == id)
            .map(Member::incarnation)
        else {
            return;
        };
        // Without foca's timer token (a fresh instance that scheduled nothing yet) the
        // suspicion could not turn into a down: leave it to foca.
        let Some(token) = self.membership.timer_token else {
            return;
        };
        debug!(%addr, incarnation, "holder left a probe period unanswered: suspecting it");
        self.stats.successor_suspicions += 1;
        if let Some(t) = self.successor.targets.get_mut(&addr) {
            t.suspected = Some(incarnation);
        }
        self.apply_to_foca(now, Member::new(id, incarnation, State::Suspect));
        let instance = self.membership.foca_instance;
        let timer = Timer::ChangeSuspectToDown {
            member_id: id,
            incarnation,
            token,
        };
        self.schedule(
            now + self.cfg.timing.suspect_to_down,
            CoreTimer::Foca { instance, timer },
        );
    }

    /// A datagram from `from` arrived: if it is a probed holder, it answered this period
    /// (any datagram shows it runs, and under loss its foca traffic often gets through
    /// where a probe's answer did not).
    pub(super) fn heard_from_holder(&mut self, from: SocketAddr) {
        if let Some(t) = self.successor.targets.get_mut(&from) {
            t.awaiting = false;
        }
    }

    /// A probe from a successor: refute what it suspects, and answer.
    pub(super) fn handle_holder_probe(
        &mut self,
        now: Duration,
        from: SocketAddr,
        target: NodeId,
        suspected: Option<u16>,
    ) {
        if target != *self.membership.foca.identity() {
            return;
        }
        // Only a member may make this node move past an incarnation, and only past its
        // current one: a lower one is stale (refuted already), a higher one is bogus (it
        // would push the incarnation to its end and force a new identity).
        let suspected = suspected.filter(|inc| {
            *inc == self.membership.own_incarnation && self.view.members.contains_key(&from)
        });
        if let Some(incarnation) = suspected {
            // foca refutes (and gossips the refutation) when told of its own suspicion.
            self.apply_to_foca(now, Member::new(target, incarnation, State::Suspect));
            // foca's rule: a suspicion of the current incarnation is refuted by moving past
            // it (at the last incarnation foca renews the identity instead).
            if incarnation < u16::MAX {
                self.membership.own_incarnation = incarnation + 1;
            }
        }
        let incarnation = self.membership.own_incarnation;
        self.send_message(from, &Message::HolderAck { incarnation });
    }

    /// An answer to a probe (which, like any datagram from the holder, counted as one in
    /// `heard_from_holder`): past a suspicion, tell foca the holder refuted it.
    pub(super) fn handle_holder_ack(&mut self, now: Duration, from: SocketAddr, incarnation: u16) {
        let Some(t) = self.successor.targets.get_mut(&from) else {
            return;
        };
        t.answered = true;
        let Some(suspected) = t.suspected else {
            return;
        };
        if incarnation <= suspected {
            return;
        }
        t.suspected = None;
        let alive = Member::new(t.id, incarnation, State::Alive);
        self.apply_to_foca(now, alive);
    }
}
