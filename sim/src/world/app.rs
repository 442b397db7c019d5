//! The application model: what the application on each node does with its core's events
//! (it holds a lease from acquisition until it drops it, a moment after it was told to
//! stop), and the workload, which has nodes obtain and withdraw resources. Who holds and
//! who competes is the checkers' [`Truth`](crate::check::Truth).

use std::time::Duration;

use gossip_election::proto::{Event, LeaseId};

use super::runner::{NodeRun, Out};
use super::{Ev, World};
use crate::net::Partition;
use crate::scenario::{Fault, MS};
use crate::slots::index;

/// The name of resource `r`.
pub(crate) fn resource_name(r: usize) -> String {
    format!("r{r}")
}

/// The index of the resource named `name` (`usize::MAX` if the name is not one).
fn resource_index(name: &str) -> usize {
    name[1..].parse().unwrap_or(usize::MAX)
}

impl World {
    /// An event node `i`'s core reported: the application's part, and the checkers'.
    pub(super) fn on_event(&mut self, i: u32, e: Event) {
        match e {
            Event::Acquired { resource, term, .. } => {
                let r = resource_index(&resource);
                if r < self.truth.holders.len() {
                    self.fold([self.now, u64::from(i), 100, r as u64]);
                    self.trace(Some(i), "acquired", resource);
                    self.truth.holders[r].insert(i);
                    let (checks, fleet) = self.checking();
                    checks.acquired(&fleet, i, r, term);
                }
            }
            Event::Lost {
                resource, reason, ..
            } => {
                let r = resource_index(&resource);
                if r < self.truth.holders.len()
                    && self.truth.holders[r].contains(&i)
                    && self.truth.told[r].insert(i)
                {
                    let fp = self.nodes[i as usize].fp;
                    self.checks.unhold(fp, r);
                }
                if r < self.truth.holders.len() {
                    self.checks.lost(i, r, reason);
                }
                self.trace(Some(i), "lost", format!("{resource} {reason}"));
            }
            Event::Yielded {
                resource, forced, ..
            } => {
                let r = resource_index(&resource);
                self.trace(Some(i), "yielded", format!("{resource} forced={forced}"));
                if r < self.truth.holders.len() {
                    let (checks, fleet) = self.checking();
                    checks.yielded(&fleet, i, r, forced);
                    self.release(i, r);
                }
            }
            Event::MemberDown(id) => {
                if let Some(j) = index(&id.addr()) {
                    let slot = &self.nodes[j as usize];
                    if slot.up() && slot.boot == id.boot() && slot.port == id.addr().port() {
                        self.checks
                            .false_down(self.now, self.net.partition != Partition::None);
                        self.checks.declared_down(self.now, j, id.boot());
                        if self.net.partition == Partition::None {
                            self.checks.down_after_cut(self.now, i, j);
                        }
                    }
                }
            }
            Event::StateChanged(gossip_election::NodeState::Superseded) => {
                self.trace(Some(i), "state", "superseded".to_string());
                self.checks.effects.superseded += 1;
                // It heard of its newer namesake from the fleet: it is connected.
                self.nodes[i as usize].ever_active = true;
            }
            Event::StateChanged(gossip_election::NodeState::Left) => {
                self.trace(Some(i), "state", "left".to_string());
                self.left(i);
            }
            Event::StateChanged(state) => {
                self.trace(Some(i), "state", state.to_string());
                let slot = &mut self.nodes[i as usize];
                match state {
                    gossip_election::NodeState::Alone => {
                        // Only a node that reached nobody since it started: one that lost
                        // every member did so by false downs, which S2 already excuses.
                        slot.alone = !slot.ever_active;
                        slot.ever_active = true;
                    }
                    gossip_election::NodeState::Active => {
                        let newcomer = !slot.ever_active;
                        slot.ever_active = true;
                        if newcomer {
                            let window = 4 * self.plan.latency_mean;
                            self.checks.newcomer_ready(self.now, window);
                            if let Some((racer, rival, resource)) = self.plan.race
                                && racer == i
                                && !self.truth.competing[rival as usize][resource]
                            {
                                let now = self.now;
                                self.push(
                                    now,
                                    Ev::Fault(Fault::Obtain {
                                        node: rival,
                                        resource,
                                    }),
                                );
                            }
                        }
                        let slot = &mut self.nodes[i as usize];
                        // A node that ran alone joining the fleet merges two memberships,
                        // as a heal does.
                        if std::mem::take(&mut slot.alone) {
                            self.checks.alone_joined(self.now);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Node `i`'s application holds `r` no more (it dropped the lease, the ticket was
    /// yielded, or the process ended).
    pub(super) fn release(&mut self, i: u32, r: usize) {
        if self.truth.holders[r].remove(&i) && !self.truth.told[r].remove(&i) {
            let fp = self.nodes[i as usize].fp;
            self.checks.unhold(fp, r);
        }
    }

    /// The workload has `node` compete for `resource` (again).
    pub(super) fn obtain(&mut self, node: u32, resource: usize) {
        self.truth.competing[node as usize][resource] = true;
        let local = Duration::from_nanos(self.nodes[node as usize].local(self.now));
        let tickets = self.plan.tickets[resource];
        if let Some(core) = self.nodes[node as usize].core.as_mut() {
            let _ = core.obtain(local, &resource_name(resource), tickets);
        }
        self.after_core(node);
    }

    /// The workload no longer has `node` compete for `resource`.
    pub(super) fn withdraw(&mut self, node: u32, resource: usize) {
        self.truth.competing[node as usize][resource] = false;
        let local = Duration::from_nanos(self.nodes[node as usize].local(self.now));
        if let Some(core) = self.nodes[node as usize].core.as_mut() {
            core.withdraw(local, &resource_name(resource));
        }
        self.after_core(node);
    }
}

/// The application inside a node's share of a window.
impl NodeRun<'_> {
    /// The core told the application to stop using `resource`: it takes a moment to stop
    /// (below 20 ms; in quorum mode one time in eight up to the bound quorum mode assumes),
    /// then drops the lease.
    pub(super) fn stop_soon(&mut self, t: u64, resource: &str, lease: LeaseId) {
        let bound = self.env.drop_within;
        let delay = if bound > 20 * MS && self.slot.links.below(8) == 0 {
            self.slot.links.below(bound)
        } else {
            self.slot.links.below(20 * MS)
        };
        let ev = Ev::Drop {
            node: self.i,
            epoch: self.slot.epoch,
            resource: resource_index(resource),
            lease,
        };
        self.schedule(t, t + delay, ev);
    }

    /// The application drops its lease on `resource` (when the process resumes, if it is
    /// paused; not at all if the process it was told in has ended).
    pub(super) fn drop_lease(
        &mut self,
        t: u64,
        node: u32,
        epoch: u32,
        resource: usize,
        lease: LeaseId,
    ) {
        if self.slot.epoch != epoch || !self.slot.up() {
            return;
        }
        if self.slot.paused_until > t {
            let at = self.slot.paused_until;
            let ev = Ev::Drop {
                node,
                epoch,
                resource,
                lease,
            };
            self.schedule(t, at, ev);
            return;
        }
        let local = self.local(t);
        if let Some(core) = self.slot.core.as_mut() {
            core.lease_dropped(local, &resource_name(resource), lease);
        }
        self.outputs.push((t, Out::Release(resource)));
        self.after_core(t);
    }
}
