//! The discrete-event world: one `(time, sequence)` queue, nodes running the library's
//! sans-IO core in virtual time, the network model, faults and the application model.
//!
//! [`World`]'s methods come in four kinds, one file each:
//!
//! - the event queue, the trace and the window loop (this file): `run`, `run_windows`,
//!   `apply`, which takes in what the nodes of a window did, `output`, which hands each
//!   of it on, and `dispatch` for global events (starts, faults, checker samples);
//! - the node lifecycle (`lifecycle`): start, crash, graceful leave and exit, and
//!   `after_core`, which collects what a node's core did after a global event gave it input;
//! - the application model (`app`): what the application and the workload do with a node's
//!   core events (hold a lease from acquisition until it drops it, a moment after it was
//!   told to stop; obtain and withdraw resources), which keeps the checkers' [`Truth`];
//! - faults (`faults`): the plan's faults, between windows.
//!
//! Beside the world: the node slots with their addresses and local clocks (`slots`), the
//! runner of one node's share of a window (`runner`), and the helper threads that take
//! nodes of a window, with `simulate`, which shares a window's nodes out (`lanes`).
//!
//! `run_windows` repeats, until the plan's end:
//!
//! 1. Pop the earliest event. A global event (start, fault, sample) runs alone, through
//!    `dispatch`; then the loop starts over.
//! 2. Otherwise open a window at that event's time, no longer than the least network
//!    delay and ending before the next global event, and pop every node event inside it.
//!    Within a window no node's event can affect another node.
//! 3. `simulate` lends each of these nodes' slots, with its events, to this thread and the
//!    lanes: a `NodeRun` runs the node's events in time order, with those the node
//!    schedules for itself inside the window, and returns what the node did.
//! 4. `apply` puts the slots back, adds counts and trace hashes in node order, queues the
//!    events that fall after the window, and hands view changes, core events and lease
//!    drops to the application model and the checkers in `(time, node)` order.

mod app;
mod faults;
mod lanes;
mod lifecycle;
mod runner;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::Write;
use std::sync::Arc;

use gossip_election::proto::{LeaseId, PlantedBugs};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::check::{Checks, Fleet, Truth};
use crate::net::{Links, Net, NetConfig};
use crate::scenario::{Fault, MS, Plan, S};

pub(crate) use crate::slots::Slots;
pub(crate) use app::resource_name;
use lanes::{Item, Lane};
use runner::{Done, Out};

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

/// A queued event: node events (deliveries, wake-ups, resumes, lease drops) run in windows,
/// the others (starts, faults, checker samples) alone, between windows.
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

/// A queued node event: `(time, sequence, event)`.
pub(super) type Queued = (u64, u64, Ev);

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

/// A whole fleet in virtual time.
pub struct World {
    pub(crate) now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, u32)>>,
    slab: Vec<Option<Ev>>,
    free: Vec<u32>,
    pub(crate) nodes: Slots,
    /// Each node's events of the window being simulated (kept empty, with their capacity,
    /// between windows).
    inboxes: Vec<Vec<Queued>>,
    /// Shared with the worker threads while they simulate a window; changed (by faults)
    /// only between windows, when the world holds the only reference.
    pub(crate) net: Arc<Net>,
    pub(crate) dropped_by_partition: u64,
    pub(crate) dropped_by_loss: u64,
    pub(crate) plan: Plan,
    seed: u64,
    rng: Xoshiro256PlusPlus,
    bugs: PlantedBugs,
    /// Who holds what and who competes for what: the ground truth the checkers judge.
    pub(crate) truth: Truth,
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
    /// `Timing::successor_probes` of every node.
    pub(crate) successor_probes: bool,
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
        let nodes = Slots::new(n, |i| Links::new(stream(seed, (1 << 32) | i as u64)));
        let checks = Checks::new(&plan);
        let truth = Truth::new(&plan);
        let mut world = World {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            nodes,
            inboxes: (0..n).map(|_| Vec::new()).collect(),
            net: Arc::new(net),
            dropped_by_partition: 0,
            dropped_by_loss: 0,
            seed,
            rng: stream(seed, 2),
            bugs,
            truth,
            checks,
            tables: Vec::new(),
            trace,
            hash: splitmix64(seed),
            events: 0,
            bytes: 0,
            foca_bytes: 0,
            progress: false,
            threads: 1,
            successor_probes: true,
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
        lanes::with_lanes(self.threads.max(1) - 1, |lanes| self.run_windows(lanes));
        self.now = self.plan.duration;
        let (checks, fleet) = self.checking();
        checks.finish(&fleet);
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
                    let inbox = std::mem::take(&mut self.inboxes[node as usize]);
                    items.push(Item { node, slot, inbox });
                }
                items.last_mut().expect("pushed").inbox.push(queued);
            }
            let done = self.simulate(items, window_end, lanes);
            self.apply(done);
        }
    }

    /// Applies what the nodes of a window did: counts and trace hashes in node order, the
    /// checker inputs in `(time, node)` order.
    fn apply(&mut self, mut done: Vec<Done>) {
        done.sort_unstable_by_key(|d| d.node);
        let mut checked: Vec<(u64, u32, usize, Out)> = Vec::new();
        for mut d in done {
            if let Some(slot) = d.slot.take() {
                self.nodes.put_back(d.node, slot);
                self.inboxes[d.node as usize] = std::mem::take(&mut d.inbox);
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

    /// Hands on one thing a node did: to the queue, the application model or the checkers.
    fn output(&mut self, node: u32, out: Out) {
        match out {
            Out::Push { at, ev } => self.push(at, ev),
            Out::Fp(fp) => {
                let old = std::mem::replace(&mut self.nodes[node as usize].fp, fp);
                let (checks, fleet) = self.checking();
                checks.view_changed(&fleet, node, old, fp);
            }
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
                let (checks, fleet) = self.checking();
                checks.sample(&fleet);
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

    /// The checkers, and what they read of the world.
    pub(crate) fn checking(&mut self) -> (&mut Checks, Fleet<'_>) {
        let fleet = Fleet {
            now: self.now,
            nodes: &self.nodes,
            partition: &self.net.partition,
            plan: &self.plan,
            truth: &self.truth,
        };
        (&mut self.checks, fleet)
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
}
