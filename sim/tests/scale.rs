//! A large fleet through a partition, an owner crash and a heal.

use sim::{RunConfig, S, Scenario, run};

#[test]
fn two_hundred_nodes_ten_minutes_partition_crash_and_heal() {
    let mut config = RunConfig::new(1, 200, Scenario::PartitionHalves);
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
