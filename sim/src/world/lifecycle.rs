//! The node lifecycle: start, crash, graceful leave and exit, and what follows the input a
//! global event gives a node's core.

use std::net::SocketAddr;
use std::time::Duration;

use gossip_election::proto::{Core, CoreConfig, Safety};

use super::app::resource_name;
use super::runner::{Env, NodeRun};
use super::{Ev, World, splitmix64};
use crate::net::Partition;
use crate::scenario::{Fault, MS, RETIRE};
use crate::slots::{FIRST_PORT, addr_at};

impl World {
    /// Starts node `i` (if down) as its next process start.
    pub(super) fn start(&mut self, i: u32) {
        let boot = self.nodes[i as usize].boot + 1;
        self.start_as(i, boot);
    }

    /// Starts node `i` (if down) as process start `boot`.
    pub(super) fn start_as(&mut self, i: u32, boot: u64) {
        if self.nodes[i as usize].up() {
            return;
        }
        let now = self.now;
        let seeds: Vec<SocketAddr> = (0..self.plan.nodes.min(3) as u32)
            .map(|s| self.nodes.addr_of(s))
            .collect();
        let slot = &mut self.nodes[i as usize];
        if std::mem::take(&mut slot.fresh_on_restart) {
            slot.port = slot.port.wrapping_add(1).max(FIRST_PORT + 1);
            slot.name = format!("n{i}-{}", slot.port);
            self.checks.address_retired(now);
        }
        slot.boot = boot;
        slot.epoch += 1;
        slot.paused_until = 0;
        slot.backlog.clear();
        slot.wake_at = None;
        slot.started = now;
        slot.ever_active = false;
        slot.alone = false;
        slot.rebase(now, slot.drift);
        let mut cfg = CoreConfig::new(slot.name.clone(), addr_at(i, slot.port), slot.boot);
        cfg.seeds = seeds;
        cfg.rng_seed = splitmix64(self.seed ^ splitmix64(u64::from(i) << 20 ^ slot.boot));
        cfg.plant(self.bugs);
        cfg.timing.successor_probes = self.successor_probes;
        if self.plan.quorum.is_some() {
            let fleet = u16::try_from(self.plan.nodes).unwrap_or(u16::MAX);
            cfg.safety = Safety::Quorum {
                members: slot.members.unwrap_or(fleet),
            };
        }
        let local = Duration::from_nanos(slot.local(now));
        let mut core = Core::new(cfg, local).expect("valid node config");
        for r in 0..self.plan.tickets.len() {
            if self.truth.competing[i as usize][r] {
                let _ = core.obtain(local, &resource_name(r), self.plan.tickets[r]);
            }
        }
        slot.core = Some(core);
        self.trace(
            Some(i),
            "start",
            format!("boot {}", self.nodes[i as usize].boot),
        );
        self.after_core(i);
    }

    /// Crashes node `i` (if up): its process and everything it had scheduled are gone, and
    /// its application holds nothing any more.
    pub(super) fn crash(&mut self, i: u32) {
        if !self.drop_instance(i) {
            return;
        }
        self.trace(Some(i), "crash", String::new());
        for r in 0..self.truth.holders.len() {
            if self.truth.holders[r].contains(&i) {
                let partitioned = self.net.partition != Partition::None;
                self.checks.owner_crashed(r, self.now, partitioned);
                self.release(i, r);
            }
        }
    }

    /// Drops node `i`'s instance and everything it had scheduled; false if it was down.
    fn drop_instance(&mut self, i: u32) -> bool {
        let slot = &mut self.nodes[i as usize];
        if slot.core.take().is_none() {
            return false;
        }
        slot.epoch += 1;
        slot.backlog.clear();
        slot.wake_at = None;
        slot.paused_until = 0;
        slot.restart_after_leave = None;
        self.checks.process_ended(i);
        true
    }

    /// Shuts node `node` down gracefully (a planned move: the fleet must stay within
    /// tickets through it); it starts again `restart_after` after it has left.
    pub(super) fn leave(&mut self, node: u32, restart_after: u64) {
        if !self.nodes[node as usize].up() {
            return;
        }
        if self.truth.holders.iter().any(|h| h.contains(&node)) {
            self.checks.effects.leaving_holders += 1;
        }
        self.nodes[node as usize].restart_after_leave = Some(restart_after);
        let local = Duration::from_nanos(self.nodes[node as usize].local(self.now));
        if let Some(core) = self.nodes[node as usize].core.as_mut() {
            core.leave(local);
        }
        self.after_core(node);
    }

    /// Node `i` has left gracefully: its process exits, and starts again if planned (not
    /// after [`RETIRE`]).
    pub(super) fn left(&mut self, i: u32) {
        let restart_after = self.nodes[i as usize].restart_after_leave;
        if !self.drop_instance(i) {
            return;
        }
        self.trace(Some(i), "exit", String::new());
        // A lease the application still held (a forced handoff) ends with the process.
        for r in 0..self.truth.holders.len() {
            self.release(i, r);
        }
        if let Some(after) = restart_after.filter(|a| *a != RETIRE) {
            self.push(self.now + after, Ev::Fault(Fault::Restart(i)));
        }
    }

    /// The longest an application takes to drop a lost lease (ns): quorum mode's bound, or
    /// 20 ms.
    pub(super) fn drop_within(&self) -> u64 {
        self.plan
            .quorum
            .map_or(20 * MS, |m| m.drop_within.as_nanos() as u64)
    }

    /// After a global event gave node `i` input: send, report, reschedule.
    pub(super) fn after_core(&mut self, i: u32) {
        let now = self.now;
        let env = Env {
            net: &self.net,
            nodes: self.nodes.len(),
            drop_within: self.drop_within(),
        };
        let slot = &mut self.nodes[i as usize];
        // Nothing falls inside a window that ends now: everything goes to the queue.
        let mut run = NodeRun::new(i, slot, &env, now);
        run.after_core(now);
        let done = run.finish();
        self.apply(vec![done]);
    }
}
