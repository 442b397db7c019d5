//! What one node believes: live members, their records, and per-resource indexes.
//!
//! Records come from the [`Store`](super::store::Store). The index keeps, for every resource, the candidates in
//! rank order and the holders, counting only *valid* records: the node's own, and records
//! of live members whose boot matches the member's identity. What is iterated where order
//! matters (rankings, buckets, resources) is kept in ordered maps; what is only looked up
//! by address sits in hash maps with fixed keys, and callers that iterate those sort.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use super::store::{FixedState, Store};
use crate::identity::NodeId;
use crate::placement::{name_hash, score_hashed};
use crate::record::Record;

/// Number of anti-entropy digest buckets (at most 32: `Versions` names them in a `u32`).
/// At 1000 members a bucket holds about 31 records, so a differing bucket is listed whole
/// in one datagram.
pub(crate) const BUCKETS: usize = 32;

/// One indexed claim of a valid record.
#[derive(Clone, Debug)]
struct IndexedClaim {
    /// Shared with the key of `View::resources`.
    resource: Arc<str>,
    score: u64,
    tickets: u16,
    candidate: bool,
    held: bool,
    term: u64,
}

/// What was indexed for one address, to undo it.
#[derive(Clone, Debug)]
struct Indexed {
    name: Arc<str>,
    boot: u64,
    claims: Vec<IndexedClaim>,
    digest: u64,
    content: u64,
}

/// The hash of what a record says, without its version: equal records hash equal.
fn content_hash(record: &Record) -> u64 {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&addr_hash(&record.addr).to_le_bytes());
    bytes.extend_from_slice(&record.boot.to_le_bytes());
    bytes.push(u8::from(record.ready));
    for claim in &record.claims {
        bytes.extend_from_slice(claim.resource.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&claim.tickets.to_le_bytes());
        bytes.push(u8::from(claim.candidate) | u8::from(claim.held) << 1);
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// Candidates and holders of one resource among valid records.
#[derive(Debug, Default)]
pub(crate) struct ResourceIndex {
    /// Ready candidates in rank order (higher score, then smaller name), each with the
    /// tickets it advertises.
    ranked: BTreeMap<(Reverse<u64>, Arc<str>, SocketAddr), u16>,
    /// How many ready candidates advertise each tickets value.
    tickets: BTreeMap<u16, usize>,
    /// Valid records that say they hold the resource.
    holders: BTreeSet<SocketAddr>,
    /// How many valid records claim the resource at all (ready or not, competing or not).
    interested: usize,
    /// The fencing terms the records name, each with how many name it (the highest is
    /// the last key).
    terms: BTreeMap<u64, usize>,
}

/// The computed placement of one resource in this node's view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The effective tickets (the value most candidates advertise; a tie: the smaller).
    pub tickets: u16,
    /// The top-`tickets` candidates, best first.
    pub desired: Vec<SocketAddr>,
    /// Members whose valid records say they hold it (unordered).
    pub holders: BTreeSet<SocketAddr>,
}

/// Live members plus the index over their valid records.
#[derive(Debug)]
pub(crate) struct View {
    pub own: SocketAddr,
    /// Live (alive or suspect) members, excluding this node. Looked up by address; where
    /// they are iterated, order does not matter or the caller sorts.
    pub members: HashMap<SocketAddr, NodeId, FixedState>,
    /// The addresses of `members`, in no particular order, for a uniform random pick.
    member_list: Vec<SocketAddr>,
    /// Live members whose current record this node lacks, with when it was last asked for.
    pub missing: BTreeMap<SocketAddr, MissingSince>,
    /// Never iterated where order matters: looked up by address.
    indexed: HashMap<SocketAddr, Indexed, FixedState>,
    resources: BTreeMap<Arc<str>, ResourceIndex>,
    /// Valid records by name: `(boot, addr)` sorted, newest last (almost always one).
    by_name: HashMap<Arc<str>, Vec<(u64, SocketAddr)>, FixedState>,
    /// How many names more than one valid record carries (almost always 0).
    shared_names: usize,
    /// XOR of entry hashes per bucket over valid records.
    digest: [u64; BUCKETS],
    /// Addresses of valid records per bucket.
    by_bucket: [BTreeSet<SocketAddr>; BUCKETS],
    /// XOR of `(addr, boot)` hashes over live members.
    member_hash: u64,
    /// XOR of content hashes (no versions) over valid records.
    content: u64,
    /// [`View::fingerprint`] since the last change (it is read after every input).
    fingerprint: Cell<Option<u64>>,
}

