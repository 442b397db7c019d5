//! Rendezvous (highest-random-weight) placement, pinned.
//!
//! Every node computes the owners of a resource on its own, so every node must compute
//! the same thing: the hash and the tie-break below are part of the protocol and never
//! change silently. `scripts/placement_vectors.py` is an independent implementation that
//! produces the reference vectors the test suite checks.
//!
//! ```
//! use gossip_election::placement::{desired_owners, score};
//!
//! assert_eq!(score("echo", "w0"), 0xb4e851aed3041e44);
//! let names = ["w0", "w1", "w2", "w3", "w4"];
//! assert_eq!(desired_owners("echo", names, 2), ["w0", "w2"]);
//! ```

use std::cmp::Ordering;

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
    fn equal_scores_break_ties_by_smaller_name() {
        let got = top_n([(7, "b"), (7, "a"), (9, "z"), (7, "c")], 3);
        assert_eq!(got, [(9, "z"), (7, "a"), (7, "b")]);
    }
}
