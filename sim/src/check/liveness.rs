//! Liveness and health, checked on the periodic samples: L1 `convergence-after-heal`, L2
//! `failover-after-crash`, H1 `every-node-becomes-active` and H2
//! `members-within-addresses` (and S2 over every resource).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use super::{ACTIVE_WITHIN, CONVERGE_WITHIN, Checks, FAILOVER_WITHIN, Fleet, HOLD, Phase};
use crate::net::Partition;
use crate::scenario::{MS, S};
use crate::world::resource_name;

impl Checks {
    /// Periodic checks: S2 over everything, L1, L2 deadlines, H1, H2.
    pub(crate) fn sample(&mut self, fleet: &Fleet) {
        let now = fleet.now;
        self.check_components(fleet, None);
        let promises = self.quorum.map_or(0, |m| m.promise_for.as_nanos() as u64);
        let failover_within = FAILOVER_WITHIN + promises;
        // Q3.
        for r in 0..self.pending_majority.len() {
            if let Some((t, _)) = self.pending_majority[r]
                && now > t + failover_within
            {
                self.checks += 1;
                self.pending_majority[r] = None;
                self.violate(
                    "majority-reacquires",
                    now,
                    format!(
                        "the majority side did not acquire {} within {} ms of the partition",
                        resource_name(r),
                        failover_within / MS
                    ),
                );
            }
        }
        // L2.
        for r in 0..self.pending_failover.len() {
            if let Some(t) = self.pending_failover[r] {
                self.checks += 1;
                // Only a competing up node that does not hold it yet can take over.
                let candidates = (0..fleet.plan.nodes)
                    .filter(|&i| {
                        fleet.competes(i, r) && !fleet.truth.holders[r].contains(&(i as u32))
                    })
                    .count();
                // In quorum mode nobody may hold without a majority of the fleet up.
                let up = (0..fleet.plan.nodes)
                    .filter(|&i| fleet.nodes[i].up())
                    .count();
                let no_majority = self.quorum.is_some() && up * 2 <= fleet.plan.nodes;
                if candidates == 0 || no_majority {
                    self.pending_failover[r] = None;
                } else if now > t + failover_within {
                    self.pending_failover[r] = None;
                    self.violate(
                        "failover-after-crash",
                        now,
                        format!(
                            "no new holder of {} within {} ms of the crash",
                            resource_name(r),
                            failover_within / MS
                        ),
                    );
                }
            }
        }
        // H1. A partition in effect is a fault in effect: it may cut a node off from its
        // seeds (and its heal is a disturbance after the start).
        let whole = *fleet.partition == Partition::None;
        for i in 0..fleet.plan.nodes {
            let slot = &fleet.nodes[i];
            if slot.up()
                && !slot.ever_active
                && whole
                && now > slot.started + ACTIVE_WITHIN
                && self.last_disturbance(now) < slot.started
            {
                self.checks += 1;
                let detail = format!(
                    "n{i} not connected {} s after it started",
                    (now - slot.started) / S
                );
                self.violate("every-node-becomes-active", now, detail);
            }
        }
        // H2, every 10 s.
        if now % (10 * S) < S {
            let addresses = fleet.plan.nodes + self.retired_recently(now);
            for i in 0..fleet.plan.nodes {
                if let Some(core) = fleet.nodes[i].core.as_ref() {
                    self.checks += 1;
                    let members = core.membership().count();
                    // Everything kept per address is bounded the same way.
                    let oversized = core
                        .address_table_entries()
                        .into_iter()
                        .find(|(_, n)| *n > addresses);
                    if let Some((table, n)) = oversized {
                        let detail =
                            format!("n{i} holds {n} entries in {table} for {addresses} addresses");
                        self.violate("members-within-addresses", now, detail);
                    }
                    if members > addresses {
                        let detail =
                            format!("n{i} holds {members} members for {addresses} addresses");
                        self.violate("members-within-addresses", now, detail);
                    }
                }
            }
        }
        // L1.
        if let Some((from, phase)) = self.converge_from {
            self.checks += 1;
            let first = !std::mem::replace(&mut self.evaluated, true);
            match fleet.converged() {
                Ok(()) if now < *self.converged_since.get_or_insert(now) + HOLD => {}
                Ok(()) => {
                    let since = self.converged_since.take().unwrap_or(now);
                    let took = (since - from) / MS;
                    if phase != Phase::Boot && self.healing_partition {
                        self.partition_heals.push(took);
                    }
                    match phase {
                        Phase::Boot => self.boot_convergence_ms = Some(took),
                        Phase::Heal => self.heal_convergences.push(took),
                        Phase::FinalHeal => {
                            self.heal_convergences.push(took);
                            self.stable_after = Some(now);
                        }
                    }
                    self.heal_convergence_ms = self.heal_convergences.iter().max().copied();
                    self.converged_once = true;
                    self.converge_from = None;
                }
                Err(why) => {
                    self.converged_since = None;
                    if first && phase != Phase::Boot {
                        self.effects.heals_diverged += 1;
                    }
                    let bound = match phase {
                        Phase::Boot => self.boot_end.max(from) + CONVERGE_WITHIN,
                        _ => from + CONVERGE_WITHIN,
                    };
                    if now > bound {
                        let name = match phase {
                            Phase::Boot => "convergence-after-boot",
                            _ => "convergence-after-heal",
                        };
                        self.violate(name, now, why);
                        self.converge_from = None;
                    }
                }
            }
        }
    }