/// When a missing record was first noticed and last requested.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MissingSince {
    pub since: std::time::Duration,
    pub asked: Option<std::time::Duration>,
}

pub(crate) fn addr_hash(addr: &SocketAddr) -> u64 {
    let mut bytes = [0u8; 18];
    let len = match addr {
        SocketAddr::V4(a) => {
            bytes[..4].copy_from_slice(&a.ip().octets());
            bytes[4..6].copy_from_slice(&a.port().to_le_bytes());
            6
        }
        SocketAddr::V6(a) => {
            bytes[..16].copy_from_slice(&a.ip().octets());
            bytes[16..18].copy_from_slice(&a.port().to_le_bytes());
            18
        }
    };
    xxhash_rust::xxh3::xxh3_64(&bytes[..len])
}

pub(crate) fn bucket_of(addr: &SocketAddr) -> usize {
    (addr_hash(addr) % BUCKETS as u64) as usize
}

pub(crate) fn entry_hash(addr: &SocketAddr, boot: u64, version: u64) -> u64 {
    let mut bytes = [0u8; 24];
    bytes[..8].copy_from_slice(&addr_hash(addr).to_le_bytes());
    bytes[8..16].copy_from_slice(&boot.to_le_bytes());
    bytes[16..].copy_from_slice(&version.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

impl View {
    pub fn new(own: SocketAddr, boot: u64) -> Self {
        View {
            own,
            members: HashMap::default(),
            member_list: Vec::new(),
            missing: BTreeMap::new(),
            indexed: HashMap::default(),
            resources: BTreeMap::new(),
            by_name: HashMap::default(),
            shared_names: 0,
            digest: [0; BUCKETS],
            by_bucket: Default::default(),
            // This node counts as a member of its own view, so equal views hash equal.
            member_hash: entry_hash(&own, boot, 0),
            content: 0,
            fingerprint: Cell::new(None),
        }
    }

    /// This node's own boot changed.
    pub fn set_own_boot(&mut self, old: u64, new: u64) {
        self.fingerprint.set(None);
        self.member_hash ^= entry_hash(&self.own, old, 0) ^ entry_hash(&self.own, new, 0);
    }

    /// Adds a live member (replacing an older identity at its address).
    pub fn insert_member(&mut self, id: NodeId) {
        self.fingerprint.set(None);
        if let Some(old) = self.members.insert(id.addr(), id) {
            self.member_hash ^= entry_hash(&old.addr(), old.boot(), 0);
        } else {
            self.member_list.push(id.addr());
        }
        self.member_hash ^= entry_hash(&id.addr(), id.boot(), 0);
    }

    /// Removes a live member.
    pub fn remove_member(&mut self, addr: &SocketAddr) -> Option<NodeId> {
        self.fingerprint.set(None);
        let old = self.members.remove(addr)?;
        if let Some(pos) = self.member_list.iter().position(|a| a == addr) {
            self.member_list.swap_remove(pos);
        }
        self.member_hash ^= entry_hash(&old.addr(), old.boot(), 0);
        Some(old)
    }

    /// A live member picked uniformly with `rng` (None when there is none).
    pub fn random_member(&self, rng: &mut impl rand::RngExt) -> Option<SocketAddr> {
        if self.member_list.is_empty() {
            return None;
        }
        Some(self.member_list[rng.random_range(0..self.member_list.len())])
    }

    /// Live members and what their records say (not their versions).
    pub fn content_digest(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(
            &[self.member_hash.to_le_bytes(), self.content.to_le_bytes()].concat(),
        )
    }

    /// Equal on nodes with equal views: the same live members and the same record
    /// versions of them.
    pub fn fingerprint(&self) -> u64 {
        if let Some(fingerprint) = self.fingerprint.get() {
            return fingerprint;
        }
        let mut bytes = [0u8; 8 * (BUCKETS + 1)];
        for (i, b) in self.digest.iter().chain([&self.member_hash]).enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&b.to_le_bytes());
        }
        let fingerprint = xxhash_rust::xxh3::xxh3_64(&bytes);
        self.fingerprint.set(Some(fingerprint));
        fingerprint
    }

    pub fn is_live(&self, addr: &SocketAddr) -> bool {
        *addr == self.own || self.members.contains_key(addr)
    }

    /// Whether `record` is the current record of a live member (or our own).
    pub fn is_valid(&self, record: &Record) -> bool {
        record.addr == self.own
            || self
                .members
                .get(&record.addr)
                .is_some_and(|id| id.boot() == record.boot)
    }

    /// Re-derives everything indexed for `addr` from the store and membership. Returns the
    /// resources whose index changed.
    ///
    /// A new version of a record usually changes one claim (or none: a version bump the
    /// view must still count), so only the claims that differ are unindexed and indexed
    /// again.
    pub fn reindex(
        &mut self,
        addr: SocketAddr,
        store: &Store,
        now: std::time::Duration,
    ) -> Vec<String> {
        self.fingerprint.set(None);
        let mut touched = Vec::new();
        let record = store.records.get(&addr).filter(|r| self.is_valid(r));
        let Some(record) = record else {
            if let Some(old) = self.indexed.remove(&addr) {
                self.unindex_all(addr, old, &mut touched);
            }
            if addr != self.own && self.members.contains_key(&addr) {
                self.missing.entry(addr).or_insert(MissingSince {
                    since: now,
                    asked: None,
                });
            } else {
                self.missing.remove(&addr);
            }
            touched.sort();
            touched.dedup();
            return touched;
        };
        self.missing.remove(&addr);
        let digest = entry_hash(&addr, record.boot, record.version);
        let content = content_hash(record);
        let same_identity = self
            .indexed
            .get(&addr)
            .is_some_and(|old| old.boot == record.boot && *old.name == *record.name);
        if same_identity {
            let mut old = self.indexed.remove(&addr).expect("checked above");
            self.digest[bucket_of(&addr)] ^= old.digest ^ digest;
            self.content ^= old.content ^ content;
            old.digest = digest;
            old.content = content;
            {
                let name_hash = name_hash(&record.name);
                let mut before = std::mem::take(&mut old.claims);
                for claim in &record.claims {
                    let candidate = claim.candidate && record.ready;
                    if let Some(pos) = before.iter().position(|o| *o.resource == *claim.resource) {
                        let o = before.swap_remove(pos);
                        if o.tickets == claim.tickets && o.candidate == candidate {
                            // Only whether it is held, and the term, can differ.
                            if o.held != claim.held || o.term != claim.term {
                                if let Some(ri) = self.resources.get_mut(&o.resource) {
                                    if claim.held {
                                        ri.holders.insert(addr);
                                    } else {
                                        ri.holders.remove(&addr);
                                    }
                                    forget_term(&mut ri.terms, o.term);
                                    *ri.terms.entry(claim.term).or_default() += 1;
                                }
                                touched.push(o.resource.to_string());
                            }
                            old.claims.push(IndexedClaim {
                                held: claim.held,
                                term: claim.term,
                                ..o
                            });
                            continue;
                        }
                        self.unindex_claim(addr, &old.name, &o);
                        touched.push(o.resource.to_string());
                    }
                    let name = old.name.clone();
                    let indexed = self.index_claim(addr, &name, record, claim, name_hash);
                    touched.push(claim.resource.clone());
                    old.claims.push(indexed);
                }
                for o in before {
                    self.unindex_claim(addr, &old.name, &o);
                    touched.push(o.resource.to_string());
                }
            }
            self.indexed.insert(addr, old);
        } else {
            if let Some(old) = self.indexed.remove(&addr) {
                self.unindex_all(addr, old, &mut touched);
            }
            let name_hash = name_hash(&record.name);
            let name: Arc<str> = Arc::from(record.name.as_str());
            let mut indexed = Indexed {
                name: name.clone(),
                boot: record.boot,
                claims: Vec::with_capacity(record.claims.len()),
                digest,
                content,
            };
            let bucket = bucket_of(&addr);
            self.digest[bucket] ^= digest;
            self.by_bucket[bucket].insert(addr);
            self.content ^= content;
            // Almost always one record per name: no room for more until a namesake comes.
            let set = self
                .by_name
                .entry(name.clone())
                .or_insert_with(|| Vec::with_capacity(1));
            let at = set.partition_point(|e| *e < (record.boot, addr));
            set.insert(at, (record.boot, addr));
            if set.len() == 2 {
                self.shared_names += 1;
            }
            self.touch_namesakes(&record.name, addr, &mut touched);
            for claim in &record.claims {
                indexed
                    .claims
                    .push(self.index_claim(addr, &name, record, claim, name_hash));
                touched.push(claim.resource.clone());
            }
            self.indexed.insert(addr, indexed);
        }
        touched.sort();
        touched.dedup();
        touched
    }

    /// A record with a name others carry changes which of them is superseded, and so the
    /// placement of what they claim.
    fn touch_namesakes(&self, name: &str, addr: SocketAddr, touched: &mut Vec<String>) {
        let Some(set) = self.by_name.get(name) else {
            return;
        };
        for (_, other) in set.iter().filter(|(_, a)| *a != addr) {
            if let Some(indexed) = self.indexed.get(other) {
                touched.extend(indexed.claims.iter().map(|c| c.resource.to_string()));
            }
        }
    }

    /// Removes everything indexed for `addr`.
    fn unindex_all(&mut self, addr: SocketAddr, old: Indexed, touched: &mut Vec<String>) {
        let bucket = bucket_of(&addr);
        self.digest[bucket] ^= old.digest;
        self.by_bucket[bucket].remove(&addr);
        self.content ^= old.content;
        if let Some(set) = self.by_name.get_mut(&old.name) {
            if set.len() == 2 {
                self.shared_names -= 1;
            }
            set.retain(|e| *e != (old.boot, addr));
            if set.is_empty() {
                self.by_name.remove(&old.name);
            }
        }
        self.touch_namesakes(&old.name, addr, touched);
        for claim in &old.claims {
            self.unindex_claim(addr, &old.name, claim);
        }
        touched.extend(old.claims.into_iter().map(|c| c.resource.to_string()));
    }

    fn unindex_claim(&mut self, addr: SocketAddr, name: &Arc<str>, claim: &IndexedClaim) {
        let Some(ri) = self.resources.get_mut(&claim.resource) else {
            return;
        };
        if claim.candidate {
            ri.ranked
                .remove(&(Reverse(claim.score), name.clone(), addr));
            if let Some(n) = ri.tickets.get_mut(&claim.tickets) {
                *n -= 1;
                if *n == 0 {
                    ri.tickets.remove(&claim.tickets);
                }
            }
        }
        if claim.held {
            ri.holders.remove(&addr);
        }
        forget_term(&mut ri.terms, claim.term);
        ri.interested -= 1;
        if ri.interested == 0 {
            self.resources.remove(&claim.resource);
        }
    }

    fn index_claim(
        &mut self,
        addr: SocketAddr,
        name: &Arc<str>,
        record: &Record,
        claim: &crate::record::Claim,
        name_hash: u64,
    ) -> IndexedClaim {
        let score = score_hashed(crate::placement::name_hash(&claim.resource), name_hash);
        let candidate = claim.candidate && record.ready;
        let resource: Arc<str> = match self.resources.get_key_value(claim.resource.as_str()) {
            Some((key, _)) => key.clone(),
            None => Arc::from(claim.resource.as_str()),
        };
        let ri = self.resources.entry(resource.clone()).or_default();
        if candidate {
            ri.ranked
                .insert((Reverse(score), name.clone(), addr), claim.tickets);
            *ri.tickets.entry(claim.tickets).or_default() += 1;
        }
        if claim.held {
            ri.holders.insert(addr);
        }
        *ri.terms.entry(claim.term).or_default() += 1;
        ri.interested += 1;
        IndexedClaim {
            resource,
            score,
            tickets: claim.tickets,
            candidate,
            held: claim.held,
            term: claim.term,
        }
    }

    /// When the most recently missed record went missing.
    pub fn latest_missing(&self) -> Option<std::time::Duration> {
        self.missing.values().map(|m| m.since).max()
    }

    /// True if a valid record with the same name and a newer boot exists.
    pub fn superseded(&self, addr: &SocketAddr) -> Option<SocketAddr> {
        if self.shared_names == 0 {
            return None;
        }
        let indexed = self.indexed.get(addr)?;
        let newest = self.by_name.get(&indexed.name)?.last()?;
        (newest.1 != *addr && newest.0 >= indexed.boot).then_some(newest.1)
    }

    /// Live members with the same name as `addr` and an older boot (they will stand down).
    pub fn older_namesakes(&self, addr: &SocketAddr) -> Vec<SocketAddr> {
        if self.shared_names == 0 {
            return Vec::new();
        }
        let Some(indexed) = self.indexed.get(addr) else {
            return Vec::new();
        };
        self.by_name
            .get(&indexed.name)
            .map(|set| {
                set.iter()
                    .filter(|(boot, a)| a != addr && (*boot, *a) < (indexed.boot, *addr))
                    .map(|(_, a)| *a)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The name `addr` advertises in its valid record.
    pub fn name_of(&self, addr: &SocketAddr) -> Option<&str> {
        self.indexed.get(addr).map(|i| &*i.name)
    }

    /// The placement of `resource` in this view.
    pub fn placement(&self, resource: &str) -> Placement {
        let Some(ri) = self.resources.get(resource) else {
            return Placement::default();
        };
        // Most advertised value wins; on a tie the smaller (BTreeMap iterates ascending).
        let tickets = ri
            .tickets
            .iter()
            .fold(
                (0u16, 0usize),
                |best, (&t, &n)| if n > best.1 { (t, n) } else { best },
            )
            .0;
        let mut desired = Vec::with_capacity(tickets as usize);
        for ((_, _, addr), advertised) in &ri.ranked {
            if desired.len() >= tickets as usize {
                break;
            }
            if *advertised == tickets && self.superseded(addr).is_none() {
                desired.push(*addr);
            }
        }
        Placement {
            tickets,
            desired,
            holders: ri.holders.clone(),
        }
    }

    /// The first candidate of `resource` after the `tickets` desired ones (the one that
    /// takes a ticket over when a desired candidate goes), if any.
    pub fn successor(&self, resource: &str, tickets: u16) -> Option<SocketAddr> {
        let ri = self.resources.get(resource)?;
        ri.ranked
            .iter()
            .filter(|((_, _, addr), advertised)| {
                **advertised == tickets && self.superseded(addr).is_none()
            })
            .nth(usize::from(tickets))
            .map(|((_, _, addr), _)| *addr)
    }

    /// Candidates of `resource` in rank order (all advertised tickets values).
    pub fn candidates(&self, resource: &str) -> Vec<SocketAddr> {
        self.resources
            .get(resource)
            .map(|ri| {
                ri.ranked
                    .keys()
                    .filter(|(_, _, a)| self.superseded(a).is_none())
                    .map(|(_, _, a)| *a)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The highest fencing term any record in this view names for `resource` (0: none).
    pub fn max_term(&self, resource: &str) -> u64 {
        self.resources
            .get(resource)
            .and_then(|ri| ri.terms.keys().next_back().copied())
            .unwrap_or(0)
    }

    /// Live members whose records claim `resource` at all (ready or not), in address
    /// order. A scan of every valid record: asked only when this node acquires.
    pub fn interested(&self, resource: &str) -> Vec<SocketAddr> {
        let mut interested: Vec<SocketAddr> = self
            .indexed
            .iter()
            .filter(|(_, i)| i.claims.iter().any(|c| &*c.resource == resource))
            .map(|(a, _)| *a)
            .collect();
        interested.sort_unstable();
        interested
    }

    /// Every resource some valid record claims.
    pub fn resources(&self) -> impl Iterator<Item = &str> {
        self.resources.keys().map(|r| &**r)
    }

    pub fn digest(&self) -> [u64; BUCKETS] {
        self.digest
    }

    /// `(addr, boot, version)` of valid records in the buckets of `mask`.
    pub fn entries_in(&self, mask: u32, store: &Store) -> Vec<(SocketAddr, u64, u64)> {
        (0..BUCKETS)
            .filter(|b| mask & (1 << b) != 0)
            .flat_map(|b| &self.by_bucket[b])
            .filter_map(|a| store.records.get(a).map(|r| (*a, r.boot, r.version)))
            .collect()
    }
}

/// Removes one mention of `term` from a multiset of terms.
fn forget_term(terms: &mut BTreeMap<u64, usize>, term: u64) {
    if let Some(n) = terms.get_mut(&term) {
        *n -= 1;
        if *n == 0 {
            terms.remove(&term);
        }
    }
}
