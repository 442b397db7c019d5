//! What the simulator's tests share.

use sim::Report;

/// Fails the test if the run broke an invariant, naming the run and how to reproduce it.
pub fn assert_clean(report: &Report, run: &str) {
    assert!(
        report.violations.is_empty(),
        "{run}: {:?}\nreproduce: {}",
        report.violations,
        report.reproduce
    );
}
