//! Deterministic simulation of gossip-election fleets.
//!
//! The simulator drives the library's sans-IO [`Core`](gossip_election::proto::Core)
//! directly, in virtual time, from one seed: one `(time, sequence)` event queue, a network
//! model per directed link (latency, loss, bursts, duplication, partitions checked at
//! delivery), node faults (crash, restart with a new boot, pause, clock-rate drift), a
//! workload that obtains and withdraws resources, and invariant checkers that run as
//! events happen (see [`check`]). The same seed gives the same trace hash.
//!
//! Node events run in windows shorter than the least network delay, so the nodes of a
//! window cannot affect each other and are simulated on [`RunConfig::threads`] threads;
//! their acquisitions, losses and view changes reach the checkers afterwards in
//! `(time, node)` order. The trace hash does not depend on the number of threads.

#![forbid(unsafe_code)]

pub mod bench;
pub mod check;
pub mod net;
pub mod scenario;
mod slots;
mod world;

use std::io::Write;
use std::time::Instant;

use gossip_election::proto::PlantedBugs;
use serde::Serialize;

pub use check::{Effects, Violation};
pub use scenario::{MS, S, Scenario};
use scenario::{PlanInput, plan};
pub use world::splitmix64;

/// One run's settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub seed: u64,
    pub nodes: usize,
    pub scenario: Scenario,
    /// Simulated duration, ns.
    pub duration: u64,
    /// i.i.d. loss probability (swarm draws its own).
    pub loss: f64,
    /// Mean one-way delay, ns (swarm draws its own).
    pub latency: u64,
    /// Tickets of every resource (swarm draws 1..=3 per resource when None).
    pub tickets: Option<u16>,
    pub resources: usize,
    /// Deliberate bugs, to prove the checkers catch them.
    pub bugs: PlantedBugs,
    /// Print a progress line per simulated second to stderr.
    pub progress: bool,
    /// Threads that simulate the nodes of each window. The trace is the same for any
    /// number; more than one pays off from a few hundred nodes.
    pub threads: usize,
    /// Quorum mode, with the fleet's size as its members (`--safety quorum`).
    pub quorum: bool,
    /// `Timing::successor_probes` (off: `--no-successor-probes`, to compare).
    pub successor_probes: bool,
}

impl RunConfig {
    /// Defaults of the command line.
    pub fn new(seed: u64, nodes: usize, scenario: Scenario) -> Self {
        RunConfig {
            seed,
            nodes,
            scenario,
            duration: 600 * S,
            loss: 0.01,
            latency: MS,
            tickets: None,
            resources: 4,
            bugs: PlantedBugs::default(),
            progress: false,
            threads: 1,
            quorum: false,
            successor_probes: true,
        }
    }

    /// The command that reproduces this run.
    pub fn reproduce(&self) -> String {
        let mut cmd = format!(
            "cargo run -p sim --release -- run --nodes {} --seed {} --scenario {} --duration {}s --loss {} --latency {}us --resources {}",
            self.nodes,
            self.seed,
            self.scenario.name(),
            self.duration / S,
            self.loss,
            self.latency / 1000,
            self.resources
        );
        if let Some(t) = self.tickets {
            cmd.push_str(&format!(" --tickets {t}"));
        }
        if self.quorum {
            cmd.push_str(" --safety quorum");
        }
        if !self.successor_probes {
            cmd.push_str(" --no-successor-probes");
        }
        let b = &self.bugs;
        for (on, name) in [
            (b.acquire_before_synced, "acquire-before-synced"),
            (b.never_yield_when_displaced, "never-yield-when-displaced"),
            (b.suspect_is_gone, "suspect-is-gone"),
            (b.no_direct_repair, "no-direct-repair"),
            (b.no_ready_hold_off, "no-ready-hold-off"),
            (b.no_self_fencing, "no-self-fencing"),
        ] {
            if on {
                cmd.push_str(&format!(" --plant {name}"));
            }
        }
        cmd
    }
}

/// `p50`, `p99`, `max` in ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Percentiles {
    fn of(ns: &[u64]) -> Self {
        if ns.is_empty() {
            return Percentiles::default();
        }
        let mut v = ns.to_vec();
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / MS as f64;
        Percentiles {
            p50: Some(at(0.5)),
            p99: Some(at(0.99)),
            max: Some(at(1.0)),
        }
    }

    /// Percentiles of samples already in ms (nearest rank, as [`Percentiles::of`]).
    pub fn of_ms(ms: &[f64]) -> Self {
        if ms.is_empty() {
            return Percentiles::default();
        }
        let mut v = ms.to_vec();
        v.sort_unstable_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Percentiles {
            p50: Some(at(0.5)),
            p99: Some(at(0.99)),
            max: Some(at(1.0)),
        }
    }
}

/// A run's individual measurements, to pool over seeds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Samples {
    /// From an owner crash on a healthy network to the next acquisition, ms.
    pub failover_ms: Vec<u64>,
    pub majority_failover_ms: Vec<u64>,
    /// From a holder's yield after the boot to the next acquisition, by why it yielded,
    /// ms (to the microsecond).
    pub handoff_ms: HandoffSamples,
    /// From each heal that removed a partition to agreement (L1's condition held for 3 s:
    /// it counts from its first sample), ms. A heal followed by another fault before
    /// agreement gives none.
    pub heal_ms: Vec<u64>,
}

