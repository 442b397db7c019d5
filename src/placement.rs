//! Rendezvous (highest-random-weight) placement, pinned.
//!
//! Every node computes the owners of a resource on its own, so every node must compute
//! the same thing: the hash and the tie-break below are part of the protocol and never
//! change silently. `scripts/placement_vectors.py` is an independent implementation that
//! produces the reference vectors the test suite checks.
//!
//! [`desired_owners`] places one resource; [`DesiredOwners`] keeps the owners of many
//! resources among members that all compete for all of them, and on a join or a leave
//! places again only what changed.
//!
//! ```
//! use gossip_election::placement::{desired_owners, score};
//!
//! assert_eq!(score("echo", "w0"), 0xb4e851aed3041e44);
//! let names = ["w0", "w1", "w2", "w3", "w4"];
//! assert_eq!(desired_owners("echo", names, 2), ["w0", "w2"]);
//! ```

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

/// MurmurHash3's 64-bit finalizer: spreads the XOR of two hashes over all bits.
const fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The hash of one name (a resource or a node): xxh3_64 with seed 0 over its UTF-8 bytes.
pub fn name_hash(name: &str) -> u64 {
    xxh3_64(name.as_bytes())
}

/// The pinned score of node `node` for resource `resource`:
/// `fmix64(xxh3_64(resource) ^ xxh3_64(node))`.
pub fn score(resource: &str, node: &str) -> u64 {
    fmix64(name_hash(resource) ^ name_hash(node))
}

/// Like [`score`], from hashes already computed with [`name_hash`].
pub const fn score_hashed(resource_hash: u64, node_hash: u64) -> u64 {
    fmix64(resource_hash ^ node_hash)
}

/// Rank order of two candidates: `Less` means `a` ranks before (higher than) `b`.
///
/// Higher score first; on an equal score the lexicographically smaller name (bytes) first.
pub fn rank_order(a: (u64, &str), b: (u64, &str)) -> Ordering {
    b.0.cmp(&a.0)
        .then_with(|| a.1.as_bytes().cmp(b.1.as_bytes()))
}

/// The first `tickets` of `names` in rank order for `resource`, best first.
///
/// A partial select: one pass with a buffer of `tickets` entries, no full sort.
/// Duplicate names are kept as given; callers pass distinct names.
pub fn desired_owners<'a, I>(resource: &str, names: I, tickets: usize) -> Vec<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let resource_hash = name_hash(resource);
    top_n(
        names
            .into_iter()
            .map(|name| (score_hashed(resource_hash, name_hash(name)), name)),
        tickets,
    )
    .into_iter()
    .map(|(_, name)| name)
    .collect()
}

