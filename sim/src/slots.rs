//! The node slots: each node's instance (if up), its address and its local clock, and what
//! the world knows about it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::{Index, IndexMut};

use gossip_election::proto::Core;

use crate::net::Links;

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

/// The node whose address `addr` is, if it is a node's.
pub(crate) fn index(addr: &SocketAddr) -> Option<u32> {
    match addr {
        SocketAddr::V4(a) if a.ip().octets()[..2] == [127, 1] => {
            let o = a.ip().octets();
            Some(u32::from(o[2]) << 8 | u32::from(o[3]))
        }
        _ => None,
    }
}

/// One node slot: the instance (if up) and what the world knows about it.
pub(crate) struct Slot {
    pub core: Option<Core>,
    /// The node name its processes start with (`n{index}` unless a process with another
    /// node's name was started here).
    pub(crate) name: String,
    pub epoch: u32,
    pub boot: u64,
    pub drift: f64,
    pub(crate) base_t: u64,
    pub(crate) base_local: u64,
    pub paused_until: u64,
    pub(crate) backlog: Vec<(SocketAddr, Vec<u8>)>,
    pub(crate) wake_at: Option<u64>,
    pub started: u64,
    pub ever_active: bool,
    /// Runs alone because it reached nobody since it started, and has not joined since: its
    /// membership is itself, whatever the network connects it to.
    pub alone: bool,
    /// Leaving gracefully: start again this long (ns) after it has left.
    pub(crate) restart_after_leave: Option<u64>,
    /// Quorum mode: the fleet size this node's next process starts with (the plan's
    /// fleet size when None).
    pub(crate) members: Option<u16>,
    /// The view fingerprint the checkers last heard of (set as the world hands them the
    /// node's view changes, in `(time, node)` order).
    pub fp: u64,
    /// The fingerprint last reported from the node's own processing.
    pub(crate) fp_out: u64,
    /// This node's outgoing links and its own random stream.
    pub(crate) links: Links,
    /// The port of its current address.
    pub port: u16,
    /// Its next process starts at a fresh address (the next port) under a fresh name.
    pub(crate) fresh_on_restart: bool,
}

impl Slot {
    pub fn up(&self) -> bool {
        self.core.is_some()
    }

    /// The node's clock at true time `t`.
    pub(crate) fn local(&self, t: u64) -> u64 {
        self.base_local + ((t - self.base_t) as f64 * (1.0 + self.drift)) as u64
    }

    /// The first true time at which the node's clock has reached `local`, and not before
    /// `now`.
    pub(crate) fn true_time(&self, local: u64, now: u64) -> u64 {
        if local <= self.base_local {
            return now;
        }
        let t = self.base_t + ((local - self.base_local) as f64 / (1.0 + self.drift)).ceil() as u64;
        let t = if self.local(t) < local { t + 1 } else { t };
        t.max(now)
    }

    /// From `now` on, the node's clock runs at rate `1 + drift`.
    pub(crate) fn rebase(&mut self, now: u64, drift: f64) {
        self.base_local = self.local(now);
        self.base_t = now;
        self.drift = drift;
    }
}

/// The node slots, by index. A slot is lent to the thread that simulates its node's share
/// of a window and put back before the world reads it again.
pub(crate) struct Slots(Vec<Option<Box<Slot>>>);

impl Slots {
    /// `n` slots, all down, none started yet.
    pub(crate) fn new(n: usize, mut links: impl FnMut(usize) -> Links) -> Self {
        let slots = (0..n)
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
                members: None,
                fp: 0,
                fp_out: 0,
                links: links(i),
            })
            .map(|slot| Some(Box::new(slot)))
            .collect();
        Slots(slots)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        (0..self.len()).map(|i| &self[i])
    }

    /// The current address of node `i`.
    pub fn addr_of(&self, i: u32) -> SocketAddr {
        addr_at(i, self[i as usize].port)
    }

    pub(crate) fn lend(&mut self, node: u32) -> Box<Slot> {
        self.0[node as usize]
            .take()
            .expect("a slot is lent once a window")
    }

    pub(crate) fn put_back(&mut self, node: u32, slot: Box<Slot>) {
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
