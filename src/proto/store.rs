//! The store: the latest record per address, shared between the core and foca's
//! broadcast handler, which feeds it the records foca gossips.
//!
//! Records arrive from three places (foca broadcasts, direct pushes, repair answers) and
//! all go through [`Store::offer`]; the node's own record goes through
//! [`Store::offer_own`].

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::identity::NodeId;
use crate::record::Record;

/// A hasher with fixed keys: lookups only, never iterated where order matters.
pub(crate) type FixedState = std::hash::BuildHasherDefault<std::hash::DefaultHasher>;

/// Locks the store. The core and its foca instance use it from one thread at a time, so
/// the lock is never contended; it is a lock only so that a core can move between threads.
/// A lock poisoned by a panic inside the core is taken as it is.
pub(crate) fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Latest record per address, shared with foca's broadcast handler.
#[derive(Debug)]
pub(crate) struct Store {
    /// Never iterated: looked up by address.
    pub records: HashMap<SocketAddr, Record, FixedState>,
    /// Addresses whose record changed since the core last looked.
    pub changed: BTreeSet<SocketAddr>,
    /// Records refused because they did not validate.
    pub invalid: u64,
    /// foca's queued membership updates fill a whole packet (no room for records).
    pub updates_fill_packets: bool,
    /// Chance that a record heard for the first time is gossiped on (see
    /// [`relay_probability`]).
    pub relay_probability: f64,
    /// This node's address: peers' copies of its record are never stored.
    pub own: SocketAddr,
    /// The highest `(boot, version)` of this node's own record seen from peers (a copy
    /// from before a restart with the same boot, or a forgery): the next own record
    /// jumps past it.
    pub own_seen: Option<(u64, u64)>,
    /// The boot of each live member (the view's members, kept here for [`Store::offer`]).
    pub live: HashMap<SocketAddr, u64, FixedState>,
    /// The time of the input being handled (records of non-members are stamped with it).
    pub now: std::time::Duration,
    /// Records stored for addresses that were not members then, oldest first, with when:
    /// expired by [`Store::expire_unattached`], and at most [`MAX_UNATTACHED`].
    unattached: std::collections::VecDeque<(std::time::Duration, SocketAddr)>,
}

/// Most records kept for addresses that are not members.
pub(crate) const MAX_UNATTACHED: usize = 4096;

impl Store {
    pub fn new(own: SocketAddr) -> Self {
        Store {
            own,
            own_seen: None,
            live: HashMap::default(),
            now: std::time::Duration::ZERO,
            unattached: std::collections::VecDeque::new(),
            records: HashMap::default(),
            changed: BTreeSet::new(),
            invalid: 0,
            updates_fill_packets: false,
            relay_probability: 1.0,
        }
    }
}

/// Relaying members per member that hears a record, in larger fleets.
const RELAY_SPREAD: f64 = 6.0;

/// The chance that a member gossips on a record it hears first: 1 up to
/// [`LARGE_FLEET`](crate::proto::timing::LARGE_FLEET) members. Every relay forwards the
/// record `max_transmissions` times, and foca walks its whole record queue for every
/// packet it sends; so in a large fleet only enough members relay for the epidemic to
/// spread (each hearer makes about [`RELAY_SPREAD`] more, which reaches all but about
/// e^-6 of the fleet), and anti-entropy brings the rest.
pub(crate) fn relay_probability(members: usize, max_transmissions: u8) -> f64 {
    if members <= crate::proto::timing::LARGE_FLEET {
        1.0
    } else {
        (RELAY_SPREAD / f64::from(max_transmissions.max(1))).min(1.0)
    }
}

/// Queued membership updates that fill a packet: an update is at most about 30 bytes.
pub(crate) const UPDATES_PER_PACKET: usize = crate::wire::MAX_DATAGRAM / 30;

impl Store {
    /// Whether a record `(addr, boot, version)` would be news.
    pub fn is_news(&self, addr: &SocketAddr, boot: u64, version: u64) -> bool {
        self.records
            .get(addr)
            .is_none_or(|old| (boot, version) > (old.boot, old.version))
    }

    /// Forgets a record at `id`'s address from another process (an older one, or a newer
    /// boot kept from before the clock stepped back): it would shadow this one's.
    pub fn forget_other_boot(&mut self, id: &NodeId) {
        let addr = id.addr();
        if self.records.get(&addr).is_some_and(|r| r.boot != id.boot()) {
            self.records.remove(&addr);
        }
    }