/// The first `n` of scored names in rank order, best first (partial select).
pub fn top_n<'a, I>(scored: I, n: usize) -> Vec<(u64, &'a str)>
where
    I: IntoIterator<Item = (u64, &'a str)>,
{
    let mut best: Vec<(u64, &'a str)> = Vec::with_capacity(n.min(64));
    if n == 0 {
        return best;
    }
    for candidate in scored {
        if best.len() == n {
            let last = best[n - 1];
            if rank_order(candidate, last) != Ordering::Less {
                continue;
            }
            best.pop();
        }
        let at = best.partition_point(|&b| rank_order(b, candidate) == Ordering::Less);
        best.insert(at, candidate);
    }
    best
}

/// A member slot that holds nobody: ranks after every member.
const NOBODY: u32 = u32::MAX;

/// One live member of [`DesiredOwners`].
#[derive(Clone, Debug)]
struct Member {
    name: Arc<str>,
    /// Where the member sits in `DesiredOwners::live`.
    at: u32,
}

/// The desired owners of many resources among live members, kept up to date as members
/// join and leave: what [`desired_owners`] gives for each resource, without recomputing
/// every resource on every change.
///
/// A join scores the newcomer once per resource and changes only the resources whose
/// top `tickets` it enters; a leave recomputes only the resources it owned. Every member
/// is a candidate for every resource, with the same `tickets` for all.
///
/// ```
/// use gossip_election::placement::{DesiredOwners, desired_owners};
///
/// let mut owners = DesiredOwners::new(2);
/// owners.insert_resource("echo");
/// for name in ["w0", "w1", "w2", "w3"] {
///     owners.join(name);
/// }
/// assert_eq!(owners.owners("echo").unwrap(), ["w0", "w2"]);
/// assert_eq!(owners.leave("w0"), ["echo".into()]);
/// assert_eq!(
///     owners.owners("echo").unwrap(),
///     desired_owners("echo", ["w1", "w2", "w3"], 2)
/// );
/// ```
#[derive(Clone, Debug)]
pub struct DesiredOwners {
    tickets: usize,
    /// Members by slot; the slot of a member that left is reused.
    slots: Vec<Option<Member>>,
    free: Vec<u32>,
    by_name: HashMap<Arc<str>, u32>,
    /// `(name hash, slot)` of live members, in no order: the loop of a recompute.
    live: Vec<(u64, u32)>,
    resources: Vec<Arc<str>>,
    resource_hashes: Vec<u64>,
    by_resource: HashMap<Arc<str>, usize>,
    /// `tickets` entries `(score, slot)` per resource, best first; empty entries
    /// ([`NOBODY`]) last, while there are fewer members than tickets.
    owners: Vec<(u64, u32)>,
}

impl DesiredOwners {
    /// No resources and no members yet; every resource gets `tickets` owners.
    pub fn new(tickets: u16) -> Self {
        DesiredOwners {
            tickets: usize::from(tickets),
            slots: Vec::new(),
            free: Vec::new(),
            by_name: HashMap::new(),
            live: Vec::new(),
            resources: Vec::new(),
            resource_hashes: Vec::new(),
            by_resource: HashMap::new(),
            owners: Vec::new(),
        }
    }

    /// Places `resource` among the live members (nothing if it is placed already).
    pub fn insert_resource(&mut self, resource: &str) {
        if self.by_resource.contains_key(resource) {
            return;
        }
        let name: Arc<str> = Arc::from(resource);
        let at = self.resources.len();
        self.by_resource.insert(name.clone(), at);
        self.resources.push(name);
        self.resource_hashes.push(name_hash(resource));
        self.owners
            .extend(std::iter::repeat_n((0, NOBODY), self.tickets));
        self.recompute(at);
    }

    /// Adds a live member. Returns the resources whose owners changed (it became one of
    /// them), in insertion order; nothing if it is a member already.
    pub fn join(&mut self, member: &str) -> Vec<Arc<str>> {
        if self.by_name.contains_key(member) {
            return Vec::new();
        }
        let hash = name_hash(member);
        let name: Arc<str> = Arc::from(member);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 members")
            }
        };
        self.slots[slot as usize] = Some(Member {
            name: name.clone(),
            at: u32::try_from(self.live.len()).expect("fewer than 2^32 members"),
        });
        self.by_name.insert(name, slot);
        self.live.push((hash, slot));
        let mut changed = Vec::new();
        if self.tickets == 0 {
            return changed;
        }
        let k = self.tickets;
        let per_resource = self.owners.chunks_exact_mut(k).zip(&self.resource_hashes);
        for (r, (best, &resource_hash)) in per_resource.enumerate() {
            if offer(best, (score_hashed(resource_hash, hash), slot), &self.slots) {
                changed.push(self.resources[r].clone());
            }
        }
        changed
    }

    /// Removes a live member. Returns the resources whose owners changed (it was one of
    /// them), in insertion order; nothing if it is not a member.
    pub fn leave(&mut self, member: &str) -> Vec<Arc<str>> {
        let Some(slot) = self.by_name.remove(member) else {
            return Vec::new();
        };
        let at = self.slots[slot as usize]
            .as_ref()
            .expect("a named slot is live")
            .at as usize;
        self.live.swap_remove(at);
        if let Some(&(_, moved)) = self.live.get(at)
            && let Some(m) = self.slots[moved as usize].as_mut()
        {
            m.at = at as u32;
        }
        self.slots[slot as usize] = None;
        let mut changed = Vec::new();
        let k = self.tickets;
        if k > 0 {
            let owned: Vec<usize> = (self.owners.chunks_exact(k).enumerate())
                .filter(|(_, best)| best.iter().any(|o| o.1 == slot))
                .map(|(r, _)| r)
                .collect();
            for r in owned {
                self.recompute(r);
                changed.push(self.resources[r].clone());
            }
        }
        // Reused only now: no resource names the slot any more.
        self.free.push(slot);
        changed
    }

    /// The desired owners of `resource`, best first (None if it was never inserted).
    pub fn owners(&self, resource: &str) -> Option<Vec<&str>> {
        let &r = self.by_resource.get(resource)?;
        let k = self.tickets;
        Some(
            self.owners[r * k..(r + 1) * k]
                .iter()
                .take_while(|o| o.1 != NOBODY)
                .map(|o| self.name(o.1))
                .collect(),
        )
    }

    /// The number of live members.
    pub fn members(&self) -> usize {
        self.live.len()
    }

    fn name(&self, slot: u32) -> &str {
        self.slots[slot as usize]
            .as_ref()
            .map(|m| &*m.name)
            .expect("owners name live slots")
    }

    /// Places resource `r` afresh among the live members.
    fn recompute(&mut self, r: usize) {
        let k = self.tickets;
        if k == 0 {
            return;
        }
        let resource_hash = self.resource_hashes[r];
        let best = &mut self.owners[r * k..(r + 1) * k];
        best.fill((0, NOBODY));
        let mut live = self.live.iter();
        // Until every ticket has an owner, every member enters.
        for &(hash, slot) in live.by_ref().take(k) {
            offer(best, (score_hashed(resource_hash, hash), slot), &self.slots);
        }
        let mut floor = best[k - 1].0;
        for &(hash, slot) in live {
            let score = score_hashed(resource_hash, hash);
            if score >= floor && offer(best, (score, slot), &self.slots) {
                floor = best[k - 1].0;
            }
        }
    }
}

