//! One seed reproduces a whole run.

use sim::{RunConfig, S, Scenario, run, swarm_config};

#[test]
fn same_seed_gives_same_trace_hash() {
    for scenario in [Scenario::PartitionHalves, Scenario::Churn] {
        let mut config = RunConfig::new(42, 16, scenario);
        config.duration = 180 * S;
        let a = run(&config, None);
        let b = run(&config, None);
        assert_eq!(a.trace_hash, b.trace_hash, "{}", scenario.name());
        assert_eq!(a.events, b.events);
        assert_eq!(a.metrics, b.metrics);
    }
    let swarm = swarm_config(7, 16);
    assert_eq!(run(&swarm, None).trace_hash, run(&swarm, None).trace_hash);
}

#[test]
fn different_seeds_give_different_runs() {
    let mut a = RunConfig::new(1, 7, Scenario::CrashOwner);
    a.duration = 120 * S;
    let mut b = a.clone();
    b.seed = 2;
    assert_ne!(run(&a, None).trace_hash, run(&b, None).trace_hash);
}

#[test]
fn thread_count_does_not_change_the_run() {
    for scenario in [Scenario::PartitionHalves, Scenario::RollingRestart] {
        let mut one = RunConfig::new(3, 64, scenario);
        one.duration = 120 * S;
        let mut three = one.clone();
        three.threads = 3;
        let (a, b) = (run(&one, None), run(&three, None));
        assert_eq!(a.trace_hash, b.trace_hash, "{}", scenario.name());
        assert_eq!(a.events, b.events);
        assert_eq!(a.metrics, b.metrics);
        assert_eq!(a.violations, b.violations);
    }
}
