//! Each planted bug makes a named checker fire in a named scenario and seed, and the same
//! run without the bug is clean: the checkers are not blind to the failures they exist for.

use gossip_election::proto::PlantedBugs;
use sim::{RunConfig, S, Scenario, run};

fn violations(bugs: PlantedBugs, scenario: Scenario, seed: u64, loss: f64) -> Vec<String> {
    violations_in(bugs, (scenario, false), seed, loss)
}

/// As [`violations`], in quorum mode if `quorum`.
fn violations_in(
    bugs: PlantedBugs,
    (scenario, quorum): (Scenario, bool),
    seed: u64,
    loss: f64,
) -> Vec<String> {
    let mut config = RunConfig::new(seed, 7, scenario);
    config.quorum = quorum;
    config.duration = 180 * S;
    config.loss = loss;
    config.tickets = Some(1);
    config.bugs = bugs;
    let report = run(&config, None);
    let mut names: Vec<String> = report.violations.into_iter().map(|v| v.invariant).collect();
    names.sort();
    names.dedup();
    names
}

fn assert_caught(bugs: PlantedBugs, scenario: Scenario, seed: u64, loss: f64, checker: &str) {
    let clean = violations(PlantedBugs::default(), scenario, seed, loss);
    assert!(clean.is_empty(), "the clean run already fails: {clean:?}");
    let buggy = violations(bugs, scenario, seed, loss);
    assert!(
        buggy.iter().any(|v| v == checker),
        "{checker} did not fire; fired: {buggy:?}"
    );
}

#[test]
fn acquiring_before_synced_is_caught_by_planned_move_bound_in_rolling_restart() {
    let bugs = PlantedBugs {
        acquire_before_synced: true,
        ..Default::default()
    };
    assert_caught(
        bugs,
        Scenario::RollingRestart,
        1,
        0.0,
        "planned-move-bounded-owners",
    );
}

#[test]
fn never_yielding_when_displaced_is_caught_by_view_bound_in_steady() {
    let bugs = PlantedBugs {
        never_yield_when_displaced: true,
        ..Default::default()
    };
    assert_caught(bugs, Scenario::Steady, 1, 0.01, "bounded-owners-per-view");
}

#[test]
fn treating_suspects_as_gone_is_caught_by_component_bound_in_partition_halves() {
    let bugs = PlantedBugs {
        suspect_is_gone: true,
        ..Default::default()
    };
    assert_caught(
        bugs,
        Scenario::PartitionHalves,
        1,
        0.05,
        "bounded-owners-per-stable-component",
    );
}

#[test]
fn broadcast_only_records_are_caught_by_convergence_in_rolling_restart() {
    let bugs = PlantedBugs {
        no_direct_repair: true,
        ..Default::default()
    };
    assert_caught(
        bugs,
        Scenario::RollingRestart,
        1,
        0.01,
        "convergence-after-heal",
    );
}

#[test]
fn acquiring_the_moment_a_node_is_ready_is_caught_by_planned_move_bound_in_ready_race() {
    // Without the hold-off after becoming ready, a restarted node takes a resource whose
    // other candidate's acquisition is still in flight to it.
    let bugs = PlantedBugs {
        no_ready_hold_off: true,
        ..Default::default()
    };
    assert_caught(
        bugs,
        Scenario::ReadyRace,
        1,
        0.0,
        "planned-move-bounded-owners",
    );
}

#[test]
fn skipping_self_fencing_is_caught_by_the_fleet_wide_bound_in_quorum_isolate_owner() {
    // Quorum mode: the holder cut off from everyone keeps its ticket; the majority takes
    // it over once its promises ran out, and two hold at once.
    let quorum = (Scenario::IsolateOwner, true);
    let clean = violations_in(PlantedBugs::default(), quorum, 1, 0.01);
    assert!(clean.is_empty(), "the clean run already fails: {clean:?}");
    let bugs = PlantedBugs {
        no_self_fencing: true,
        ..Default::default()
    };
    let buggy = violations_in(bugs, quorum, 1, 0.01);
    assert!(
        buggy.iter().any(|v| v == "bounded-holders-fleet-wide"),
        "bounded-holders-fleet-wide did not fire; fired: {buggy:?}"
    );
}
