//! The discrete-event world: one `(time, sequence)` queue, nodes running the library's
//! sans-IO core in virtual time, the network model, faults and the application model.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use gossip_election::core::{Core, CoreConfig, Event, PlantedBugs};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::check::Checks;
use crate::net::{Net, NetConfig, Partition};
use crate::scenario::{Fault, MS, Plan, S, Scenario};

/// Splits one seed into independent streams.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub(crate) fn stream(seed: u64, tag: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(splitmix64(seed ^ splitmix64(tag)))
}

/// The address of node `i` (a label: nothing is sent anywhere).
pub fn addr(i: u32) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(127, 1, (i >> 8) as u8, (i & 0xff) as u8),
        7946,
    ))
}

fn index(addr: &SocketAddr) -> Option<u32> {
    match addr {
        SocketAddr::V4(a) if a.ip().octets()[..2] == [127, 1] => {
            let o = a.ip().octets();
            Some(u32::from(o[2]) << 8 | u32::from(o[3]))
        }
        _ => None,
    }
}

pub(crate) fn resource_name(r: usize) -> String {
    format!("r{r}")
}

fn resource_index(name: &str) -> usize {
    name[1..].parse().unwrap_or(usize::MAX)
}

pub(crate) enum Ev {
    Start(u32),
    Deliver {
        to: u32,
        from: u32,
        data: Vec<u8>,
    },
    Wake {
        node: u32,
        epoch: u32,
    },
    Resume {
        node: u32,
        epoch: u32,
    },
    Drop {
        node: u32,
        epoch: u32,
        resource: usize,
        lease: u64,
    },
    Fault(Fault),
    Sample,
}

impl Ev {
    fn tag(&self) -> u64 {
        match self {
            Ev::Start(_) => 1,
            Ev::Deliver { .. } => 2,
            Ev::Wake { .. } => 3,
            Ev::Resume { .. } => 4,
            Ev::Drop { .. } => 5,
            Ev::Fault(_) => 6,
            Ev::Sample => 7,
        }
    }
}

/// One node slot: the instance (if up) and what the world knows about it.
pub(crate) struct Slot {
    pub core: Option<Core>,
    pub epoch: u32,
    pub boot: u64,
    pub drift: f64,
    base_t: u64,
    base_local: u64,
    pub paused_until: u64,
    backlog: Vec<(u32, Vec<u8>)>,
    wake_at: Option<u64>,
    pub started: u64,
    pub ever_active: bool,
    pub fp: u64,
}

impl Slot {
    pub fn up(&self) -> bool {
        self.core.is_some()
    }

    fn local(&self, t: u64) -> u64 {
        self.base_local + ((t - self.base_t) as f64 * (1.0 + self.drift)) as u64
    }

    fn true_time(&self, local: u64, now: u64) -> u64 {
        if local <= self.base_local {
            return now;
        }
        let t = self.base_t + ((local - self.base_local) as f64 / (1.0 + self.drift)).ceil() as u64;
        let t = if self.local(t) < local { t + 1 } else { t };
        t.max(now)
    }

    fn rebase(&mut self, now: u64, drift: f64) {
        self.base_local = self.local(now);
        self.base_t = now;
        self.drift = drift;
    }
}

/// A whole fleet in virtual time.
pub struct World {
    pub(crate) now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, u32)>>,
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
    pub(crate) nodes: Vec<Slot>,
    pub(crate) net: Net,
    pub(crate) plan: Plan,
    seed: u64,
    rng: Xoshiro256PlusPlus,
    bugs: PlantedBugs,
    /// Holders per resource: from acquisition until the application dropped the lease
    /// (or the forced yield, or a crash).
    pub(crate) holders: Vec<BTreeSet<u32>>,
    /// Holders that were told to stop (lost) and have not dropped yet.
    pub(crate) told: Vec<BTreeSet<u32>>,
    /// Whether the workload wants node i to compete for resource r.
    pub(crate) competing: Vec<Vec<bool>>,
    pub(crate) checks: Checks,
    trace: Option<Box<dyn Write>>,
    pub(crate) hash: u64,
    pub(crate) events: u64,
    pub(crate) bytes: u64,
    /// Bytes sent as foca datagrams (the rest is the election's own repair traffic).
    foca_bytes: u64,
    /// Print a line per simulated second to stderr.
    pub(crate) progress: bool,
}

