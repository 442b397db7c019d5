//! The discrete-event world: one `(time, sequence)` queue, nodes running the library's
//! sans-IO core in virtual time, the network model, faults and the application model.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::{Index, IndexMut};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gossip_election::proto::{Core, CoreConfig, Event, LeaseId, PlantedBugs};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::check::Checks;
use crate::net::{Links, Net, NetConfig, Partition};
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

/// The port every slot's first process uses.
pub const FIRST_PORT: u16 = 7946;

/// The address of node `i` on `port`: a slot whose processes get fresh addresses moves to
/// the next port with each (`address-churn`).
pub fn addr_at(i: u32, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(127, 1, (i >> 8) as u8, (i & 0xff) as u8),
        port,
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
        /// The ports of the two addresses (a slot may have moved since).
        ports: (u16, u16),
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
        lease: LeaseId,
    },
    Fault(Fault),
    Sample,
}

impl Ev {
    /// The node a node event is for (None: a global event).
    fn node(&self) -> Option<u32> {
        match self {
            Ev::Deliver { to, .. } => Some(*to),
            Ev::Wake { node, .. } | Ev::Resume { node, .. } | Ev::Drop { node, .. } => Some(*node),
            Ev::Start(_) | Ev::Fault(_) | Ev::Sample => None,
        }
    }

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

/// The largest per-address tables of any up node at one instant.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TableSample {
    /// Simulated seconds.
    pub at_s: u64,
    /// Distinct addresses used so far.
    pub addresses: u64,
    pub tables: Vec<TableSize>,
}

/// One table's size.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TableSize {
    pub table: &'static str,
    /// Entries (the most of any up node).
    pub entries: usize,
    /// Approximate bytes (the most of any up node).
    pub bytes: usize,
}

/// One node slot: the instance (if up) and what the world knows about it.
pub(crate) struct Slot {
    pub core: Option<Core>,
    /// The node name its processes start with (`n{index}` unless a process with another
    /// node's name was started here).
    name: String,
    pub epoch: u32,
    pub boot: u64,
    pub drift: f64,
    base_t: u64,
    base_local: u64,
    pub paused_until: u64,
    backlog: Vec<(SocketAddr, Vec<u8>)>,
    wake_at: Option<u64>,
    pub started: u64,
    pub ever_active: bool,
    /// Runs alone because it reached nobody since it started, and has not joined since: its
    /// membership is itself, whatever the network connects it to.
    pub alone: bool,
    /// Leaving gracefully: start again this long (ns) after it has left.
    restart_after_leave: Option<u64>,
    /// The view fingerprint the checkers last heard of (set by `fp_changed`).
    pub fp: u64,
    /// The fingerprint last reported from the node's own processing.
    fp_out: u64,
    /// This node's outgoing links and its own random stream.
    links: Links,
    /// The port of its current address.
    pub port: u16,
    /// Its next process starts at a fresh address (the next port) under a fresh name.
    fresh_on_restart: bool,
    /// The node's events of the window being simulated (kept empty, with its capacity,
    /// between windows).
    inbox: Vec<Queued>,
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

/// The node slots, by index. A slot is lent to the thread that simulates its node's share
/// of a window and put back before the world reads it again.
pub(crate) struct Slots(Vec<Option<Box<Slot>>>);

impl Slots {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        (0..self.len()).map(|i| &self[i])
    }

    fn lend(&mut self, node: u32) -> Box<Slot> {
        self.0[node as usize]
            .take()
            .expect("a slot is lent once a window")
    }

    fn put_back(&mut self, node: u32, slot: Box<Slot>) {
        self.0[node as usize] = Some(slot);
    }
}

impl Index<usize> for Slots {
    type Output = Slot;

    fn index(&self, i: usize) -> &Slot {
        self.0[i]
            .as_deref()
            .expect("slots are back between windows")
    }
}

impl IndexMut<usize> for Slots {
    fn index_mut(&mut self, i: usize) -> &mut Slot {
        self.0[i]
            .as_deref_mut()
            .expect("slots are back between windows")
    }
}

