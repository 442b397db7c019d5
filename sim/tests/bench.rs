//! `sim bench`'s machinery on a tiny matrix: cells pool every seed's samples.

use sim::S;
use sim::Scenario;
use sim::bench::{Cell, Measure, bench};

/// Two 10-node cells of two short seeds each, run on two workers: every row carries the
/// samples of both seeds (as many as the two runs measured apart), its percentiles in
/// order, and the pause cell counts its pauses as trials.
#[test]
fn bench_cells_pool_every_seed_with_ordered_percentiles() {
    let cells = [
        Cell {
            scenario: Scenario::CrashOwner,
            nodes: 10,
            loss: 0.01,
            seeds: 2,
            duration: 120 * S,
            successor_probes: true,
        },
        Cell {
            scenario: Scenario::PauseHolder,
            nodes: 10,
            loss: 0.01,
            seeds: 2,
            duration: 120 * S,
            successor_probes: true,
        },
    ];
    let mut finished = Vec::new();
    let rows = bench(
        &cells,
        2,
        |_, _| {},
        |rows| finished.extend_from_slice(rows),
    );
    assert_eq!(rows.len(), 3, "failover, take-back, paused-declared-down");
    assert_eq!(
        finished.len(),
        rows.len(),
        "every cell reported as it finished"
    );
    for row in &rows {
        let cell = cells
            .iter()
            .find(|c| c.scenario == row.scenario)
            .expect("a cell of the matrix");
        let apart: u64 = (1..=cell.seeds)
            .map(|seed| {
                let report = sim::run(&cell.config(seed), None);
                let m = &report.metrics;
                match row.metric {
                    Measure::Failover => m.samples.failover_ms.len() as u64,
                    Measure::HandoffTakeBack => m.samples.handoff_ms.take_back.len() as u64,
                    Measure::PausedDeclaredDown => m.pauses,
                    other => panic!("unexpected measure {other:?}"),
                }
            })
            .sum();
        assert!(row.n > 0, "{:?}: no samples", row.metric);
        assert_eq!(row.n, apart, "{:?}: pooled n", row.metric);
        assert_eq!(row.violations, 0, "{:?}: {}", row.metric, row.reproduce);
        if row.metric == Measure::PausedDeclaredDown {
            assert!(row.declared_down.is_some_and(|d| d <= row.n));
            continue;
        }
        let (p50, p99, max) = (row.p50.unwrap(), row.p99.unwrap(), row.max.unwrap());
        assert!(
            0.0 < p50 && p50 <= p99 && p99 <= max,
            "{:?}: {p50} {p99} {max}",
            row.metric
        );
    }
}