/// Puts `candidate` into `best` (rank order, best first) if it ranks before the last
/// entry, dropping that one. Returns whether it entered.
#[inline]
fn offer(best: &mut [(u64, u32)], candidate: (u64, u32), slots: &[Option<Member>]) -> bool {
    let ranks_before = |a: (u64, u32), b: (u64, u32)| {
        b.1 == NOBODY
            || a.0 > b.0
            || (a.0 == b.0 && {
                let name = |s: u32| slots[s as usize].as_ref().map(|m| m.name.as_bytes());
                name(a.1) < name(b.1)
            })
    };
    let Some(&last) = best.last() else {
        return false;
    };
    // Almost every candidate ranks after the last owner: one comparison of scores.
    if last.1 != NOBODY && candidate.0 < last.0 {
        return false;
    }
    if !ranks_before(candidate, last) {
        return false;
    }
    let mut i = best.len() - 1;
    while i > 0 && ranks_before(candidate, best[i - 1]) {
        best[i] = best[i - 1];
        i -= 1;
    }
    best[i] = candidate;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_tickets_selects_nobody() {
        assert!(desired_owners("echo", ["w0", "w1"], 0).is_empty());
    }

    #[test]
    fn more_tickets_than_names_selects_everyone_in_rank_order() {
        assert_eq!(
            desired_owners("echo", ["w0", "w1", "w2", "w3", "w4"], 9),
            ["w0", "w2", "w4", "w1", "w3"]
        );
    }

    #[test]
    fn a_joining_member_with_an_equal_score_ranks_by_name() {
        let member = |name: &str| {
            Some(Member {
                name: Arc::from(name),
                at: 0,
            })
        };
        let slots = [member("b"), member("a"), member("z"), member("c")];
        let mut best = [(9, 2), (7, 0)];
        assert!(offer(&mut best, (7, 1), &slots), "a before b");
        assert_eq!(best, [(9, 2), (7, 1)]);
        assert!(!offer(&mut best, (7, 3), &slots), "c after a");
        assert!(!offer(&mut best, (6, 1), &slots), "a lower score");
        assert_eq!(best, [(9, 2), (7, 1)]);
    }

    #[test]
    fn fewer_members_than_tickets_own_everything_in_rank_order() {
        let mut owners = DesiredOwners::new(9);
        owners.insert_resource("echo");
        for name in ["w3", "w1", "w4", "w0", "w2"] {
            assert_eq!(owners.join(name), [Arc::from("echo")]);
        }
        assert_eq!(
            owners.owners("echo").unwrap(),
            ["w0", "w2", "w4", "w1", "w3"]
        );
        assert!(owners.owners("unplaced").is_none());
    }

    proptest::proptest! {
        /// After every join or leave the kept owners are what a full recompute gives, and
        /// the resources reported changed are exactly those whose owners differ.
        #[test]
        fn incremental_owners_equal_a_full_recompute(
            tickets in 0u16..5,
            resources in 1usize..40,
            steps in proptest::collection::vec((proptest::bool::ANY, 0usize..24), 0..120),
        ) {
            let names: Vec<String> = (0..24).map(|i| format!("w{i}")).collect();
            let resources: Vec<String> = (0..resources).map(|i| format!("r{i}")).collect();
            let mut owners = DesiredOwners::new(tickets);
            let mut live = std::collections::BTreeSet::new();
            let full = |r: &str, live: &std::collections::BTreeSet<usize>| {
                desired_owners(r, live.iter().map(|&i| names[i].as_str()), tickets.into())
            };
            for (step, (join, i)) in steps.into_iter().enumerate() {
                // Resources arrive among the members too, not only before them.
                if let Some(r) = resources.get(step) {
                    owners.insert_resource(r);
                }
                let placed = &resources[..resources.len().min(step + 1)];
                let before: Vec<Vec<String>> = placed
                    .iter()
                    .map(|r| owners.owners(r).unwrap().iter().map(|s| s.to_string()).collect())
                    .collect();
                let changed = if join {
                    live.insert(i);
                    owners.join(&names[i])
                } else {
                    live.remove(&i);
                    owners.leave(&names[i])
                };
                let mut differ = Vec::new();
                for (r, before) in placed.iter().zip(before) {
                    let now = owners.owners(r).unwrap();
                    proptest::prop_assert_eq!(&now, &full(r, &live), "{}", r);
                    if now != before {
                        differ.push(r.as_str());
                    }
                }
                let changed: Vec<&str> = changed.iter().map(|r| &**r).collect();
                proptest::prop_assert_eq!(changed, differ);
                proptest::prop_assert_eq!(owners.members(), live.len());
            }
            for r in &resources {
                owners.insert_resource(r);
                proptest::prop_assert_eq!(owners.owners(r).unwrap(), full(r, &live));
            }
        }
    }

    #[test]
    fn equal_scores_break_ties_by_smaller_name() {
        let got = top_n([(7, "b"), (7, "a"), (9, "z"), (7, "c")], 3);
        assert_eq!(got, [(9, "z"), (7, "a"), (7, "b")]);
    }
}