    /// At the end of the run: L1 after the final heal, if its bound has passed.
    pub(crate) fn finish(&mut self, fleet: &Fleet) {
        if let Some((from, Phase::FinalHeal)) = self.converge_from
            && fleet.now >= from + CONVERGE_WITHIN
        {
            let why = fleet.converged().err().unwrap_or_default();
            self.violate("convergence-after-heal", fleet.now, why);
        }
    }
}

impl Fleet<'_> {
    /// Whether node `i` is up and competes for `r`: the workload wants it to, and it was
    /// not superseded by a newer process with its name (which stops competing for good).
    pub(super) fn competes(&self, i: usize, r: usize) -> bool {
        self.truth.competing[i][r]
            && self.nodes[i]
                .core
                .as_ref()
                .is_some_and(|c| c.state() != gossip_election::NodeState::Superseded)
    }

    /// L1's condition, or what differs.
    fn converged(&self) -> Result<(), String> {
        let up: Vec<usize> = (0..self.plan.nodes)
            .filter(|&i| self.nodes[i].up() && self.nodes[i].paused_until <= self.now)
            .collect();
        let Some(&first) = up.first() else {
            return Ok(());
        };
        let fp = self.nodes[first].fp;
        for &i in &up {
            let core = self.nodes[i].core.as_ref().expect("up");
            if core.live_members() != up.len() - 1 {
                // Name a few up nodes it lacks, with what its membership says of them.
                let live: BTreeSet<SocketAddr> = core.members().map(|id| id.addr()).collect();
                let lacks: Vec<String> = up
                    .iter()
                    .filter(|&&j| j != i && !live.contains(&self.nodes.addr_of(j as u32)))
                    .take(3)
                    .map(|&j| {
                        let held = core
                            .membership()
                            .find(|m| m.id().addr() == self.nodes.addr_of(j as u32))
                            .map_or("unknown".to_string(), |m| {
                                format!(
                                    "{:?} boot {} bump {}",
                                    m.state(),
                                    m.id().boot(),
                                    m.id().bump()
                                )
                            });
                        let actual = self.nodes[j].core.as_ref().map(|c| c.id());
                        format!("n{j} ({held}; it runs as {actual:?})")
                    })
                    .collect();
                return Err(format!(
                    "views differ: n{i} sees {} of {} other members; lacks {}",
                    core.live_members(),
                    up.len() - 1,
                    lacks.join(", ")
                ));
            }
            if self.nodes[i].fp != fp {
                let other = self.nodes[first].core.as_ref().expect("up");
                let version = |c: &gossip_election::proto::Core, j: usize| {
                    c.record(&self.nodes.addr_of(j as u32))
                        .map(|r| (r.boot, r.version))
                };
                let differing: Vec<String> = up
                    .iter()
                    .map(|&j| (j, version(core, j), version(other, j)))
                    .filter(|(_, mine, theirs)| mine != theirs)
                    .map(|(j, mine, theirs)| format!("n{j}: {mine:?} vs {theirs:?}"))
                    .collect();
                return Err(format!(
                    "views differ: n{i} and n{first} hold {} different records (boot, version): {}",
                    differing.len(),
                    differing[..differing.len().min(3)].join(", ")
                ));
            }
            if !core.is_ready() {
                return Err(format!("n{i} is not ready"));
            }
        }
        let core = self.nodes[first].core.as_ref().expect("up");
        for r in 0..self.truth.holders.len() {
            let candidates = up.iter().filter(|&&i| self.competes(i, r)).count();
            let mut want = candidates.min(usize::from(self.plan.tickets[r]));
            // Quorum mode: nothing is held without a majority of the fleet up.
            if self.plan.quorum.is_some() && up.len() * 2 <= self.plan.nodes {
                want = 0;
            }
            if self.truth.holders[r].len() != want {
                return Err(format!(
                    "{} has {} holders, wants {want}: {:?}",
                    resource_name(r),
                    self.truth.holders[r].len(),
                    self.truth.holders[r]
                ));
            }
            let owners = core.owners(&resource_name(r));
            if owners.holders != owners.desired {
                return Err(format!(
                    "{} holders are not the desired owners",
                    resource_name(r)
                ));
            }
        }
        Ok(())
    }
}