    /// Keeps a peer's `record` if it is newer than what is stored for its address. Never
    /// a record of this node's own address (its own record is installed with
    /// [`Store::offer_own`]), and never one whose boot differs from its live member's
    /// identity in place of one that matches.
    pub fn offer(&mut self, record: Record) -> bool {
        if record.addr == self.own {
            let seen = (record.boot, record.version);
            if self.own_seen.is_none_or(|s| seen > s) {
                self.own_seen = Some(seen);
            }
            return false;
        }
        // Most offers are copies of what is stored: compare versions before validating.
        if !self.is_news(&record.addr, record.boot, record.version) {
            return false;
        }
        if let Some(&boot) = self.live.get(&record.addr)
            && record.boot != boot
            && self
                .records
                .get(&record.addr)
                .is_some_and(|r| r.boot == boot)
        {
            return false;
        }
        let addr = record.addr;
        let stored = self.store(record);
        if stored && !self.live.contains_key(&addr) {
            self.unattached.push_back((self.now, addr));
            if self.unattached.len() > MAX_UNATTACHED
                && let Some((_, oldest)) = self.unattached.pop_front()
                && !self.live.contains_key(&oldest)
            {
                self.records.remove(&oldest);
            }
        }
        stored
    }

    /// Forgets records of addresses that have not been members since `ttl` ago (`member`
    /// says which are members now).
    pub fn expire_unattached(
        &mut self,
        now: std::time::Duration,
        ttl: std::time::Duration,
        member: impl Fn(&SocketAddr) -> bool,
    ) {
        while let Some(&(since, addr)) = self.unattached.front() {
            if now < since + ttl {
                break;
            }
            self.unattached.pop_front();
            if !member(&addr) && !self.live.contains_key(&addr) {
                self.records.remove(&addr);
            }
        }
    }

    /// How many records of non-members are being tracked for expiry.
    pub fn unattached(&self) -> usize {
        self.unattached.len()
    }

    /// Installs this node's own record.
    pub fn offer_own(&mut self, record: Record) -> bool {
        if !self.is_news(&record.addr, record.boot, record.version) {
            return false;
        }
        self.store(record)
    }

    fn store(&mut self, record: Record) -> bool {
        if record.validate().is_err() {
            self.invalid += 1;
            return false;
        }
        self.changed.insert(record.addr);
        self.records.insert(record.addr, record);
        true
    }
}

/// The key foca uses to drop a stale record broadcast from its queue.
#[derive(Debug)]
pub(crate) struct RecordKey {
    addr: SocketAddr,
    boot: u64,
    version: u64,
}

impl foca::Invalidates for RecordKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.addr == other.addr && (self.boot, self.version) > (other.boot, other.version)
    }
}

/// A broadcast item that did not decode.
#[derive(Debug, thiserror::Error)]
#[error("record broadcast does not decode or validate")]
pub(crate) struct BadRecord;

/// foca's custom-broadcast handler: feeds records into the shared store.
pub(crate) struct RecordHandler {
    pub store: Arc<Mutex<Store>>,
    /// Decides which first-heard records are relayed.
    pub rng: rand::rngs::Xoshiro256PlusPlus,
}

impl foca::BroadcastHandler<NodeId> for RecordHandler {
    type Key = RecordKey;
    type Error = BadRecord;

    fn should_add_broadcast_data(&self, _member: &NodeId) -> bool {
        !lock(&self.store).updates_fill_packets
    }

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeId>,
    ) -> Result<Option<RecordKey>, BadRecord> {
        if let Some((addr, boot, version)) = Record::peek(data)
            && !lock(&self.store).is_news(&addr, boot, version)
        {
            return Ok(None);
        }
        let record: Record = postcard::from_bytes(data).map_err(|_| BadRecord)?;
        let key = RecordKey {
            addr: record.addr,
            boot: record.boot,
            version: record.version,
        };
        let mut store = lock(&self.store);
        let before = store.invalid;
        // No sender: this node's own record, queued by `Core::install_record`.
        let stored = if sender.is_none() {
            store.offer_own(record)
        } else {
            store.offer(record)
        };
        if stored {
            // This node's own record (no sender) always goes out.
            let p = store.relay_probability;
            let relay = sender.is_none()
                || p >= 1.0
                || rand::RngExt::random_bool(&mut self.rng, p.max(0.0));
            Ok(relay.then_some(key))
        } else if store.invalid > before {
            Err(BadRecord)
        } else {
            Ok(None)
        }
    }
}