/// A whole fleet in virtual time.
pub struct World {
    pub(crate) now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, u32)>>,
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
    pub(crate) nodes: Slots,
    /// Shared with the worker threads while they simulate a window; changed (by faults)
    /// only between windows, when the world holds the only reference.
    pub(crate) net: Arc<Net>,
    pub(crate) dropped_by_partition: u64,
    pub(crate) dropped_by_loss: u64,
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
    /// Per-address table sizes at each quarter of the run.
    pub(crate) tables: Vec<TableSample>,
    trace: Option<Box<dyn Write>>,
    pub(crate) hash: u64,
    pub(crate) events: u64,
    pub(crate) bytes: u64,
    /// Bytes sent as foca datagrams (the rest is the election's own repair traffic).
    foca_bytes: u64,
    /// Print a line per simulated second to stderr.
    pub(crate) progress: bool,
    /// Threads that simulate the nodes of one window (the trace does not depend on it).
    pub(crate) threads: usize,
}

impl World {
    pub(crate) fn new(
        plan: Plan,
        seed: u64,
        bugs: PlantedBugs,
        trace: Option<Box<dyn Write>>,
    ) -> Self {
        let net = Net::new(NetConfig {
            latency_floor: plan.latency_mean / 2,
            latency_jitter: plan.latency_mean - plan.latency_mean / 2,
            loss: plan.loss,
            duplicate: plan.duplicate,
            burst: plan.burst,
        });
        let n = plan.nodes;
        let nodes = (0..n)
            .map(|i| Slot {
                core: None,
                name: format!("n{i}"),
                epoch: 0,
                boot: 1000 + i as u64 * 7,
                drift: 0.0,
                base_t: 0,
                base_local: 0,
                paused_until: 0,
                backlog: Vec::new(),
                port: FIRST_PORT,
                fresh_on_restart: false,
                wake_at: None,
                started: 0,
                ever_active: false,
                alone: false,
                restart_after_leave: None,
                fp: 0,
                fp_out: 0,
                links: Links::new(stream(seed, (1 << 32) | i as u64)),
                inbox: Vec::new(),
            })
            .map(|slot| Some(Box::new(slot)))
            .collect();
        let nodes = Slots(nodes);
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
            net: Arc::new(net),
            dropped_by_partition: 0,
            dropped_by_loss: 0,
            seed,
            rng: stream(seed, 2),
            bugs,
            holders: vec![BTreeSet::new(); resources],
            told: vec![BTreeSet::new(); resources],
            competing,
            checks,
            tables: Vec::new(),
            trace,
            hash: splitmix64(seed),
            events: 0,
            bytes: 0,
            foca_bytes: 0,
            progress: false,
            threads: 1,
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

    fn pop(&mut self) -> Option<(u64, u64, Ev)> {
        let Reverse((t, seq, slot)) = self.queue.pop()?;
        let ev = self.slab[slot as usize].take().expect("queued");
        self.free.push(slot);
        Some((t, seq, ev))
    }

    pub(crate) fn fold<const N: usize>(&mut self, values: [u64; N]) {
        let bytes = values.map(u64::to_le_bytes);
        self.hash = xxhash_rust::xxh3::xxh3_64_with_seed(bytes.as_flattened(), self.hash);
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
    ///
    /// Node events run in windows no longer than the least network delay: within one, no
    /// node's event can affect another node, so the nodes of a window are simulated apart
    /// (on `threads` threads) and what they did is then applied to the checkers in
    /// `(time, node)` order. Faults, starts and samples run alone, between windows. The
    /// trace is the same whatever the number of threads.
    pub(crate) fn run(&mut self) {
        let lanes: Vec<Lane> = (1..self.threads.max(1)).map(|_| Lane::default()).collect();
        std::thread::scope(|scope| {
            for lane in &lanes {
                scope.spawn(move || lane.serve());
            }
            // Lanes stop when the run ends, and when it panics.
            struct Quit<'a>(&'a [Lane]);
            impl Drop for Quit<'_> {
                fn drop(&mut self) {
                    for lane in self.0 {
                        lane.state.store(QUIT, Ordering::Release);
                    }
                }
            }
            let _quit = Quit(&lanes);
            self.run_windows(&lanes);
        });
        self.now = self.plan.duration;
        self.finish_checks();
        if let Some(out) = self.trace.as_mut() {
            let _ = out.flush();
        }
    }

