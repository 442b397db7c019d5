//! Successor probes: the next candidate in rank of a resource watches its holders.
//!
//! foca probes one member per probe period, picked round-robin over a shuffled list, so a
//! crashed holder waits a random number of periods until some member happens to probe it;
//! at 100 members that wait is most of a failover's tail. The node that takes over when a
//! holder goes (the first candidate after the desired ones) has every reason to watch the
//! holder itself: it sends a [`Message::HolderProbe`] every probe period, resends it after
//! `probe_rtt` and `2·probe_rtt` while unanswered, and when a whole period passed with no
//! answer it suspects the holder through foca, which gossips the suspicion and lets the
//! holder refute it, exactly as after a failed foca probe; the suspicion turns into a down
//! `suspect_to_down` later unless refuted. Later probes carry the suspicion, so a holder
//! that was only stalled refutes it in its answer as soon as it runs again.
//!
//! A holder that never answered (an older build, or a process that was gone before the
//! first probe) is never suspected this way: foca's own probes still find it.

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
    seq: u32,
    /// Whether a [`CoreTimer::SuccessorTick`] is pending.
    ticking: bool,
    /// When the last probe period began.
    last_tick: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    id: NodeId,
    /// The probe of this period, while unanswered.
    awaiting: Option<u32>,
    resent: u8,
    /// Whether this process ever answered: only then is silence a reason to suspect it.
    answered: bool,
    /// Suspected by this node at this incarnation.
    suspected: Option<u16>,
}

impl SuccessorProbes {
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
                awaiting: None,
                resent: 0,
                answered: false,
                suspected: None,
            });
        }
        if !probes.targets.is_empty() && !probes.ticking {
            probes.ticking = true;
            self.schedule(now, CoreTimer::SuccessorTick);
        }
    }

    /// A probe period: suspect the holders that left the last one unanswered, probe all.
    pub(super) fn successor_tick(&mut self, now: Duration) {
        let period = self.cfg.timing.probe_period;
        if self.successor.targets.is_empty() || self.state == super::NodeState::Left {
            self.successor.ticking = false;
            self.successor.last_tick = None;
            return;
        }
        self.clear_refuted();
        // A period much longer than `probe_period` means this node stalled itself: the
        // answers may be waiting in its socket. Silence counts only over a period it ran.
        let ran = self
            .successor
            .last_tick
            .is_some_and(|last| now <= last + period + period / 2);
        self.successor.last_tick = Some(now);
        let silent: Vec<SocketAddr> = self
            .successor
            .targets
            .iter()
            .filter(|(_, t)| t.awaiting.is_some() && t.answered && t.suspected.is_none())
            .filter(|_| ran)
            .map(|(a, _)| *a)
            .collect();
        for addr in silent {
            self.suspect_holder(now, addr);
        }
        let addrs: Vec<SocketAddr> = self.successor.targets.keys().copied().collect();
        for addr in addrs {
            self.successor.seq = self.successor.seq.wrapping_add(1);
            let seq = self.successor.seq;
            if let Some(t) = self.successor.targets.get_mut(&addr) {
                t.awaiting = Some(seq);
                t.resent = 0;
            }
            self.send_holder_probe(addr);
        }
        self.schedule(now + self.cfg.timing.probe_rtt, CoreTimer::SuccessorResend);
        self.schedule(now + period, CoreTimer::SuccessorTick);
    }

    /// Sends the unanswered probes of this period again.
    pub(super) fn successor_resend(&mut self, now: Duration) {
        let due: Vec<SocketAddr> = self
            .successor
            .targets
            .iter()
            .filter(|(_, t)| t.awaiting.is_some() && t.resent < RESENDS)
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
            self.schedule(now + self.cfg.timing.probe_rtt, CoreTimer::SuccessorResend);
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
        let Some(t) = self.successor.targets.get(&addr) else {
            return;
        };
        let Some(seq) = t.awaiting else {
            return;
        };
        let message = Message::HolderProbe {
            seq,
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
        debug!(%addr, incarnation, "holder left a probe period unanswered: suspecting it");
        self.stats.successor_suspicions += 1;
        if let Some(t) = self.successor.targets.get_mut(&addr) {
            t.suspected = Some(incarnation);
        }
        let suspect = Member::new(id, incarnation, State::Suspect);
        if let Err(err) = self.membership.foca.apply_many(
            std::iter::once(suspect),
            true,
            &mut self.membership.runtime,
        ) {
            debug!(%err, "foca refused a suspicion");
        }
        if let Some(token) = self.membership.timer_token {
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
        self.drain_runtime(now);
    }

    /// A probe from a successor: refute what it suspects, and answer.
    pub(super) fn handle_holder_probe(
        &mut self,
        now: Duration,
        from: SocketAddr,
        (seq, target, suspected): (u32, NodeId, Option<u16>),
    ) {
        if target != *self.membership.foca.identity() {
            return;
        }
        // Only a member may make this node move past an incarnation.
        let suspected = suspected.filter(|_| self.view.members.contains_key(&from));
        if let Some(incarnation) = suspected {
            let suspect = Member::new(target, incarnation, State::Suspect);
            if let Err(err) = self.membership.foca.apply_many(
                std::iter::once(suspect),
                true,
                &mut self.membership.runtime,
            ) {
                debug!(%err, "foca refused a suspicion of this node");
            }
            // foca's rule: a suspicion of the current incarnation (or a later one) is
            // refuted by moving past it.
            if incarnation >= self.membership.own_incarnation && incarnation < u16::MAX {
                self.membership.own_incarnation = incarnation + 1;
            }
            self.drain_runtime(now);
        }
        let incarnation = self.membership.own_incarnation;
        self.send_message(from, &Message::HolderAck { seq, incarnation });
    }

    /// An answer to a probe: the holder is alive; past a suspicion, tell foca so.
    pub(super) fn handle_holder_ack(
        &mut self,
        now: Duration,
        from: SocketAddr,
        (seq, incarnation): (u32, u16),
    ) {
        let Some(t) = self.successor.targets.get_mut(&from) else {
            return;
        };
        // A late answer to an earlier period still proves the process runs.
        if t.awaiting == Some(seq) {
            t.awaiting = None;
        }
        t.answered = true;
        let Some(suspected) = t.suspected else {
            return;
        };
        if incarnation <= suspected {
            return;
        }
        t.suspected = None;
        let alive = Member::new(t.id, incarnation, State::Alive);
        if let Err(err) = self.membership.foca.apply_many(
            std::iter::once(alive),
            true,
            &mut self.membership.runtime,
        ) {
            debug!(%err, "foca refused a refutation");
        }
        self.drain_runtime(now);
    }
}
