//! `sim bench`: a matrix of runs whose samples are pooled over seeds, one row per measure
//! and cell (scenario, fleet size, loss), each with its count `n`.
//!
//! A [`Cell`] is a set of runs: one scenario at one fleet size and loss, seeds `1..=seeds`,
//! each run on one thread; the runs of the whole matrix share the `--threads` workers.
//! A cell gives one [`Row`] per [`Measure`] its scenario yields.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use serde::Serialize;

use crate::{Percentiles, Report, RunConfig, S, Scenario, run};

/// What a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// From an owner crash on a healthy network to another node's acquisition.
    Failover,
    /// From a gracefully leaving holder's yield to the next acquisition.
    HandoffLeave,
    /// From a withdrawing holder's yield to the next acquisition.
    HandoffWithdraw,
    /// From a displaced holder's yield to the acquisition by the higher-ranked node: a
    /// restarted node taking its ticket back once ready (in `churn`, also a node that
    /// obtained again).
    HandoffTakeBack,
    /// From the heal of a partition to agreement (L1's condition, held for 3 s).
    HealToAgreement,
    /// Pauses of a holder (the trials, `n`) and how many of those paused holders any node
    /// declared down.
    PausedDeclaredDown,
    /// Bytes sent per node per simulated second, one sample per run.
    BytesPerNodePerS,
}

impl Measure {
    /// The name in the table and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Measure::Failover => "failover",
            Measure::HandoffLeave => "handoff-leave",
            Measure::HandoffWithdraw => "handoff-withdraw",
            Measure::HandoffTakeBack => "handoff-take-back",
            Measure::HealToAgreement => "heal-to-agreement",
            Measure::PausedDeclaredDown => "paused-declared-down",
            Measure::BytesPerNodePerS => "bytes-per-node-per-s",
        }
    }

    /// The unit of the percentiles (`pauses` when there are none, only counts).
    pub fn unit(self) -> &'static str {
        match self {
            Measure::PausedDeclaredDown => "pauses",
            Measure::BytesPerNodePerS => "B/node/s",
            _ => "ms",
        }
    }

    /// The measures a scenario's runs yield in the bench.
    pub fn of(scenario: Scenario) -> &'static [Measure] {
        match scenario {
            Scenario::CrashOwner => &[Measure::Failover, Measure::HandoffTakeBack],
            Scenario::RollingLeave => &[Measure::HandoffLeave, Measure::HandoffTakeBack],
            Scenario::Churn => &[Measure::HandoffWithdraw, Measure::HandoffTakeBack],
            Scenario::HandOver => &[
                Measure::HandoffLeave,
                Measure::HandoffWithdraw,
                Measure::HandoffTakeBack,
            ],
            Scenario::PartitionHalves
            | Scenario::PartitionMinority
            | Scenario::IsolateOwner
            | Scenario::PartitionOneWay
            | Scenario::PartitionBridge
            | Scenario::PartitionRing
            | Scenario::OneWayCut => &[Measure::HealToAgreement],
            Scenario::PauseHolder => &[Measure::PausedDeclaredDown],
            Scenario::Steady => &[Measure::BytesPerNodePerS],
            _ => &[],
        }
    }

    /// This measure's samples in one run.
    fn samples(self, report: &Report) -> Vec<f64> {
        let s = &report.metrics.samples;
        let ms = |v: &[u64]| v.iter().map(|x| *x as f64).collect();
        match self {
            Measure::Failover => ms(&s.failover_ms),
            Measure::HandoffLeave => s.handoff_ms.leave.clone(),
            Measure::HandoffWithdraw => s.handoff_ms.withdraw.clone(),
            Measure::HandoffTakeBack => s.handoff_ms.take_back.clone(),
            Measure::HealToAgreement => ms(&s.heal_ms),
            Measure::PausedDeclaredDown => Vec::new(),
            Measure::BytesPerNodePerS => vec![report.metrics.bytes_per_node_per_s],
        }
    }
}

/// The scenarios of the bench, in table order.
pub const SCENARIOS: [Scenario; 13] = [
    Scenario::CrashOwner,
    Scenario::RollingLeave,
    Scenario::Churn,
    Scenario::HandOver,
    Scenario::PartitionHalves,
    Scenario::PartitionMinority,
    Scenario::IsolateOwner,
    Scenario::PartitionOneWay,
    Scenario::PartitionBridge,
    Scenario::PartitionRing,
    Scenario::OneWayCut,
    Scenario::PauseHolder,
    Scenario::Steady,
];

