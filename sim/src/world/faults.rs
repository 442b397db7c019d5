//! Faults: the plan's crashes, restarts, leaves, partitions, pauses, clock drift, loss
//! bursts and workload moves, each applied between windows, and the final heal.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::RngExt;

use super::{Ev, World};
use crate::net::{Net, Partition};
use crate::scenario::{Fault, Scenario};

impl World {
    /// The network, to change it between windows (no worker thread holds it then).
    fn net_mut(&mut self) -> &mut Net {
        Arc::make_mut(&mut self.net)
    }

    /// A holder of `r` (the lowest-numbered), if any.
    fn holder_of(&self, r: usize) -> Option<u32> {
        self.truth.holders.get(r)?.iter().next().copied()
    }

    /// Applies one fault of the plan (or one the world scheduled: a restart after a leave,
    /// a rival's obtain in `ready-race`).
    pub(super) fn fault(&mut self, fault: Fault) {
        self.trace(
            None,
            "fault",
            format!("{fault:?}").chars().take(120).collect(),
        );
        let now = self.now;
        match fault {
            Fault::Crash(i) => {
                self.crash(i);
                // A rolling restart is planned: the fleet is expected to stay within
                // tickets through it, so it does not count as a fault there.
                if self.plan.scenario != Scenario::RollingRestart {
                    self.checks.disturbed(now, false);
                }
            }
            Fault::Restart(i) => self.start(i),
            Fault::Reincarnate { node, graceful } => {
                self.nodes[node as usize].fresh_on_restart = true;
                if graceful {
                    self.leave(node, 0);
                } else {
                    self.crash(node);
                    self.start(node);
                }
            }
            Fault::BounceBystander(r) => {
                let bystanders: Vec<u32> = (0..self.plan.nodes as u32)
                    .filter(|&v| {
                        self.nodes[v as usize].up() && !self.truth.competing[v as usize][r]
                    })
                    .collect();
                if !bystanders.is_empty() {
                    let v = bystanders[self.rng.random_range(0..bystanders.len())];
                    self.crash(v);
                    self.start(v);
                }
            }
            Fault::Leave {
                node,
                restart_after,
            } => {
                self.checks.planned_move(now, node);
                self.leave(node, restart_after);
            }
            Fault::LeaveHolder {
                resource,
                restart_after,
            } => {
                if let Some(node) = self.holder_of(resource) {
                    self.checks.planned_move(now, node);
                    self.leave(node, restart_after);
                }
            }
            Fault::RestartClockBack(i) => {
                // Below every boot the node had (boots start at 1000).
                let boot = self.nodes[i as usize].boot.saturating_sub(500).max(1);
                self.start_as(i, boot);
            }
            Fault::CrashHolder {
                resource,
                restart_after,
            } => {
                if let Some(i) = self.holder_of(resource) {
                    self.crash(i);
                    self.checks.disturbed(now, false);
                    self.push(now + restart_after, Ev::Fault(Fault::Restart(i)));
                }
            }
            Fault::Partition(p) => {
                self.net_mut().partition = p;
                self.checks.disturbed(now, true);
                let (checks, fleet) = self.checking();
                checks.partitioned(&fleet);
            }
            Fault::CutOutgoing { resource, holder } => {
                let node = if holder {
                    self.holder_of(resource)
                } else {
                    let idle: Vec<u32> = (0..self.plan.nodes as u32)
                        .filter(|&v| {
                            self.nodes[v as usize].up()
                                && self.truth.competing[v as usize][resource]
                                && self.truth.holders.iter().all(|h| !h.contains(&v))
                        })
                        .collect();
                    (!idle.is_empty()).then(|| idle[self.rng.random_range(0..idle.len())])
                };
                if let Some(i) = node {
                    self.checks.cut_node = Some(i);
                    let mut group = vec![0u8; self.plan.nodes];
                    group[i as usize] = 1;
                    self.net_mut().partition = Partition::OneWay {
                        group,
                        from: 1,
                        to: 0,
                    };
                    self.checks.disturbed(now, true);
                }
            }
            Fault::IsolateHolder(r) => {
                if let Some(i) = self.holder_of(r) {
                    self.isolate(i);
                }
            }
            Fault::RescheduleHolder(r) => {
                let Some(h) = self.holder_of(r) else {
                    return;
                };
                // The replaced node: the last up node that holds nothing.
                let spare = (0..self.plan.nodes as u32).rev().find(|&v| {
                    v != h
                        && self.nodes[v as usize].up()
                        && self
                            .truth
                            .holders
                            .iter()
                            .all(|holders| !holders.contains(&v))
                });
                let Some(v) = spare else {
                    return;
                };
                self.isolate(h);
                self.checks.effects.rescheduled_holders += 1;
                self.crash(v);
                let boot = self.nodes[h as usize].boot.max(self.nodes[v as usize].boot) + 1;
                self.nodes[v as usize].name = self.nodes[h as usize].name.clone();
                self.start_as(v, boot);
            }
            Fault::StopOlderNamesake => {
                let mut by_name: BTreeMap<&str, Vec<(u64, u32)>> = BTreeMap::new();
                for (i, slot) in self.nodes.iter().enumerate() {
                    if slot.up() {
                        by_name
                            .entry(&slot.name)
                            .or_default()
                            .push((slot.boot, i as u32));
                    }
                }
                let older: Vec<u32> = by_name
                    .values()
                    .filter(|procs| procs.len() > 1)
                    .filter_map(|procs| procs.iter().min().map(|&(_, i)| i))
                    .collect();
                for i in older {
                    self.crash(i);
                    self.checks.disturbed(now, false);
                }
            }
            Fault::HealNetwork => {
                if let Some(cut) = self.checks.cut_node.take() {
                    self.checks.cut_healed = Some((now, cut));
                }
                let partitioned = self.net.partition != Partition::None;
                self.net_mut().partition = Partition::None;
                self.checks.disturbed(now, true);
                self.checks.heal(now, false, partitioned);
            }
            Fault::Pause { node, duration } => self.pause(node, duration),
            Fault::SetMembers { node, members } => {
                self.nodes[node as usize].members = Some(members);
            }
            Fault::PauseHolder { resource, duration } => {
                if let Some(i) = self.holder_of(resource) {
                    self.checks.effects.paused_holders += 1;
                    self.pause(i, duration);
                }
            }
            Fault::Drift { node, rate } => {
                self.nodes[node as usize].rebase(now, rate);
                self.checks.disturbed(now, false);
            }
            Fault::LossBurst(extra) => {
                self.net_mut().extra_loss = extra;
                self.checks.disturbing(true, now);
            }
            Fault::LossBurstEnd => {
                self.net_mut().extra_loss = 0.0;
                self.checks.disturbing(false, now);
            }
            Fault::WithdrawHolder {
                resource,
                obtain_after,
            } => {
                if let Some(node) = self.holder_of(resource) {
                    self.checks.planned_move(now, node);
                    self.withdraw(node, resource);
                    self.push(
                        now + obtain_after,
                        Ev::Fault(Fault::Obtain { node, resource }),
                    );
                }
            }
            Fault::Withdraw { node, resource } => {
                self.checks.planned_move(now, node);
                self.withdraw(node, resource);
            }
            Fault::Obtain { node, resource } => {
                self.checks.planned_move(now, node);
                self.obtain(node, resource);
            }
            Fault::Heal => {
                let partitioned = self.net.partition != Partition::None;
                self.net_mut().partition = Partition::None;
                self.net_mut().extra_loss = 0.0;
                self.checks.disturbing(false, now);
                for i in 0..self.plan.nodes as u32 {
                    if self.nodes[i as usize].drift != 0.0 {
                        self.nodes[i as usize].rebase(now, 0.0);
                    }
                    if !self.nodes[i as usize].up() {
                        self.start(i);
                    }
                    for r in 0..self.plan.tickets.len() {
                        if !self.truth.competing[i as usize][r] && self.plan.competes[i as usize][r]
                        {
                            self.obtain(i, r);
                        }
                    }
                }
                self.checks.disturbed(now, true);
                self.checks.heal(now, true, partitioned);
            }
        }
    }

    /// Cuts node `i` from everyone.
    fn isolate(&mut self, i: u32) {
        let mut g = vec![0u8; self.plan.nodes];
        g[i as usize] = 1;
        self.net_mut().partition = Partition::Groups(g);
        self.checks.disturbed(self.now, true);
        let (checks, fleet) = self.checking();
        checks.partitioned(&fleet);
    }

    /// Freezes node `node` (if up and not paused) for `duration`: what reaches it meanwhile
    /// waits until it resumes.
    fn pause(&mut self, node: u32, duration: u64) {
        let slot = &mut self.nodes[node as usize];
        if !slot.up() || slot.paused_until > self.now {
            return;
        }
        slot.paused_until = self.now + duration;
        let (epoch, boot) = (slot.epoch, slot.boot);
        self.checks
            .paused(node, boot, self.now, self.now + duration);
        self.push(self.now + duration, Ev::Resume { node, epoch });
        self.checks.disturbed(self.now, false);
        self.checks.disturbed(self.now + duration, false);
    }
}
