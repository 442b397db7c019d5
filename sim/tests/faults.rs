//! Faults the library must survive beyond the sweep's random mix.

use sim::{RunConfig, S, Scenario, run};

/// `churn` restarts every other crashed node with its clock stepped back: a boot below
/// its last one. The fleet keeps preferring the old identity and refuses the new one, so
/// the node must raise its boot to rejoin. Meanwhile no checker may fire: a refused node
/// that believed itself connected would sync with nobody and hold what others hold.
#[test]
fn a_restart_with_the_clock_stepped_back_raises_its_boot_and_rejoins() {
    for seed in [1, 2, 3] {
        let mut config = RunConfig::new(seed, 7, Scenario::Churn);
        config.duration = 180 * S;
        let report = run(&config, None);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}\nreproduce: {}",
            report.violations,
            report.reproduce
        );
        assert!(
            report.effects.boot_raises > 0,
            "seed {seed}: no node raised its boot"
        );
    }
}