/// One cell of the matrix: a scenario at one fleet size and loss, seeds `1..=seeds`.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub scenario: Scenario,
    pub nodes: usize,
    pub loss: f64,
    pub seeds: u64,
    /// Simulated duration of each run, ns.
    pub duration: u64,
    /// `Timing::successor_probes` of every node (off only to compare).
    pub successor_probes: bool,
}

impl Cell {
    /// Seed `seed`'s run of this cell (on one thread).
    pub fn config(&self, seed: u64) -> RunConfig {
        let mut config = RunConfig::new(seed, self.nodes, self.scenario);
        config.duration = self.duration;
        config.loss = self.loss;
        config.successor_probes = self.successor_probes;
        config
    }

    /// The shell command that runs this cell's seeds again, one after another.
    pub fn reproduce(&self) -> String {
        let one = self
            .config(1)
            .reproduce()
            .replace(" --seed 1 ", " --seed $seed ");
        format!("for seed in $(seq 1 {}); do {one}; done", self.seeds)
    }
}

/// The default matrix, or with `full` the larger one (see docs/simulator.md).
///
/// Default: every scenario at 10 and 100 nodes and 0, 1 and 5 % loss (at 1 %: 4 seeds of
/// 600 s at 10 nodes, 3 at 100; otherwise 2 seeds, of 300 s at 100 nodes), and at 1000
/// nodes one 120 s seed at 1 % loss of `crash-owner`, `partition-halves`, `pause-holder`
/// and `steady`. Full: 20 seeds of 600 s at 1 % loss (6 at 0 and 5 %) at 10 and 100
/// nodes, and at 1000 nodes every scenario at every loss (one seed, of 300 s at 1 % and
/// 180 s otherwise).
pub fn matrix(full: bool) -> Vec<Cell> {
    let mut cells = Vec::new();
    for nodes in [10, 100, 1000] {
        for loss in [0.0, 0.01, 0.05] {
            let main = loss == 0.01;
            let (seeds, secs) = match (full, nodes, main) {
                (false, 10, true) => (4, 600),
                (false, 10, false) => (2, 600),
                (false, 100, true) => (3, 600),
                (false, 100, false) => (2, 300),
                (false, _, true) => (1, 120),
                (false, _, false) => continue,
                (true, 1000, true) => (1, 300),
                (true, 1000, false) => (1, 180),
                (true, _, true) => (20, 600),
                (true, _, false) => (6, 600),
            };
            for scenario in SCENARIOS {
                let large_default = !full && nodes == 1000;
                if large_default
                    && !matches!(
                        scenario,
                        Scenario::CrashOwner
                            | Scenario::PartitionHalves
                            | Scenario::PauseHolder
                            | Scenario::Steady
                    )
                {
                    continue;
                }
                cells.push(Cell {
                    scenario,
                    nodes,
                    loss,
                    seeds,
                    duration: secs * S,
                    successor_probes: true,
                });
            }
        }
    }
    cells
}

/// One measure of one cell, pooled over its seeds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub metric: Measure,
    pub unit: &'static str,
    pub scenario: Scenario,
    pub nodes: usize,
    pub loss: f64,
    pub seeds: u64,
    pub duration_s: u64,
    /// Samples pooled (for `paused-declared-down`: the pauses, its trials).
    pub n: u64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
    /// `paused-declared-down`: of the `n` pauses, those whose node was declared down.
    pub declared_down: Option<u64>,
    /// Members declared down while their process ran, over the cell's runs (every
    /// declaration, by every node; partitions cause most).
    pub false_downs: u64,
    /// Invariant violations over the cell's runs (the measurements of a run that broke
    /// an invariant are still pooled).
    pub violations: u64,
    /// Wall time of the cell's runs, summed.
    pub wall_seconds: f64,
    /// The command that runs the cell's seeds again.
    pub reproduce: String,
}

/// The rows of one cell from its runs' reports.
pub fn rows(cell: &Cell, reports: &[Report]) -> Vec<Row> {
    Measure::of(cell.scenario)
        .iter()
        .map(|&metric| {
            let samples: Vec<f64> = reports.iter().flat_map(|r| metric.samples(r)).collect();
            let (n, declared_down) = if metric == Measure::PausedDeclaredDown {
                let pauses = reports.iter().map(|r| r.metrics.pauses).sum();
                let down = reports.iter().map(|r| r.metrics.paused_declared_down).sum();
                (pauses, Some(down))
            } else {
                (samples.len() as u64, None)
            };
            let p = Percentiles::of_ms(&samples);
            Row {
                metric,
                unit: metric.unit(),
                scenario: cell.scenario,
                nodes: cell.nodes,
                loss: cell.loss,
                seeds: cell.seeds,
                duration_s: cell.duration / S,
                n,
                p50: p.p50,
                p99: p.p99,
                max: p.max,
                declared_down,
                false_downs: reports.iter().map(|r| r.metrics.false_downs).sum(),
                violations: reports.iter().map(|r| r.violations.len() as u64).sum(),
                wall_seconds: reports.iter().map(|r| r.wall_seconds).sum(),
                reproduce: cell.reproduce(),
            }
        })
        .collect()
}