    fn run_windows(&mut self, lanes: &[Lane]) {
        let end = self.plan.duration;
        let began = std::time::Instant::now();
        let mut next_report = S;
        let (mut last_events, mut last_bytes, mut last_foca) = (0, 0, 0);
        let lookahead = self.net.lookahead();
        // A window's events, grouped by node (kept from window to window, so that a window
        // allocates nothing here).
        let mut window: Vec<(u32, Queued)> = Vec::new();
        let mut pending: Option<(u64, Ev)> = None;
        loop {
            let (t0, first) = match pending.take() {
                Some(next) => next,
                None => match self.pop() {
                    Some((t, _, ev)) => (t, ev),
                    None => break,
                },
            };
            if t0 > end {
                break;
            }
            if self.progress && t0 >= next_report {
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
            let Some(node) = first.node() else {
                self.now = t0;
                self.events += 1;
                let at = match first {
                    Ev::Start(i) => u64::from(i),
                    _ => u64::MAX,
                };
                self.fold([t0, at, first.tag(), 0]);
                self.dispatch(first);
                continue;
            };
            // A window: node events before `t0 + lookahead`, up to the next global event.
            let window_end = t0 + lookahead.max(1);
            window.push((node, (t0, 0, first)));
            while let Some(&Reverse((t, _, _))) = self.queue.peek() {
                if t >= window_end || t > end {
                    break;
                }
                let (t, seq, ev) = self.pop().expect("peeked");
                let Some(node) = ev.node() else {
                    pending = Some((t, ev));
                    break;
                };
                window.push((node, (t, seq, ev)));
            }
            let window_end = pending.as_ref().map_or(window_end, |p| p.0.min(window_end));
            // Stable: each node's events stay in queue order.
            window.sort_by_key(|e| e.0);
            let mut items = Vec::new();
            for (node, queued) in window.drain(..) {
                if items.last().is_none_or(|item: &Item| item.node != node) {
                    let slot = self.nodes.lend(node);
                    items.push(Item { node, slot });
                }
                items.last_mut().expect("pushed").slot.inbox.push(queued);
            }
            let done = self.simulate(items, window_end, lanes);
            self.apply(done);
        }
    }

    /// Simulates each node's events of one window: this thread and the lanes take the
    /// nodes one by one until none is left.
    fn simulate(&mut self, items: Vec<Item>, window_end: u64, lanes: &[Lane]) -> Vec<Done> {
        let helpers = if items.len() < 2 { 0 } else { lanes.len() };
        let job = Arc::new(Job {
            items: items
                .into_iter()
                .map(|item| Mutex::new(Some(item)))
                .collect(),
            next: AtomicUsize::new(0),
            net: Arc::clone(&self.net),
            nodes: self.nodes.len(),
            window_end,
        });
        for lane in &lanes[..helpers] {
            *lane.job.lock().expect("lane lock") = Some(Arc::clone(&job));
            lane.state.store(JOB, Ordering::Release);
        }
        let mine = job.take_all();
        drop(job);
        let mut done = mine;
        for lane in &lanes[..helpers] {
            done.extend(lane.wait().expect("a simulation thread panicked"));
        }
        done
    }

    /// Applies what the nodes of a window did: counts and trace hashes in node order, the
    /// checker inputs in `(time, node)` order.
    fn apply(&mut self, mut done: Vec<Done>) {
        done.sort_unstable_by_key(|d| d.node);
        let mut checked: Vec<(u64, u32, usize, Out)> = Vec::new();
        for mut d in done {
            if let Some(slot) = d.slot.take() {
                self.nodes.put_back(d.node, slot);
            }
            let t = &d.tally;
            self.events += t.events;
            self.bytes += t.bytes;
            self.foca_bytes += t.foca_bytes;
            self.dropped_by_loss += t.lost;
            self.dropped_by_partition += t.cut;
            self.checks.effects.boot_raises += t.boot_raises;
            self.fold([u64::from(d.node), t.hash]);
            for (k, (at, out)) in d.outputs.into_iter().enumerate() {
                match out {
                    Out::Push { at, ev } => self.push(at, ev),
                    out => checked.push((at, d.node, k, out)),
                }
            }
        }
        checked.sort_unstable_by_key(|o| (o.0, o.1, o.2));
        for (t, node, _, out) in checked {
            self.now = t;
            self.output(node, out);
        }
    }

    fn output(&mut self, node: u32, out: Out) {
        match out {
            Out::Push { at, ev } => self.push(at, ev),
            Out::Fp(fp) => self.fp_changed(node, fp),
            Out::Event(e) => self.on_event(node, e),
            Out::Release(r) => self.release(node, r),
        }
    }

    /// Global events: starts, faults and samples.
    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Start(i) => self.start(i),
            Ev::Fault(fault) => self.fault(fault),
            Ev::Sample => {
                self.sample();
                self.sample_tables();
                let next = if self.checks.converging() {
                    200 * MS
                } else {
                    S
                };
                self.push(self.now + next, Ev::Sample);
            }
            Ev::Deliver { .. } | Ev::Wake { .. } | Ev::Resume { .. } | Ev::Drop { .. } => {
                unreachable!("node events run in windows")
            }
        }
    }

    fn start(&mut self, i: u32) {
        let boot = self.nodes[i as usize].boot + 1;
        self.start_as(i, boot);
    }

    /// Starts node `i` (if down) as process start `boot`.
    fn start_as(&mut self, i: u32, boot: u64) {
        if self.nodes[i as usize].up() {
            return;
        }
        let now = self.now;
        let seeds: Vec<SocketAddr> = (0..self.plan.nodes.min(3) as u32)
            .map(|s| self.addr_of(s))
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
        let local = Duration::from_nanos(slot.local(now));
        let mut core = Core::new(cfg, local).expect("valid node config");
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
        if !self.drop_instance(i) {
            return;
        }
        self.trace(Some(i), "crash", String::new());
        for r in 0..self.holders.len() {
            if self.holders[r].contains(&i) {
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
        true
    }

    /// Node `i` has left gracefully: its process exits, and starts again if planned.
    fn left(&mut self, i: u32) {
        let restart_after = self.nodes[i as usize].restart_after_leave;
        if !self.drop_instance(i) {
            return;
        }
        self.trace(Some(i), "exit", String::new());
        // A lease the application still held (a forced handoff) ends with the process.
        for r in 0..self.holders.len() {
            self.release(i, r);
        }
        if let Some(after) = restart_after {
            self.push(self.now + after, Ev::Fault(Fault::Restart(i)));
        }
    }

    /// After a global event gave node `i` input: send, report, reschedule.
    fn after_core(&mut self, i: u32) {
        let now = self.now;
        let env = Env {
            net: &self.net,
            nodes: self.nodes.len(),
        };
        let slot = &mut self.nodes.0[i as usize]
            .as_deref_mut()
            .expect("slots are back between windows");
        // Nothing falls inside a window that ends now: everything goes to the queue.
        let mut run = NodeRun::new(i, slot, &env, now);
        run.after_core(now);
        let done = run.finish();
        self.apply(vec![done]);
    }

    fn on_event(&mut self, i: u32, e: Event) {
        match e {
            Event::Acquired { resource, .. } => {
                let r = resource_index(&resource);
                if r < self.holders.len() {
                    self.fold([self.now, u64::from(i), 100, r as u64]);
                    self.trace(Some(i), "acquired", resource);
                    self.holders[r].insert(i);
                    self.acquired(i, r);
                }
            }
            Event::Lost {
                resource, reason, ..
            } => {
                let r = resource_index(&resource);
                if r < self.holders.len() && self.holders[r].contains(&i) && self.told[r].insert(i)
                {
                    let fp = self.nodes[i as usize].fp;
                    self.checks.unhold(fp, r);
                }
                self.trace(Some(i), "lost", format!("{resource} {reason}"));
            }
            Event::Yielded {
                resource, forced, ..
            } => {
                let r = resource_index(&resource);
                self.trace(Some(i), "yielded", format!("{resource} forced={forced}"));
                if r < self.holders.len() {
                    // Unforced, the ticket goes only once the application dropped the lease.
                    self.checks.checks += 1;
                    if !forced && self.holders[r].contains(&i) {
                        let detail =
                            format!("n{i} yielded {resource} while its application still held it");
                        self.checks.violate("yield-after-drop", self.now, detail);
                    }
                    self.release(i, r);
                    self.checks.yielded(r, self.now);
                }
            }
            Event::MemberDown(id) => {
                if let Some(j) = index(&id.addr()) {
                    let slot = &self.nodes[j as usize];
                    if slot.up() && slot.boot == id.boot() && slot.port == id.addr().port() {
                        self.checks
                            .false_down(self.now, self.net.partition != Partition::None);
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
                                && !self.competing[rival as usize][resource]
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

    pub(crate) fn release(&mut self, i: u32, r: usize) {
        if self.holders[r].remove(&i) && !self.told[r].remove(&i) {
            let fp = self.nodes[i as usize].fp;
            self.checks.unhold(fp, r);
        }
    }

    /// At each quarter of the run, the largest per-address tables of any up node.
    fn sample_tables(&mut self) {
        let quarter = self.plan.duration / 4;
        let due = quarter * (self.tables.len() as u64 + 1);
        if self.tables.len() >= 4 || self.now < due {
            return;
        }
        let mut largest: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
        for slot in self.nodes.iter() {
            if let Some(core) = slot.core.as_ref() {
                for (name, entries, bytes) in core.address_tables() {
                    let e = largest.entry(name).or_default();
                    e.0 = e.0.max(entries);
                    e.1 = e.1.max(bytes);
                }
            }
        }
        self.tables.push(TableSample {
            at_s: self.now / S,
            addresses: self.checks.addresses_retired() + self.plan.nodes as u64,
            tables: largest
                .into_iter()
                .map(|(table, (entries, bytes))| TableSize {
                    table,
                    entries,
                    bytes,
                })
                .collect(),
        });
    }

    /// The current address of node `i`.
    /// The network, to change it between windows (no worker thread holds it then).
    fn net_mut(&mut self) -> &mut Net {
        Arc::make_mut(&mut self.net)
    }

    pub(crate) fn addr_of(&self, i: u32) -> SocketAddr {
        addr_at(i, self.nodes[i as usize].port)
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
                    .filter(|&v| self.nodes[v as usize].up() && !self.competing[v as usize][r])
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
            }
            Fault::CutOutgoing { resource, holder } => {
                let node = if holder {
                    self.holder_of(resource)
                } else {
                    let idle: Vec<u32> = (0..self.plan.nodes as u32)
                        .filter(|&v| {
                            self.nodes[v as usize].up()
                                && self.competing[v as usize][resource]
                                && self.holders.iter().all(|h| !h.contains(&v))
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
                        && self.holders.iter().all(|holders| !holders.contains(&v))
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
                self.net_mut().partition = Partition::None;
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
                self.net_mut().extra_loss = extra;
                self.checks.disturbing(true, now);
            }
            Fault::LossBurstEnd => {
                self.net_mut().extra_loss = 0.0;
                self.checks.disturbing(false, now);
            }
            Fault::Withdraw { node, resource } => {
                self.checks.planned_move(now, node);
                self.competing[node as usize][resource] = false;
                let local = Duration::from_nanos(self.nodes[node as usize].local(now));
                if let Some(core) = self.nodes[node as usize].core.as_mut() {
                    core.withdraw(local, &resource_name(resource));
                }
                self.after_core(node);
            }
            Fault::Obtain { node, resource } => {
                self.checks.planned_move(now, node);
                self.obtain(node, resource);
            }
            Fault::Heal => {
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

    /// Shuts node `node` down gracefully (a planned move: the fleet must stay within
    /// tickets through it); it starts again `restart_after` after it has left.
    fn leave(&mut self, node: u32, restart_after: u64) {
        if !self.nodes[node as usize].up() {
            return;
        }
        if self.holders.iter().any(|h| h.contains(&node)) {
            self.checks.effects.leaving_holders += 1;
        }
        self.nodes[node as usize].restart_after_leave = Some(restart_after);
        let local = Duration::from_nanos(self.nodes[node as usize].local(self.now));
        if let Some(core) = self.nodes[node as usize].core.as_mut() {
            core.leave(local);
        }
        self.after_core(node);
    }

    /// Cuts node `i` from everyone.
    fn isolate(&mut self, i: u32) {
        let mut g = vec![0u8; self.plan.nodes];
        g[i as usize] = 1;
        self.net_mut().partition = Partition::Groups(g);
        self.checks.disturbed(self.now, true);
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

/// A queued node event: `(time, sequence, event)`.
type Queued = (u64, u64, Ev);

/// One node's share of a window, lent to the thread that claims it: the node's slot, its
/// inbox holding the node's events of the window.
struct Item {
    node: u32,
    slot: Box<Slot>,
}

/// What a node did at a time, for the world to apply.
type Output = (u64, Out);

pub(crate) enum Out {
    /// An event for the queue.
    Push { at: u64, ev: Ev },
    /// The node's view fingerprint changed.
    Fp(u64),
    /// The node's core reported an event.
    Event(Event),
    /// The application dropped its lease on a resource.
    Release(usize),
}

/// What one node's share of a window counted.
#[derive(Default)]
struct Tally {
    events: u64,
    /// The trace hash of the events it processed.
    hash: u64,
    bytes: u64,
    foca_bytes: u64,
    lost: u64,
    cut: u64,
    /// The node raised its boot (its process start number) by itself.
    boot_raises: u64,
}

/// One node's share of a window, done.
struct Done {
    node: u32,
    tally: Tally,
    outputs: Vec<Output>,
    /// The node's slot, to put back (when it was lent).
    slot: Option<Box<Slot>>,
}

/// What the nodes of a window read: the network, fixed until the next fault.
struct Env<'a> {
    net: &'a Net,
    nodes: usize,
}

/// One node's events of one window, with the events it schedules for itself inside it.
struct NodeRun<'a> {
    i: u32,
    slot: &'a mut Slot,
    env: &'a Env<'a>,
    window_end: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    evs: Vec<Option<Ev>>,
    seq: u64,
    outputs: Vec<Output>,
    tally: Tally,
}

/// Sequence numbers of events a node schedules inside a window: after every queued one
/// at the same time, as a global sequence number would be.
const LOCAL_SEQ: u64 = 1 << 62;

impl<'a> NodeRun<'a> {
    fn new(i: u32, slot: &'a mut Slot, env: &'a Env<'a>, window_end: u64) -> Self {
        NodeRun {
            i,
            slot,
            env,
            window_end,
            queue: BinaryHeap::new(),
            evs: Vec::new(),
            seq: LOCAL_SEQ,
            outputs: Vec::new(),
            tally: Tally::default(),
        }
    }

    fn finish(self) -> Done {
        Done {
            node: self.i,
            tally: self.tally,
            outputs: self.outputs,
            slot: None,
        }
    }

    /// Runs the events in the slot's inbox.
    fn run(mut self) -> Done {
        let mut inbox = std::mem::take(&mut self.slot.inbox);
        for (t, seq, ev) in inbox.drain(..) {
            self.queue.push(Reverse((t, seq, self.evs.len())));
            self.evs.push(Some(ev));
        }
        self.slot.inbox = inbox;
        while let Some(Reverse((t, _, k))) = self.queue.pop() {
            let ev = self.evs[k].take().expect("queued once");
            let len = match &ev {
                Ev::Deliver { data, .. } => data.len() as u64,
                _ => 0,
            };
            self.tally.events += 1;
            let bytes = [t, u64::from(self.i), ev.tag(), len].map(u64::to_le_bytes);
            self.tally.hash =
                xxhash_rust::xxh3::xxh3_64_with_seed(bytes.as_flattened(), self.tally.hash);
            self.dispatch(t, ev);
        }
        self.finish()
    }

    /// Runs `ev` at `at` within this window if it is this node's and falls inside it;
    /// queues it otherwise.
    fn schedule(&mut self, now: u64, at: u64, ev: Ev) {
        if at < self.window_end && ev.node() == Some(self.i) {
            self.seq += 1;
            self.queue.push(Reverse((at, self.seq, self.evs.len())));
            self.evs.push(Some(ev));
        } else {
            self.outputs.push((now, Out::Push { at, ev }));
        }
    }

    fn local(&self, t: u64) -> Duration {
        Duration::from_nanos(self.slot.local(t))
    }

    fn dispatch(&mut self, t: u64, ev: Ev) {
        match ev {
            Ev::Deliver {
                to,
                from,
                ports: (from_port, to_port),
                data,
            } => {
                // A process at an address that no longer exists gets nothing.
                if !self.slot.up() || self.slot.port != to_port {
                    return;
                }
                let from_addr = addr_at(from, from_port);
                if self.env.net.partition.blocks(from, to) {
                    self.tally.cut += 1;
                    return;
                }
                if self.slot.paused_until > t {
                    self.slot.backlog.push((from_addr, data));
                    return;
                }
                let local = self.local(t);
                if let Some(core) = self.slot.core.as_mut() {
                    core.handle_datagram(local, from_addr, &data);
                }
                self.after_core(t);
            }
            Ev::Wake { epoch, .. } => {
                if self.slot.epoch != epoch || self.slot.wake_at != Some(t) {
                    return;
                }
                self.slot.wake_at = None;
                if self.slot.paused_until > t {
                    return;
                }
                let local = self.local(t);
                if let Some(core) = self.slot.core.as_mut() {
                    core.handle_timeout(local);
                }
                self.after_core(t);
            }
            Ev::Resume { epoch, .. } => {
                if self.slot.epoch != epoch || !self.slot.up() {
                    return;
                }
                self.slot.paused_until = 0;
                let local = self.local(t);
                let backlog = std::mem::take(&mut self.slot.backlog);
                if let Some(core) = self.slot.core.as_mut() {
                    core.handle_timeout(local);
                    for (from, data) in backlog {
                        core.handle_datagram(local, from, &data);
                    }
                }
                self.after_core(t);
            }
            Ev::Drop {
                node,
                epoch,
                resource,
                lease,
            } => {
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
            Ev::Start(_) | Ev::Fault(_) | Ev::Sample => unreachable!("not a node event"),
        }
    }

    /// After any input to the node: send, report, reschedule.
    fn after_core(&mut self, t: u64) {
        let mut transmits = Vec::new();
        let mut events = Vec::new();
        let (fp, deadline) = {
            let Some(core) = self.slot.core.as_mut() else {
                return;
            };
            while let Some(tx) = core.poll_transmit() {
                transmits.push(tx);
            }
            while let Some(e) = core.poll_event() {
                events.push(e);
            }
            if core.id().boot() != self.slot.boot {
                self.slot.boot = core.id().boot();
                self.tally.boot_raises += 1;
            }
            (core.view_fingerprint(), core.poll_timeout())
        };
        for tx in transmits {
            let len = tx.data.len() as u64;
            let foca = tx.data.get(3) == Some(&(gossip_election::wire::Kind::Foca as u8));
            self.tally.bytes += len;
            if foca {
                self.tally.foca_bytes += len;
            }
            let Some(to) = index(&tx.to) else { continue };
            if to as usize >= self.env.nodes {
                continue;
            }
            match self.env.net.transit(&mut self.slot.links, to) {
                None => self.tally.lost += 1,
                Some((first, second)) => {
                    // The first copy, then the duplicate (if any); the last takes the data.
                    let (from, data) = (self.i, tx.data);
                    let ports = (self.slot.port, tx.to.port());
                    match second {
                        None => self.schedule(
                            t,
                            t + first,
                            Ev::Deliver {
                                to,
                                from,
                                ports,
                                data,
                            },
                        ),
                        Some(dup) => {
                            let copy = data.clone();
                            self.schedule(
                                t,
                                t + first,
                                Ev::Deliver {
                                    to,
                                    from,
                                    ports,
                                    data: copy,
                                },
                            );
                            self.schedule(
                                t,
                                t + dup,
                                Ev::Deliver {
                                    to,
                                    from,
                                    ports,
                                    data,
                                },
                            );
                        }
                    }
                }
            }
        }
        // The view first: an acquisition is judged against the view it was made in.
        if fp != self.slot.fp_out {
            self.slot.fp_out = fp;
            self.outputs.push((t, Out::Fp(fp)));
        }
        for e in events {
            if let Event::Lost {
                resource, lease, ..
            } = &e
            {
                // The application takes a moment to stop.
                let delay = self.slot.links.below(20 * MS);
                let ev = Ev::Drop {
                    node: self.i,
                    epoch: self.slot.epoch,
                    resource: resource_index(resource),
                    lease: *lease,
                };
                self.schedule(t, t + delay, ev);
            }
            self.outputs.push((t, Out::Event(e)));
        }
        if let Some(local) = deadline {
            let at = self.slot.true_time(local.as_nanos() as u64, t);
            if self.slot.wake_at.is_none_or(|w| at < w) {
                self.slot.wake_at = Some(at);
                let ev = Ev::Wake {
                    node: self.i,
                    epoch: self.slot.epoch,
                };
                self.schedule(t, at, ev);
            }
        }
    }
}

const IDLE: u8 = 0;
const JOB: u8 = 1;
const DONE: u8 = 2;
const QUIT: u8 = 3;
const FAILED: u8 = 4;

/// A helper thread that takes nodes of each window.
#[derive(Default)]
struct Lane {
    state: AtomicU8,
    job: Mutex<Option<Arc<Job>>>,
    done: Mutex<Vec<Done>>,
}

/// One window's nodes, shared with the lanes: each thread claims the next item with
/// `next` until none is left.
struct Job {
    items: Vec<Mutex<Option<Item>>>,
    next: AtomicUsize,
    net: Arc<Net>,
    nodes: usize,
    window_end: u64,
}

impl Job {
    /// Simulates items until none is left.
    fn take_all(&self) -> Vec<Done> {
        let env = Env {
            net: &self.net,
            nodes: self.nodes,
        };
        let mut done = Vec::new();
        loop {
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = self.items.get(k) else {
                return done;
            };
            let Item { node, mut slot } = item
                .lock()
                .expect("item lock")
                .take()
                .expect("claimed once");
            let mut d = NodeRun::new(node, &mut slot, &env, self.window_end).run();
            d.slot = Some(slot);
            done.push(d);
        }
    }
}

impl Lane {
    fn serve(&self) {
        loop {
            let mut idle = 0;
            loop {
                match self.state.load(Ordering::Acquire) {
                    JOB => break,
                    QUIT => return,
                    _ => backoff(&mut idle),
                }
            }
            let job = self.job.lock().expect("lane lock").take().expect("a job");
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.take_all()));
            // The world changes the network only when no lane holds it.
            drop(job);
            match done {
                Ok(done) => {
                    *self.done.lock().expect("lane lock") = done;
                    let reported =
                        self.state
                            .compare_exchange(JOB, DONE, Ordering::AcqRel, Ordering::Acquire);
                    if reported.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    self.state.store(FAILED, Ordering::Release);
                    return;
                }
            }
        }
    }

    /// Waits until the lane is done with its window: its nodes, or None if it panicked.
    fn wait(&self) -> Option<Vec<Done>> {
        let mut idle = 0;
        loop {
            match self.state.load(Ordering::Acquire) {
                DONE => break,
                FAILED => return None,
                _ => backoff(&mut idle),
            }
        }
        self.state.store(IDLE, Ordering::Release);
        Some(std::mem::take(&mut *self.done.lock().expect("lane lock")))
    }
}

/// Spin briefly (windows follow each other within microseconds), then yield, then sleep.
fn backoff(idle: &mut u32) {
    *idle += 1;
    if *idle < 20_000 {
        std::hint::spin_loop();
    } else if *idle < 21_000 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(20));
    }
}
