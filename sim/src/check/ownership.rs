//! Ownership bounds, checked as ownership changes: S1 `bounded-owners-per-view`, S2
//! `bounded-owners-per-stable-component`, P1 `planned-move-bounded-owners`, S3
//! `yield-after-drop`, and on each acquisition L3 `no-flap-when-stable` and L4
//! `bounded-acquisitions-one-way-cut`.

use std::collections::BTreeMap;

use gossip_election::proto::LostReason;

use super::{CUT_ACQUISITIONS, CUT_WINDOW, Checks, Fleet, HandoffKind, SETTLE};
use crate::net::Partition;
use crate::scenario::S;
use crate::world::resource_name;

impl Checks {
    /// S1: a holder of `r` (not told to stop) joins the nodes whose view fingerprint is `fp`.
    fn hold_in_fp(&mut self, fleet: &Fleet, fp: u64, r: usize) {
        let n = self.fp_holders.entry((fp, r)).or_default();
        *n += 1;
        let n = *n;
        self.checks += 1;
        if n > u32::from(self.tickets[r]) {
            let detail = format!(
                "{} holders of {} among nodes with identical views, tickets {}: {:?}",
                n,
                resource_name(r),
                self.tickets[r],
                fleet.truth.holders[r]
            );
            self.violate("bounded-owners-per-view", fleet.now, detail);
        }
    }

    /// S1: a holder of `r` (not told to stop) leaves the nodes whose view fingerprint is
    /// `fp`.
    pub fn unhold(&mut self, fp: u64, r: usize) {
        if let Some(n) = self.fp_holders.get_mut(&(fp, r)) {
            *n -= 1;
            if *n == 0 {
                self.fp_holders.remove(&(fp, r));
            }
        }
    }

    /// S1: node `i`'s view fingerprint changed from `old` to `fp`; what it holds moves along.
    pub(crate) fn view_changed(&mut self, fleet: &Fleet, i: u32, old: u64, fp: u64) {
        for r in 0..fleet.truth.holders.len() {
            if fleet.truth.holders[r].contains(&i) && !fleet.truth.told[r].contains(&i) {
                self.unhold(old, r);
                self.hold_in_fp(fleet, fp, r);
            }
        }
    }

    /// S3: node `i` yielded its ticket of `r`; unforced, the ticket goes only once the
    /// application dropped the lease. (Before the world releases the holder.)
    pub(crate) fn yielded(&mut self, fleet: &Fleet, i: u32, r: usize, forced: bool) {
        self.checks += 1;
        if !forced && fleet.truth.holders[r].contains(&i) {
            let detail = format!(
                "n{i} yielded {} while its application still held it",
                resource_name(r)
            );
            self.violate("yield-after-drop", fleet.now, detail);
        }
        // During the boot nodes become ready in any order: displacements then are no
        // take-backs.
        let reason = self.lost_reasons.remove(&(i, r));
        let kind = match reason.filter(|_| fleet.now >= self.boot_end) {
            Some(LostReason::Leaving) => Some(HandoffKind::Leave),
            Some(LostReason::Withdrawn) => Some(HandoffKind::Withdraw),
            Some(LostReason::Displaced) => Some(HandoffKind::TakeBack),
            _ => None,
        };
        self.last_yield[r] = Some((fleet.now, kind));
    }

    /// Node `i` acquired `r` with fencing term `term` (and is a holder already): S1, L3,
    /// L4, S2 and P1, in quorum mode Q1, Q2 and Q3, and the failover and handoff times.
    pub(crate) fn acquired(&mut self, fleet: &Fleet, i: u32, r: usize, term: u64) {
        let now = fleet.now;
        if self.quorum.is_some() {
            self.quorum_acquired(fleet, i, r, term);
        }
        let fp = fleet.nodes[i as usize].fp;
        self.hold_in_fp(fleet, fp, r);
        if fleet.nodes[i as usize].drift != 0.0 {
            self.effects.drift_acquisitions += 1;
        }
        if self.converged_once {
            self.ownership_changes += 1;
        }
        if let Some(t) = self.pending_failover[r].take() {
            self.failovers.push(now - t);
        } else if let Some((t, kind)) = self.last_yield[r].take()
            && now - t < 5 * S
        {
            self.handoffs.push(now - t);
            let by_kind = &mut self.handoffs_by_kind;
            match kind {
                Some(HandoffKind::Leave) => by_kind.leave.push(now - t),
                Some(HandoffKind::Withdraw) => by_kind.withdraw.push(now - t),
                Some(HandoffKind::TakeBack) => by_kind.take_back.push(now - t),
                None => {}
            }
        }
        if let Some(stable) = self.stable_after
            && now >= stable
            && self.stable_loss
        {
            self.violate(
                "no-flap-when-stable",
                now,
                format!(
                    "n{i} acquired {} after the fleet converged",
                    resource_name(r)
                ),
            );
        }
        // The cut the rejoin bar exists for: one node whose packets do not get out. A
        // silenced group of several nodes stays connected within itself and elects for
        // itself, as available mode does; its members take and give back tickets as
        // members of the other side are declared down and rejoin.
        let one_node_cut = match fleet.partition {
            Partition::OneWay { group, from, .. } => {
                group.iter().filter(|g| **g == *from).count() == 1
            }
            _ => false,
        };
        if one_node_cut && !self.workload_churn {
            self.checks += 1;
            // Counted per cut: a heal (or another cut) starts over.
            if self.cut_counted.as_ref() != Some(fleet.partition) {
                self.cut_counted = Some(fleet.partition.clone());
                self.cut_acquisitions.clear();
            }
            let window = self.cut_acquisitions.entry((i, r)).or_default();
            window.push_back(now);
            while window.front().is_some_and(|t| *t + CUT_WINDOW <= now) {
                window.pop_front();
            }
            let n = window.len();
            self.cut_acquisitions_max = self.cut_acquisitions_max.max(n as u64);
            if n > CUT_ACQUISITIONS {
                self.violate(
                    "bounded-acquisitions-one-way-cut",
                    now,
                    format!(
                        "n{i} acquired {} {n} times within 60 s of a one-way cut",
                        resource_name(r)
                    ),
                );
            }
        }
        self.check_components(fleet, Some(r));
        let quiet = now >= self.boot_end + SETTLE
            && now >= self.last_disturbance(now) + SETTLE
            && now >= self.concurrent_ready + SETTLE
            && *fleet.partition == Partition::None
            && self.lossless;
        if quiet {
            self.checks += 1;
            let up = fleet.truth.holders[r]
                .iter()
                .filter(|h| fleet.nodes[**h as usize].up())
                .count();
            if up > usize::from(self.tickets[r]) {
                let detail = format!(
                    "{} holders of {} with tickets {}: {:?}",
                    up,
                    resource_name(r),
                    self.tickets[r],
                    fleet.truth.holders[r]
                );
                self.violate("planned-move-bounded-owners", now, detail);
            }
        }
    }

