//! The CI batch: 256 swarm seeds of 3..64 nodes, no violation, and every fault kind had
//! an effect somewhere in the batch.

#[test]
fn swarm_sweep_of_256_seeds_has_no_violation_and_no_inert_fault() {
    let mut failed = Vec::new();
    let summary = sim::sweep(1, 256, (64, false), 2, |report| {
        if !report.violations.is_empty() {
            failed.push(format!("{} -> {:?}", report.reproduce, report.violations));
        }
    });
    assert!(failed.is_empty(), "failing seeds:\n{}", failed.join("\n"));
    assert_eq!(summary.failed, 0);
    assert!(
        summary.inert.is_empty(),
        "never happened: {:?}",
        summary.inert
    );
    assert!(
        summary.checks > 100_000,
        "only {} checks ran",
        summary.checks
    );
}

#[test]
fn quorum_swarm_sweep_of_64_seeds_keeps_holders_within_tickets_fleet_wide() {
    let mut failed = Vec::new();
    let summary = sim::sweep(1, 64, (32, true), 2, |report| {
        if !report.violations.is_empty() {
            failed.push(format!("{} -> {:?}", report.reproduce, report.violations));
        }
    });
    assert!(failed.is_empty(), "failing seeds:\n{}", failed.join("\n"));
    assert!(
        summary.checks > 20_000,
        "only {} checks ran",
        summary.checks
    );
}
