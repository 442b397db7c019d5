//! A large fleet through a partition, an owner crash and a heal. At this size a node
//! that rejoins (the crashed holder restarts) cannot learn every member from one foca
//! feed; before the membership sync it still lacked members 30 s after the heal.

use sim::{RunConfig, S, Scenario, run};

#[test]
fn five_hundred_nodes_ten_minutes_partition_crash_and_heal() {
    let mut config = RunConfig::new(1, 500, Scenario::PartitionHalves);
    config.duration = 600 * S;
    let report = run(&config, None);
    assert!(
        report.violations.is_empty(),
        "{:?}\nreproduce: {}",
        report.violations,
        report.reproduce
    );
    assert!(report.metrics.dropped_by_partition > 0);
    assert!(report.effects.owner_crashes > 0);
    assert!(report.effects.partition_downs > 0);
    assert!(report.metrics.heal_convergence_ms.is_some());
    assert!(report.metrics.failover_ms.p50.is_some());
}