/// Handoff times by why the holder yielded, ms (to the microsecond). Yields for other
/// reasons (superseded, isolated, no quorum) are in `handoff_ms` alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HandoffSamples {
    /// The holder shut down gracefully.
    pub leave: Vec<f64>,
    /// The holder's application withdrew.
    pub withdraw: Vec<f64>,
    /// The holder yielded to a higher-ranked candidate that became ready: a restarted node
    /// taking its ticket back (it waits for readiness, and the hold-off after it, by
    /// design).
    pub take_back: Vec<f64>,
}

/// Nanoseconds as ms, to the microsecond.
fn ms_of(ns: &[u64]) -> Vec<f64> {
    ns.iter().map(|t| (t / 1000) as f64 / 1000.0).collect()
}

/// What a run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Metrics {
    pub failover_ms: Percentiles,
    /// Quorum mode: from a partition that left a holder outside the majority group to the
    /// majority side's acquisition.
    pub majority_failover_ms: Percentiles,
    /// Every failover and majority-side failover of the run, ms (to pool over seeds).
    pub samples: Samples,
    pub heal_convergence_ms: Option<u64>,
    pub boot_convergence_ms: Option<u64>,
    pub handoff_ms: Percentiles,
    pub ownership_changes: u64,
    /// The most times one node acquired one resource within 60 s while a one-way cut was
    /// in effect.
    pub cut_acquisitions_max: u64,
    /// Live members other than the cut-off node declared down (by the other nodes) within
    /// 5 s after a one-way cut healed.
    pub downs_after_cut: u64,
    /// Members declared down while their process ran: by a partition, by loss, or while
    /// paused (every declaration counts, by every node).
    pub false_downs: u64,
    /// Pauses that froze a node.
    pub pauses: u64,
    /// Of those, the pauses whose node some node declared down while it was frozen or
    /// within 2 s after it resumed (counted once per pause).
    pub paused_declared_down: u64,
    pub dropped_by_partition: u64,
    pub bytes_per_node_per_s: f64,
    pub checks: u64,
}

/// The result of one run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub seed: u64,
    pub scenario: Scenario,
    /// `available` or `quorum`.
    pub safety: &'static str,
    pub nodes: usize,
    pub sim_seconds: f64,
    pub wall_seconds: f64,
    pub events: u64,
    pub trace_hash: String,
    pub violations: Vec<Violation>,
    pub metrics: Metrics,
    /// The largest per-address tables of any node at each quarter of the run.
    pub address_tables: Vec<world::TableSample>,
    /// The fault kinds the run's plan contained.
    pub faults: Vec<&'static str>,
    pub effects: Effects,
    /// The one-line command that reproduces the run.
    pub reproduce: String,
}

/// Runs one seed.
pub fn run(config: &RunConfig, trace: Option<Box<dyn Write>>) -> Report {
    let started = Instant::now();
    let mut rng = world::stream(config.seed, 0);
    let plan = plan(
        &PlanInput {
            scenario: config.scenario,
            nodes: config.nodes,
            duration: config.duration,
            loss: config.loss,
            latency_mean: config.latency,
            tickets: config.tickets,
            resources: config.resources,
            quorum: config.quorum,
        },
        &mut rng,
    );
    let kinds = plan.kinds.clone();
    let mut w = world::World::new(plan, config.seed, config.bugs, trace);
    w.progress = config.progress;
    w.threads = config.threads;
    w.successor_probes = config.successor_probes;
    w.run();
    let mut violations = std::mem::take(&mut w.checks.violations);
    if kinds.contains(&"partition")
        && w.dropped_by_partition == 0
        && config.scenario != Scenario::Swarm
    {
        violations.push(Violation {
            invariant: "coverage:partition-dropped-nothing".into(),
            at_ms: w.now / MS,
            detail: "the plan partitioned the network but no packet died at a partition".into(),
        });
    }
    if matches!(
        config.scenario,
        Scenario::CrashOwner | Scenario::CrashOwnerRestarting
    ) && w.checks.effects.owner_crashes == 0
    {
        violations.push(Violation {
            invariant: "coverage:crash-never-hit-an-owner".into(),
            at_ms: w.now / MS,
            detail: "no crash hit a holder".into(),
        });
    }
    if config.scenario == Scenario::PauseHolder && w.checks.effects.paused_holders == 0 {
        violations.push(Violation {
            invariant: "coverage:pause-never-froze-a-holder".into(),
            at_ms: w.now / MS,
            detail: "no pause froze a holder".into(),
        });
    }
    let sim_seconds = config.duration as f64 / S as f64;
    Report {
        seed: config.seed,
        scenario: config.scenario,
        safety: if config.quorum { "quorum" } else { "available" },
        nodes: config.nodes,
        sim_seconds,
        wall_seconds: started.elapsed().as_secs_f64(),
        events: w.events,
        trace_hash: format!("{:016x}", w.hash),
        violations,
        metrics: Metrics {
            failover_ms: Percentiles::of(&w.checks.failovers),
            majority_failover_ms: Percentiles::of(&w.checks.majority_failovers),
            samples: Samples {
                failover_ms: w.checks.failovers.iter().map(|ns| ns / MS).collect(),
                majority_failover_ms: w
                    .checks
                    .majority_failovers
                    .iter()
                    .map(|ns| ns / MS)
                    .collect(),
                handoff_ms: HandoffSamples {
                    leave: ms_of(&w.checks.handoffs_by_kind.leave),
                    withdraw: ms_of(&w.checks.handoffs_by_kind.withdraw),
                    take_back: ms_of(&w.checks.handoffs_by_kind.take_back),
                },
                heal_ms: w.checks.partition_heals.clone(),
            },
            heal_convergence_ms: w.checks.heal_convergence_ms,
            boot_convergence_ms: w.checks.boot_convergence_ms,
            handoff_ms: Percentiles::of(&w.checks.handoffs),
            ownership_changes: w.checks.ownership_changes,
            cut_acquisitions_max: w.checks.cut_acquisitions_max,
            downs_after_cut: w.checks.downs_after_cut,
            false_downs: w.checks.false_downs,
            pauses: w.checks.pauses,
            paused_declared_down: w.checks.paused_declared_down,
            dropped_by_partition: w.dropped_by_partition,
            bytes_per_node_per_s: w.bytes as f64 / config.nodes as f64 / sim_seconds,
            checks: w.checks.checks,
        },
        address_tables: std::mem::take(&mut w.tables),
        faults: kinds,
        effects: w.checks.effects.clone(),
        reproduce: config.reproduce(),
    }
}

