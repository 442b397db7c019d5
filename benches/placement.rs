//! How long a node takes to compute owners, and to run a fleet step in virtual time.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use gossip_election::placement::{DesiredOwners, desired_owners, name_hash, score_hashed, top_n};
use gossip_election::proto::{Core, CoreConfig};

fn placement(c: &mut Criterion) {
    for members in [10usize, 100, 1000] {
        let names: Vec<String> = (0..members).map(|i| format!("worker-{i:04}")).collect();
        c.bench_function(
            &format!("desired_owners/{members}_members/3_tickets"),
            |b| {
                b.iter(|| {
                    desired_owners(
                        black_box("billing-cron"),
                        names.iter().map(String::as_str),
                        3,
                    )
                })
            },
        );
    }
}

/// Fresh resource names, cycled through so that no cache holds the last one's work.
fn fresh_resources() -> Vec<String> {
    (0..100_000).map(|i| format!("job-{i:06}")).collect()
}

/// The 3 owners of a fresh resource among 1000 members: ours beside the
/// `rendezvous_hash` and `hrw-hash` crates. Each gets the member set prepared once, the
/// way its API takes it, and does per resource only what a new resource needs.
fn owners_among_1000(c: &mut Criterion) {
    let names: Vec<String> = (0..1000).map(|i| format!("worker-{i:04}")).collect();
    let resources = fresh_resources();
    let mut group = c.benchmark_group("owners/1000_members/3_tickets");

    let hashed: Vec<(u64, &str)> = names.iter().map(|n| (name_hash(n), n.as_str())).collect();
    let mut next = resources.iter().cycle();
    group.bench_function("gossip-election", |b| {
        b.iter(|| {
            let resource_hash = name_hash(next.next().unwrap());
            top_n(
                hashed
                    .iter()
                    .map(|&(hash, name)| (score_hashed(resource_hash, hash), name)),
                3,
            )
        })
    });

    let mut nodes = rendezvous_hash::RendezvousNodes::default();
    for name in &names {
        nodes.insert(name.as_str());
    }
    let mut next = resources.iter().cycle();
    group.bench_function("rendezvous_hash", |b| {
        b.iter(|| {
            nodes
                .calc_candidates(next.next().unwrap())
                .take(3)
                .collect::<Vec<_>>()
        })
    });

    let nodes = hrw_hash::HrwNodes::new(names.iter().map(String::as_str));
    let mut next = resources.iter().cycle();
    group.bench_function("hrw-hash", |b| {
        b.iter(|| {
            nodes
                .sorted(next.next().unwrap())
                .take(3)
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

/// One member joins or leaves 1000 members placing 10,000 resources (3 tickets each):
/// only what changed is placed again. `full_recompute` is the cost without
/// [`DesiredOwners`]: every resource placed afresh (member hashes computed once).
fn membership_change(c: &mut Criterion) {
    let names: Vec<String> = (0..1000).map(|i| format!("worker-{i:04}")).collect();
    let resources: Vec<String> = (0..10_000).map(|i| format!("job-{i:06}")).collect();
    let mut owners = DesiredOwners::new(3);
    for r in &resources {
        owners.insert_resource(r);
    }
    for name in &names {
        owners.join(name);
    }
    let mut group = c.benchmark_group("membership_change/1000_members/10000_resources");
    let joiners: Vec<String> = (0..1000).map(|i| format!("joiner-{i:04}")).collect();
    let mut next = joiners.iter().cycle();
    group.bench_function("join", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let name = next.next().unwrap();
                let start = Instant::now();
                black_box(owners.join(name));
                spent += start.elapsed();
                owners.leave(name);
            }
            spent
        })
    });
    let mut next = names.iter().cycle();
    group.bench_function("leave", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let name = next.next().unwrap();
                let start = Instant::now();
                black_box(owners.leave(name));
                spent += start.elapsed();
                owners.join(name);
            }
            spent
        })
    });
    let hashed: Vec<(u64, &str)> = names.iter().map(|n| (name_hash(n), n.as_str())).collect();
    group.sample_size(10);
    group.bench_function("full_recompute", |b| {
        b.iter(|| {
            resources
                .iter()
                .map(|r| {
                    let resource_hash = name_hash(r);
                    top_n(
                        hashed
                            .iter()
                            .map(|&(hash, name)| (score_hashed(resource_hash, hash), name)),
                        3,
                    )
                })
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

/// Two cores exchanging datagrams until both hold the other's record: the cost of the
/// sans-IO core itself, with no network and no clock.
fn join_two_cores(c: &mut Criterion) {
    c.bench_function("core/two_nodes_join_and_sync", |b| {
        b.iter(|| {
            let a_addr = "127.0.0.1:7001".parse().unwrap();
            let b_addr = "127.0.0.1:7002".parse().unwrap();
            let mut a_cfg = CoreConfig::new("a", a_addr, 1);
            a_cfg.seeds = vec![b_addr];
            let mut b_cfg = CoreConfig::new("b", b_addr, 2);
            b_cfg.seeds = vec![a_addr];
            let mut now = Duration::from_secs(1);
            let mut a = Core::new(a_cfg, now).unwrap();
            let mut bb = Core::new(b_cfg, now).unwrap();
            for _ in 0..2000 {
                now += Duration::from_millis(1);
                while let Some(t) = a.poll_transmit() {
                    bb.handle_datagram(now, a_addr, &t.data);
                }
                while let Some(t) = bb.poll_transmit() {
                    a.handle_datagram(now, b_addr, &t.data);
                }
                a.handle_timeout(now);
                bb.handle_timeout(now);
                if a.is_ready() && bb.is_ready() {
                    break;
                }
            }
            assert!(a.is_ready() && bb.is_ready(), "the two nodes never synced");
            black_box((a.is_ready(), bb.is_ready()))
        })
    });
}

criterion_group!(
    benches,
    placement,
    owners_among_1000,
    membership_change,
    join_two_cores
);
criterion_main!(benches);