    /// S2 over the resources given (all when None).
    pub(super) fn check_components(&mut self, fleet: &Fleet, only: Option<usize>) {
        let now = fleet.now;
        let since = self
            .last_disturbance(now)
            .max(self.last_false_down)
            .max(self.last_alone_join);
        if now < since.max(self.boot_end) + SETTLE || !self.stable_loss {
            return;
        }
        let Some(groups) = fleet.partition.cliques(fleet.plan.nodes) else {
            return;
        };
        let resources: Vec<usize> = match only {
            Some(r) => vec![r],
            None => (0..fleet.truth.holders.len()).collect(),
        };
        for r in resources {
            self.checks += 1;
            let mut per_group: BTreeMap<u8, Vec<u32>> = BTreeMap::new();
            for &h in &fleet.truth.holders[r] {
                let slot = &fleet.nodes[h as usize];
                if slot.up() && !slot.alone {
                    per_group.entry(groups[h as usize]).or_default().push(h);
                }
            }
            for (g, hs) in per_group {
                if hs.len() > usize::from(self.tickets[r]) {
                    let detail = format!(
                        "{} holders of {} in stable component {g}, tickets {}: {hs:?}",
                        hs.len(),
                        resource_name(r),
                        self.tickets[r]
                    );
                    self.violate("bounded-owners-per-stable-component", now, detail);
                }
            }
        }
    }

    /// Quorum mode's checks of an acquisition: Q1 `bounded-holders-fleet-wide` (every
    /// holder counts, on any side of any partition, until its application dropped the
    /// lease), Q2 `terms-rise` (with one ticket every tenure has ended before the next
    /// begins, so each term exceeds every earlier one), and Q3's measurement.
    fn quorum_acquired(&mut self, fleet: &Fleet, i: u32, r: usize, term: u64) {
        let now = fleet.now;
        self.checks += 2;
        let holders = fleet.truth.holders[r].len();
        if holders > usize::from(self.tickets[r]) {
            let detail = format!(
                "n{i} acquired {}: {holders} holders fleet-wide, tickets {}: {:?}",
                resource_name(r),
                self.tickets[r],
                fleet.truth.holders[r]
            );
            self.violate("bounded-holders-fleet-wide", now, detail);
        }
        if self.tickets[r] == 1 && term <= self.max_term[r] {
            let detail = format!(
                "n{i} acquired {} with term {term}, not above {}",
                resource_name(r),
                self.max_term[r]
            );
            self.violate("terms-rise", now, detail);
        }
        self.max_term[r] = self.max_term[r].max(term);
        if let Some((since, group)) = self.pending_majority[r]
            && let Partition::Groups(groups) = fleet.partition
            && groups.get(i as usize) == Some(&group)
        {
            self.pending_majority[r] = None;
            self.majority_failovers.push(now - since);
        }
    }

    /// Q3: a partition cut the network into `groups`; a resource whose holders are all
    /// outside the group with a majority of the fleet's nodes (and that has a candidate
    /// inside it) must be acquired there within the bound. Only on a stable network (as
    /// L2), and only when no node of the group is within its start wait (it promises
    /// nothing yet); a leave or a crash meanwhile cancels it.
    pub(crate) fn partitioned(&mut self, fleet: &Fleet) {
        let Partition::Groups(groups) = fleet.partition else {
            return;
        };
        let Some(margins) = self.quorum else {
            return;
        };
        if !self.stable_loss || self.ongoing {
            return;
        }
        let wait = margins.start_wait.as_nanos() as u64;
        if (0..fleet.plan.nodes)
            .any(|i| fleet.nodes[i].up() && fleet.nodes[i].started + wait > fleet.now)
        {
            return;
        }
        let n = fleet.plan.nodes;
        let mut up: BTreeMap<u8, usize> = BTreeMap::new();
        for (i, g) in groups.iter().enumerate().take(n) {
            if fleet.nodes[i].up() {
                *up.entry(*g).or_default() += 1;
            }
        }
        let Some((&majority, _)) = up.iter().find(|(_, c)| **c * 2 > n) else {
            return;
        };
        for r in 0..fleet.truth.holders.len() {
            let held_there = fleet.truth.holders[r]
                .iter()
                .any(|h| groups[*h as usize] == majority);
            let candidate = (0..n).any(|i| groups[i] == majority && fleet.competes(i, r));
            if !fleet.truth.holders[r].is_empty() && !held_there && candidate {
                self.pending_majority[r] = Some((fleet.now, majority));
            }
        }
    }
}
