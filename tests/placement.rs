//! The pinned placement against vectors from an independent implementation
//! (`scripts/placement_vectors.py`, using the `xxhash` package), plus its properties.

use gossip_election::placement::{desired_owners, score};
use proptest::prelude::*;

const VECTORS: &str = include_str!("data/placement_vectors.txt");

#[test]
fn design_reference_values_hold() {
    assert_eq!(score("echo", "w0"), 0xb4e851aed3041e44);
    assert_eq!(score("echo", "w1"), 0x2c11c457b1dc6350);
    let w = ["w0", "w1", "w2", "w3", "w4"];
    assert_eq!(desired_owners("echo", w, 1), ["w0"]);
    assert_eq!(desired_owners("echo", w, 2), ["w0", "w2"]);
    assert_eq!(desired_owners("echo", w, 5), ["w0", "w2", "w4", "w1", "w3"]);
    assert_eq!(desired_owners("billing-cron", w, 3), ["w3", "w2", "w1"]);
    let ips = ["10.0.0.1:7946", "10.0.0.2:7946", "10.0.0.3:7946"];
    assert_eq!(desired_owners("echo", ips, 1), ["10.0.0.3:7946"]);
    let nodes = ["node-a", "node-b", "node-c", "node-d"];
    assert_eq!(
        desired_owners("ünïcode-rés", nodes, 2),
        ["node-c", "node-d"]
    );
}

#[test]
fn independent_vectors_hold() {
    let mut scores = 0;
    let mut ranks = 0;
    for line in VECTORS.lines() {
        let mut parts = line.split(' ');
        match parts.next() {
            Some("score") => {
                let (r, n, hex) = (
                    parts.next().unwrap(),
                    parts.next().unwrap(),
                    parts.next().unwrap(),
                );
                let want = u64::from_str_radix(hex, 16).unwrap();
                assert_eq!(score(r, n), want, "score({r:?}, {n:?})");
                scores += 1;
            }
            Some("rank") => {
                let r = parts.next().unwrap();
                let tickets: usize = parts.next().unwrap().parse().unwrap();
                let names: Vec<&str> = parts.next().unwrap().split(',').collect();
                assert_eq!(parts.next(), Some("->"));
                let want: Vec<&str> = parts.next().unwrap().split(',').collect();
                assert_eq!(
                    desired_owners(r, names.iter().copied(), tickets),
                    want,
                    "{line}"
                );
                ranks += 1;
            }
            other => panic!("unexpected line {other:?}"),
        }
    }
    assert!(
        scores >= 10 && ranks >= 40,
        "{scores} scores, {ranks} ranks"
    );
}

fn full_sort<'a>(resource: &str, names: &[&'a str], n: usize) -> Vec<&'a str> {
    let mut all = names.to_vec();
    all.sort_by(|a, b| {
        score(resource, b)
            .cmp(&score(resource, a))
            .then_with(|| a.as_bytes().cmp(b.as_bytes()))
    });
    all.truncate(n);
    all
}

fn fleet() -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set("[a-z0-9-]{1,12}", 1..40).prop_map(|s| s.into_iter().collect())
}

proptest! {
    #[test]
    fn partial_select_equals_full_sort(resource in "\\PC{1,20}", names in fleet(), n in 0usize..10) {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        prop_assert_eq!(desired_owners(&resource, refs.iter().copied(), n), full_sort(&resource, &refs, n));
    }

    #[test]
    fn removing_a_member_only_fills_its_place_with_the_next_ranked(
        resources in prop::collection::vec("[a-z]{1,10}", 1..20),
        names in fleet(),
        pick in any::<prop::sample::Index>(),
        n in 1usize..5,
    ) {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let gone = refs[pick.index(refs.len())];
        let rest: Vec<&str> = refs.iter().copied().filter(|m| *m != gone).collect();
        for r in &resources {
            let before = desired_owners(r, refs.iter().copied(), n);
            let after = desired_owners(r, rest.iter().copied(), n);
            if before.contains(&gone) {
                let mut expected: Vec<&str> = before.iter().copied().filter(|m| *m != gone).collect();
                if let Some(next) = full_sort(r, &refs, n + 1).get(n) {
                    expected.push(next);
                }
                prop_assert_eq!(after, expected);
            } else {
                prop_assert_eq!(after, before);
            }
        }
    }

    #[test]
    fn adding_a_member_only_inserts_it(
        resources in prop::collection::vec("[a-z]{1,10}", 1..20),
        names in fleet(),
        newcomer in "[A-Z]{1,8}",
        n in 1usize..5,
    ) {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut grown = refs.clone();
        grown.push(&newcomer);
        for r in &resources {
            let before = desired_owners(r, refs.iter().copied(), n);
            let after = desired_owners(r, grown.iter().copied(), n);
            if after.contains(&newcomer.as_str()) {
                let others: Vec<&str> = after.iter().copied().filter(|m| *m != newcomer).collect();
                let mut kept = before.clone();
                kept.truncate(others.len());
                prop_assert_eq!(others, kept);
            } else {
                prop_assert_eq!(after, before);
            }
        }
    }
}

#[test]
fn ten_thousand_resources_spread_evenly_over_ten_members() {
    let names: Vec<String> = (0..10).map(|i| format!("worker-{i}")).collect();
    let mut counts = [0u32; 10];
    for r in 0..10_000 {
        let resource = format!("resource-{r}");
        let top = desired_owners(&resource, names.iter().map(String::as_str), 1);
        let i = names.iter().position(|n| n == top[0]).unwrap();
        counts[i] += 1;
    }
    let expected = 1000.0;
    let chi2: f64 = counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    // 9 degrees of freedom: p = 0.001 at 27.88.
    assert!(chi2 < 27.88, "chi-square {chi2:.2} over {counts:?}");
}
