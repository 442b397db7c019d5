//! A fleet of 1000 through a partition, an owner crash and a heal, for ten simulated
//! minutes. At this size a node that rejoins (the crashed holder restarts) cannot learn
//! every member from one foca feed; before the membership sync it still lacked members
//! 30 s after the heal.

mod common;

use sim::{RunConfig, S, Scenario, run};

/// A thousand nodes allocate and free packets and records on two threads; mimalloc
/// keeps that off the critical path (as in the `sim` binary).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[test]
fn thousand_nodes_ten_minutes_partition_crash_and_heal() {
    let mut config = RunConfig::new(1, 1000, Scenario::PartitionHalves);
    config.duration = 600 * S;
    config.threads = 2;
    let report = run(&config, None);
    common::assert_clean(&report, "1000 nodes");
    assert!(report.metrics.dropped_by_partition > 0);
    assert!(report.effects.owner_crashes > 0);
    assert!(report.effects.partition_downs > 0);
    assert!(report.metrics.heal_convergence_ms.is_some());
    assert!(report.metrics.failover_ms.p50.is_some());
}