/// The swarm configuration of seed `seed` in a sweep: nodes and duration drawn per seed.
pub fn swarm_config(seed: u64, max_nodes: usize) -> RunConfig {
    let mut rng = world::stream(seed, 99);
    let sizes: Vec<usize> = [3, 5, 7, 16, 32, 64]
        .into_iter()
        .filter(|n| *n <= max_nodes.max(3))
        .collect();
    use rand::RngExt;
    let nodes = sizes[rng.random_range(0..sizes.len())];
    let duration = [120, 180, 240][rng.random_range(0..3)] * S;
    let mut config = RunConfig::new(seed, nodes, Scenario::Swarm);
    config.duration = duration;
    config.resources = rng.random_range(1..=6);
    config
}

/// Summary of a sweep.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub seeds: u64,
    pub failed: u64,
    pub wall_seconds: f64,
    pub checks: u64,
    pub effects: Effects,
    /// Coverage failures of the batch: fault kinds that never had an effect.
    pub inert: Vec<String>,
}

/// Runs `seeds` swarm seeds from `start` on `threads` threads (in quorum mode if
/// `quorum`), calling `each` in seed order.
pub fn sweep(
    start: u64,
    seeds: u64,
    (max_nodes, quorum): (usize, bool),
    threads: usize,
    mut each: impl FnMut(&Report),
) -> Summary {
    let began = Instant::now();
    let threads = threads.max(1) as u64;
    let mut reports: Vec<Option<Report>> = vec![None; seeds as usize];
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (0..seeds)
                        .filter(|k| k % threads == t)
                        .map(|k| {
                            let mut config = swarm_config(start + k, max_nodes);
                            config.quorum = quorum;
                            (k, run(&config, None))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for (k, report) in h.join().expect("sweep thread") {
                reports[k as usize] = Some(report);
            }
        }
    });
    let mut summary = Summary {
        seeds,
        ..Summary::default()
    };
    for report in reports.into_iter().flatten() {
        each(&report);
        summary.failed += u64::from(!report.violations.is_empty());
        summary.checks += report.metrics.checks;
        let e = &report.effects;
        summary.effects.partition_downs += e.partition_downs;
        summary.effects.owner_crashes += e.owner_crashes;
        summary.effects.heals_diverged += e.heals_diverged;
        summary.effects.drift_acquisitions += e.drift_acquisitions;
        summary.effects.paused_holders += e.paused_holders;
        summary.effects.boot_raises += e.boot_raises;
        summary.effects.leaving_holders += e.leaving_holders;
        summary.effects.rescheduled_holders += e.rescheduled_holders;
        summary.effects.superseded += e.superseded;
    }
    if seeds >= 32 {
        let e = &summary.effects;
        for (name, count) in [
            ("a partition caused a member down", e.partition_downs),
            ("a crash hit an owner", e.owner_crashes),
            ("a heal found views or owners diverged", e.heals_diverged),
            ("an acquisition under clock drift", e.drift_acquisitions),
            ("a pause froze a holder", e.paused_holders),
            ("a graceful leave hit a holder", e.leaving_holders),
            (
                "a restart with the clock stepped back raised a boot",
                e.boot_raises,
            ),
            (
                "a holder was rescheduled to another address",
                e.rescheduled_holders,
            ),
        ] {
            if count == 0 {
                summary.inert.push(name.to_string());
            }
        }
    }
    summary.wall_seconds = began.elapsed().as_secs_f64();
    summary
}
