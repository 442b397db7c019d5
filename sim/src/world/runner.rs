//! The runner of one node's share of a window: it runs the node's events in time order,
//! with the events the node schedules for itself inside the window, and collects what the
//! node did for the world to apply.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use gossip_election::proto::Event;

use super::{Ev, Queued};
use crate::net::Net;
use crate::slots::{Slot, addr_at, index};

/// What a node did at a time, for the world to apply.
type Output = (u64, Out);

pub(super) enum Out {
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
pub(super) struct Tally {
    pub events: u64,
    /// The trace hash of the events it processed.
    pub hash: u64,
    pub bytes: u64,
    pub foca_bytes: u64,
    /// Packets lost on the way.
    pub lost: u64,
    /// Packets that died at a partition.
    pub cut: u64,
    /// The node raised its boot (its process start number) by itself.
    pub boot_raises: u64,
}

/// One node's share of a window, done.
pub(super) struct Done {
    pub node: u32,
    pub tally: Tally,
    pub outputs: Vec<Output>,
    /// The node's slot, to put back (when it was lent).
    pub slot: Option<Box<Slot>>,
    /// The node's inbox, emptied, to put back with its capacity (when it was lent).
    pub inbox: Vec<Queued>,
}

/// What the nodes of a window read: the network, fixed until the next fault.
pub(super) struct Env<'a> {
    pub net: &'a Net,
    pub nodes: usize,
    /// The longest an application takes to drop a lost lease (ns).
    pub drop_within: u64,
}

/// One node's events of one window, with the events it schedules for itself inside it.
pub(super) struct NodeRun<'a> {
    /// The node.
    pub(super) i: u32,
    pub(super) slot: &'a mut Slot,
    pub(super) env: &'a Env<'a>,
    window_end: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    evs: Vec<Option<Ev>>,
    seq: u64,
    pub(super) outputs: Vec<Output>,
    tally: Tally,
}

/// Sequence numbers of events a node schedules inside a window: after every queued one
/// at the same time, as a global sequence number would be.
const LOCAL_SEQ: u64 = 1 << 62;

impl<'a> NodeRun<'a> {
    pub(super) fn new(i: u32, slot: &'a mut Slot, env: &'a Env<'a>, window_end: u64) -> Self {
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

    pub(super) fn finish(self) -> Done {
        Done {
            node: self.i,
            tally: self.tally,
            outputs: self.outputs,
            slot: None,
            inbox: Vec::new(),
        }
    }

    /// Runs the node's events of the window (`inbox`, left empty).
    pub(super) fn run(mut self, inbox: &mut Vec<Queued>) -> Done {
        for (t, seq, ev) in inbox.drain(..) {
            self.queue.push(Reverse((t, seq, self.evs.len())));
            self.evs.push(Some(ev));
        }
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
    pub(super) fn schedule(&mut self, now: u64, at: u64, ev: Ev) {
        if at < self.window_end && ev.node() == Some(self.i) {
            self.seq += 1;
            self.queue.push(Reverse((at, self.seq, self.evs.len())));
            self.evs.push(Some(ev));
        } else {
            self.outputs.push((now, Out::Push { at, ev }));
        }
    }

    /// The node's clock at true time `t`.
    pub(super) fn local(&self, t: u64) -> Duration {
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
            } => self.drop_lease(t, node, epoch, resource, lease),
            Ev::Start(_) | Ev::Fault(_) | Ev::Sample => unreachable!("not a node event"),
        }
    }

    /// After any input to the node: send, report, reschedule.
    pub(super) fn after_core(&mut self, t: u64) {
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
                self.stop_soon(t, resource, *lease);
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
