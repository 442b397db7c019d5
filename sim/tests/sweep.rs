//! The CI batches: 256 swarm seeds of 3..64 nodes, no violation, and every fault kind had
//! an effect somewhere in the batch; and 64 seeds of 3..32 nodes in quorum mode.

/// Runs the sweep and fails, naming each seed's reproducing command, on any violation.
fn clean_sweep(seeds: u64, max_nodes: usize, quorum: bool) -> sim::Summary {
    let mut failed = Vec::new();
    let summary = sim::sweep(1, seeds, (max_nodes, quorum), 2, |report| {
        if !report.violations.is_empty() {
            failed.push(format!("{} -> {:?}", report.reproduce, report.violations));
        }
    });
    assert!(failed.is_empty(), "failing seeds:\n{}", failed.join("\n"));
    assert_eq!(summary.failed, 0);
    summary
}

#[test]
fn swarm_sweep_of_256_seeds_has_no_violation_and_no_inert_fault() {
    let summary = clean_sweep(256, 64, false);
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
    let summary = clean_sweep(64, 32, true);
    assert!(
        summary.checks > 20_000,
        "only {} checks ran",
        summary.checks
    );
}