impl World {
    pub(crate) fn new(
        plan: Plan,
        seed: u64,
        bugs: PlantedBugs,
        trace: Option<Box<dyn Write>>,
    ) -> Self {
        let net = Net::new(
            NetConfig {
                latency_floor: plan.latency_mean / 2,
                latency_jitter: plan.latency_mean - plan.latency_mean / 2,
                loss: plan.loss,
                duplicate: plan.duplicate,
                burst: plan.burst,
            },
            stream(seed, 1),
        );
        let n = plan.nodes;
        let nodes = (0..n)
            .map(|i| Slot {
                core: None,
                epoch: 0,
                boot: 1000 + i as u64 * 7,
                drift: 0.0,
                base_t: 0,
                base_local: 0,
                paused_until: 0,
                backlog: Vec::new(),
                wake_at: None,
                started: 0,
                ever_active: false,
                fp: 0,
            })
            .collect();
        let resources = plan.tickets.len();
        let checks = Checks::new(&plan);
        let competing = plan.competes.clone();
        let mut world = World {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            nodes,
            net,
            seed,
            rng: stream(seed, 2),
            bugs,
            holders: vec![BTreeSet::new(); resources],
            told: vec![BTreeSet::new(); resources],
            competing,
            checks,
            trace,
            hash: splitmix64(seed),
            events: 0,
            bytes: 0,
            foca_bytes: 0,
            progress: false,
            plan,
        };
        let stagger = world.plan.stagger * S;
        for i in 0..n as u32 {
            let at = if stagger == 0 {
                0
            } else {
                world.rng.random_range(0..stagger)
            };
            world.push(at, Ev::Start(i));
        }
        for (t, fault) in world.plan.faults.clone() {
            world.push(t, Ev::Fault(fault));
        }
        world.push(200 * MS, Ev::Sample);
        world
    }

