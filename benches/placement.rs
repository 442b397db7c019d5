//! How long a node takes to compute owners, and to run a fleet step in virtual time.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use gossip_election::placement::desired_owners;
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

criterion_group!(benches, placement, join_two_cores);
criterion_main!(benches);