/// Runs every seed of every cell on `threads` workers (the longest runs first, so that no
/// large run starts last), calling `each_run` for every report and `each_cell` with a
/// cell's rows as soon as its last run ends. Returns the rows in matrix order.
pub fn bench(
    cells: &[Cell],
    threads: usize,
    mut each_run: impl FnMut(&Cell, &Report),
    mut each_cell: impl FnMut(&[Row]),
) -> Vec<Row> {
    let mut jobs: Vec<(usize, u64)> = cells
        .iter()
        .enumerate()
        .flat_map(|(c, cell)| (1..=cell.seeds).map(move |seed| (c, seed)))
        .collect();
    // Cost grows faster than linearly in the fleet's size: larger fleets first.
    jobs.sort_by_key(|&(c, seed)| {
        let cell = &cells[c];
        (std::cmp::Reverse((cell.nodes, cell.duration)), c, seed)
    });
    let next = AtomicUsize::new(0);
    let mut reports: Vec<Vec<Report>> = vec![Vec::new(); cells.len()];
    let mut done: Vec<Option<Vec<Row>>> = vec![None; cells.len()];
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..threads.max(1) {
            let (tx, jobs, next) = (tx.clone(), &jobs, &next);
            scope.spawn(move || {
                while let Some(&(c, seed)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let report = run(&cells[c].config(seed), None);
                    if tx.send((c, report)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for (c, report) in rx {
            each_run(&cells[c], &report);
            reports[c].push(report);
            if reports[c].len() as u64 == cells[c].seeds {
                reports[c].sort_by_key(|r| r.seed);
                let rows = rows(&cells[c], &reports[c]);
                each_cell(&rows);
                done[c] = Some(rows);
                // What the rows need is kept; the reports' bulk is not.
                reports[c] = Vec::new();
            }
        }
    });
    done.into_iter().flatten().flatten().collect()
}

/// Summary of a bench.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub cells: usize,
    pub rows: usize,
    pub runs: u64,
    pub threads: usize,
    pub full: bool,
    pub violations: u64,
    pub wall_seconds: f64,
}

/// Runs `cells` (the default or `full` matrix, or part of it); see [`bench`].
pub fn bench_matrix(
    cells: &[Cell],
    full: bool,
    threads: usize,
    mut each_run: impl FnMut(&Cell, &Report),
    each_cell: impl FnMut(&[Row]),
) -> (Vec<Row>, Summary) {
    let began = Instant::now();
    let mut violations = 0;
    let count = |cell: &Cell, report: &Report| {
        violations += report.violations.len() as u64;
        each_run(cell, report);
    };
    let rows = bench(cells, threads, count, each_cell);
    let summary = Summary {
        cells: cells.len(),
        rows: rows.len(),
        runs: cells.iter().map(|c| c.seeds).sum(),
        threads,
        full,
        violations,
        wall_seconds: began.elapsed().as_secs_f64(),
    };
    (rows, summary)
}

/// The table's header line.
pub fn header() -> String {
    format!(
        "{:<21} {:<19} {:>5} {:>5} {:>9} {:>5} {:>9} {:>9} {:>9}  {:<8} notes",
        "metric", "scenario", "nodes", "loss", "runs", "n", "p50", "p99", "max", "unit"
    )
}

/// One row of the table.
pub fn line(row: &Row) -> String {
    let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let mut notes = Vec::new();
    if let Some(down) = row.declared_down {
        notes.push(format!("declared down {down} of {}", row.n));
    }
    if row.violations > 0 {
        notes.push(format!("violations {}", row.violations));
    }
    format!(
        "{:<21} {:<19} {:>5} {:>4}% {:>9} {:>5} {:>9} {:>9} {:>9}  {:<8} {}",
        row.metric.name(),
        row.scenario.name(),
        row.nodes,
        row.loss * 100.0,
        format!("{}x{}s", row.seeds, row.duration_s),
        row.n,
        f(row.p50),
        f(row.p99),
        f(row.max),
        row.unit,
        notes.join(", ")
    )
}