    pub(crate) fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(ev);
                i
            }
            None => {
                self.slab.push(Some(ev));
                (self.slab.len() - 1) as u32
            }
        };
        self.queue.push(Reverse((at, self.seq, slot)));
    }

    fn pop(&mut self) -> Option<(u64, Ev)> {
        let Reverse((t, _, slot)) = self.queue.pop()?;
        let ev = self.slab[slot as usize].take().expect("queued");
        self.free.push(slot);
        Some((t, ev))
    }

    pub(crate) fn fold(&mut self, values: &[u64]) {
        let mut bytes = Vec::with_capacity(values.len() * 8);
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.hash = xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, self.hash);
    }

    pub(crate) fn trace(&mut self, node: Option<u32>, kind: &str, detail: String) {
        if let Some(out) = self.trace.as_mut() {
            let line = serde_json::json!({
                "t_ms": self.now as f64 / MS as f64,
                "node": node,
                "kind": kind,
                "detail": detail,
            });
            let _ = writeln!(out, "{line}");
        }
    }

    /// Runs to the end of the plan.
    pub(crate) fn run(&mut self) {
        let end = self.plan.duration;
        let began = std::time::Instant::now();
        let mut next_report = S;
        let (mut last_events, mut last_bytes, mut last_foca) = (0, 0, 0);
        while let Some((t, ev)) = self.pop() {
            if t > end {
                break;
            }
            if self.progress && t >= next_report {
                let nodes = self.nodes.len() as u64;
                eprintln!(
                    "t {:>4}s wall {:>7.2}s events {:>9} (+{}) bytes/node/s foca {} election {}",
                    next_report / S,
                    began.elapsed().as_secs_f64(),
                    self.events,
                    self.events - last_events,
                    (self.foca_bytes - last_foca) / nodes,
                    (self.bytes - self.foca_bytes - (last_bytes - last_foca)) / nodes,
                );
                (last_events, last_bytes, last_foca) = (self.events, self.bytes, self.foca_bytes);
                next_report += S;
            }
            self.now = t;
            self.events += 1;
            let (node, len) = match &ev {
                Ev::Deliver { to, data, .. } => (u64::from(*to), data.len() as u64),
                Ev::Wake { node, .. } | Ev::Resume { node, .. } | Ev::Drop { node, .. } => {
                    (u64::from(*node), 0)
                }
                Ev::Start(node) => (u64::from(*node), 0),
                _ => (u64::MAX, 0),
            };
            self.fold(&[t, node, ev.tag(), len]);
            self.dispatch(ev);
        }
        self.now = end;
        self.finish_checks();
        if let Some(out) = self.trace.as_mut() {
            let _ = out.flush();
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Start(i) => self.start(i),
            Ev::Deliver { to, from, data } => {
                let slot = &self.nodes[to as usize];
                if !slot.up() || self.net.cut(from, to) {
                    return;
                }
                if slot.paused_until > self.now {
                    self.nodes[to as usize].backlog.push((from, data));
                    return;
                }
                let local = Duration::from_nanos(slot.local(self.now));
                if let Some(core) = self.nodes[to as usize].core.as_mut() {
                    core.handle_datagram(local, addr(from), &data);
                }
                self.after_core(to);
            }
            Ev::Wake { node, epoch } => {
                let slot = &mut self.nodes[node as usize];
                if slot.epoch != epoch || slot.wake_at != Some(self.now) {
                    return;
                }
                slot.wake_at = None;
                if slot.paused_until > self.now {
                    return;
                }
                let local = Duration::from_nanos(slot.local(self.now));
                if let Some(core) = slot.core.as_mut() {
                    core.handle_timeout(local);
                }
                self.after_core(node);
            }
            Ev::Resume { node, epoch } => {
                let now = self.now;
                let slot = &mut self.nodes[node as usize];
                if slot.epoch != epoch || !slot.up() {
                    return;
                }
                slot.paused_until = 0;
                let local = Duration::from_nanos(slot.local(now));
                let backlog = std::mem::take(&mut slot.backlog);
                if let Some(core) = slot.core.as_mut() {
                    core.handle_timeout(local);
                    for (from, data) in backlog {
                        core.handle_datagram(local, addr(from), &data);
                    }
                }
                self.after_core(node);
            }
            Ev::Drop {
                node,
                epoch,
                resource,
                lease,
            } => {
                let slot = &self.nodes[node as usize];
                if slot.epoch != epoch || !slot.up() {
                    return;
                }
                if slot.paused_until > self.now {
                    let at = slot.paused_until;
                    self.push(
                        at,
                        Ev::Drop {
                            node,
                            epoch,
                            resource,
                            lease,
                        },
                    );
                    return;
                }
                let local = Duration::from_nanos(slot.local(self.now));
                if let Some(core) = self.nodes[node as usize].core.as_mut() {
                    core.lease_dropped(local, &resource_name(resource), lease);
                }
                self.release(node, resource);
                self.after_core(node);
            }
            Ev::Fault(fault) => self.fault(fault),
            Ev::Sample => {
                self.sample();
                let next = if self.checks.converging() {
                    200 * MS
                } else {
                    S
                };
                self.push(self.now + next, Ev::Sample);
            }
        }
    }

    fn start(&mut self, i: u32) {
        if self.nodes[i as usize].up() {
            return;
        }
        let now = self.now;
        let seeds: Vec<SocketAddr> = (0..self.plan.nodes.min(3) as u32).map(addr).collect();
        let slot = &mut self.nodes[i as usize];
        slot.boot += 1;
        slot.epoch += 1;
        slot.paused_until = 0;
        slot.backlog.clear();
        slot.wake_at = None;
        slot.started = now;
        slot.ever_active = false;
        slot.rebase(now, slot.drift);
        let mut cfg = CoreConfig::new(format!("n{i}"), addr(i), slot.boot);
        cfg.seeds = seeds;
        cfg.rng_seed = splitmix64(self.seed ^ splitmix64(u64::from(i) << 20 ^ slot.boot));
        cfg.bugs = self.bugs;
        let local = Duration::from_nanos(slot.local(now));
        let mut core = Core::new(cfg, local).expect("valid node name");
        for r in 0..self.plan.tickets.len() {
            if self.competing[i as usize][r] {
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

    pub(crate) fn crash(&mut self, i: u32) {
        let slot = &mut self.nodes[i as usize];
        if slot.core.take().is_none() {
            return;
        }
        slot.epoch += 1;
        slot.backlog.clear();
        slot.wake_at = None;
        slot.paused_until = 0;
        self.trace(Some(i), "crash", String::new());
        for r in 0..self.holders.len() {
            if self.holders[r].contains(&i) {
                let partitioned = self.net.partition != Partition::None;
                self.checks.owner_crashed(r, self.now, partitioned);
                self.release(i, r);
            }
        }
    }

    /// After any input to node `i`: send, report, reschedule.
    fn after_core(&mut self, i: u32) {
        let mut transmits = Vec::new();
        let mut events = Vec::new();
        let (fp, deadline) = {
            let Some(core) = self.nodes[i as usize].core.as_mut() else {
                return;
            };
            while let Some(t) = core.poll_transmit() {
                transmits.push(t);
            }
            while let Some(e) = core.poll_event() {
                events.push(e);
            }
            (core.view_fingerprint(), core.poll_timeout())
        };
        for t in transmits {
            self.bytes += t.data.len() as u64;
            if t.data.get(3) == Some(&(gossip_election::wire::Kind::Foca as u8)) {
                self.foca_bytes += t.data.len() as u64;
            }
            let Some(to) = index(&t.to) else { continue };
            if to as usize >= self.nodes.len() {
                continue;
            }
            for delay in self.net.transit(i, to) {
                self.push(
                    self.now + delay,
                    Ev::Deliver {
                        to,
                        from: i,
                        data: t.data.clone(),
                    },
                );
            }
        }
        // The view first: an acquisition is judged against the view it was made in.
        if fp != self.nodes[i as usize].fp {
            self.fp_changed(i, fp);
        }
        for e in events {
            self.on_event(i, e);
        }
        let slot = &mut self.nodes[i as usize];
        if let Some(local) = deadline {
            let at = slot.true_time(local.as_nanos() as u64, self.now);
            if slot.wake_at.is_none_or(|w| at < w) {
                slot.wake_at = Some(at);
                let epoch = slot.epoch;
                self.push(at, Ev::Wake { node: i, epoch });
            }
        }
    }

    fn on_event(&mut self, i: u32, e: Event) {
        match e {
            Event::Acquired { resource, .. } => {
                let r = resource_index(&resource);
                if r < self.holders.len() {
                    self.fold(&[self.now, u64::from(i), 100, r as u64]);
                    self.trace(Some(i), "acquired", resource);
                    self.holders[r].insert(i);
                    self.acquired(i, r);
                }
            }
            Event::Lost {
                resource,
                lease,
                reason,
            } => {
                let r = resource_index(&resource);
                if r < self.holders.len() && self.holders[r].contains(&i) && self.told[r].insert(i)
                {
                    let fp = self.nodes[i as usize].fp;
                    self.checks.unhold(fp, r);
                }
                self.trace(Some(i), "lost", format!("{resource} {reason}"));
                let delay = self.rng.random_range(0..20 * MS);
                let epoch = self.nodes[i as usize].epoch;
                self.push(
                    self.now + delay,
                    Ev::Drop {
                        node: i,
                        epoch,
                        resource: r,
                        lease,
                    },
                );
            }
            Event::Yielded {
                resource, forced, ..
            } => {
                let r = resource_index(&resource);
                self.trace(Some(i), "yielded", format!("{resource} forced={forced}"));
                if r < self.holders.len() {
                    self.release(i, r);
                    self.checks.yielded(r, self.now);
                }
            }
            Event::MemberDown(id) => {
                if let Some(j) = index(&id.addr()) {
                    let slot = &self.nodes[j as usize];
                    if slot.up() && slot.boot == id.boot {
                        self.checks
                            .false_down(self.net.partition != Partition::None);
                    }
                }
            }
            Event::StateChanged(state) => {
                self.trace(Some(i), "state", state.to_string());
                if matches!(
                    state,
                    gossip_election::NodeState::Active | gossip_election::NodeState::Alone
                ) {
                    self.nodes[i as usize].ever_active = true;
                }
            }
            _ => {}
        }
    }

    pub(crate) fn release(&mut self, i: u32, r: usize) {
        if self.holders[r].remove(&i) && !self.told[r].remove(&i) {
            let fp = self.nodes[i as usize].fp;
            self.checks.unhold(fp, r);
        }
    }

    fn holder_of(&self, r: usize) -> Option<u32> {
        self.holders.get(r)?.iter().next().copied()
    }

    fn fault(&mut self, fault: Fault) {
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
                self.net.partition = p;
                self.checks.disturbed(now, true);
            }
            Fault::IsolateHolder(r) => {
                if let Some(i) = self.holder_of(r) {
                    let mut g = vec![0u8; self.plan.nodes];
                    g[i as usize] = 1;
                    self.net.partition = Partition::Groups(g);
                    self.checks.disturbed(now, true);
                }
            }
            Fault::HealNetwork => {
                self.net.partition = Partition::None;
                self.checks.disturbed(now, true);
                self.checks.heal(now, false);
            }
            Fault::Pause { node, duration } => self.pause(node, duration),
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
                self.net.extra_loss = extra;
                self.checks.disturbing(true, now);
            }
            Fault::LossBurstEnd => {
                self.net.extra_loss = 0.0;
                self.checks.disturbing(false, now);
            }
            Fault::Withdraw { node, resource } => {
                self.competing[node as usize][resource] = false;
                let local = Duration::from_nanos(self.nodes[node as usize].local(now));
                if let Some(core) = self.nodes[node as usize].core.as_mut() {
                    core.withdraw(local, &resource_name(resource));
                }
                self.after_core(node);
            }
            Fault::Obtain { node, resource } => self.obtain(node, resource),
            Fault::Heal => {
                self.net.partition = Partition::None;
                self.net.extra_loss = 0.0;
                self.checks.disturbing(false, now);
                for i in 0..self.plan.nodes as u32 {
                    if self.nodes[i as usize].drift != 0.0 {
                        self.nodes[i as usize].rebase(now, 0.0);
                    }
                    if !self.nodes[i as usize].up() {
                        self.start(i);
                    }
                    for r in 0..self.plan.tickets.len() {
                        if !self.competing[i as usize][r] && self.plan.competes[i as usize][r] {
                            self.obtain(i, r);
                        }
                    }
                }
                self.checks.disturbed(now, true);
                self.checks.heal(now, true);
            }
        }
    }

    /// The workload has `node` compete for `resource` (again).
    fn obtain(&mut self, node: u32, resource: usize) {
        self.competing[node as usize][resource] = true;
        let local = Duration::from_nanos(self.nodes[node as usize].local(self.now));
        let tickets = self.plan.tickets[resource];
        if let Some(core) = self.nodes[node as usize].core.as_mut() {
            let _ = core.obtain(local, &resource_name(resource), tickets);
        }
        self.after_core(node);
    }

    fn pause(&mut self, node: u32, duration: u64) {
        let slot = &mut self.nodes[node as usize];
        if !slot.up() || slot.paused_until > self.now {
            return;
        }
        slot.paused_until = self.now + duration;
        let epoch = slot.epoch;
        self.push(self.now + duration, Ev::Resume { node, epoch });
        self.checks.disturbed(self.now, false);
        self.checks.disturbed(self.now + duration, false);
    }
}
