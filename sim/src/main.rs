//! `sim run | sweep | replay | scenarios | bench`: see docs/simulator.md.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sim::{RunConfig, Scenario};

#[derive(Parser)]
#[command(about = "Deterministic simulator for gossip-election fleets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One run.
    Run(RunArgs),
    /// Swarm runs over many seeds.
    Sweep {
        /// How many seeds.
        #[arg(long)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 1)]
        start_seed: u64,
        /// Largest fleet drawn.
        #[arg(long, default_value_t = 64)]
        max_nodes: usize,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// One JSON line per run, then a summary line.
        #[arg(long)]
        json: bool,
        /// `available` (default) or `quorum` (members: each run's fleet size).
        #[arg(long, value_enum, default_value_t = SafetyMode::Available)]
        safety: SafetyMode,
    },
    /// The scenarios, one name a line.
    Scenarios,
    /// Failover, handoff, heal, pause and traffic figures over a matrix of fleet sizes
    /// and loss, pooled over seeds (the default set takes about 10 minutes on 2 cores).
    Bench {
        /// One JSON object per row as its cell finishes, then a summary line.
        #[arg(long)]
        json: bool,
        /// More seeds and longer runs, and every scenario at 1000 nodes and every loss.
        #[arg(long)]
        full: bool,
        /// Runs at once, each on one thread (default: the machine's cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Only the cells of this fleet size (10, 100 or 1000).
        #[arg(long)]
        nodes: Option<usize>,
        /// Only the cells of this loss (0, 0.01 or 0.05).
        #[arg(long)]
        loss: Option<f64>,
        /// Only the cells of these scenarios (repeatable).
        #[arg(long)]
        scenario: Vec<String>,
        /// Turn the successor probes off in every run, to compare.
        #[arg(long)]
        no_successor_probes: bool,
    },
    /// A run again, with a JSON-lines trace.
    Replay {
        #[command(flatten)]
        run: RunArgs,
        /// Where to write the trace (default: stderr).
        #[arg(long)]
        trace: Option<std::path::PathBuf>,
    },
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    #[arg(long)]
    seed: u64,
    #[arg(long, default_value = "steady")]
    scenario: String,
    #[arg(long, default_value = "600s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Mean one-way delay (a floor plus random jitter).
    #[arg(long, default_value = "1ms", value_parser = humantime::parse_duration)]
    latency: Duration,
    #[arg(long)]
    tickets: Option<u16>,
    #[arg(long, default_value_t = 4)]
    resources: usize,
    #[arg(long)]
    json: bool,
    /// Print simulated time, events and traffic per simulated second to stderr.
    #[arg(long)]
    progress: bool,
    /// Threads that simulate the nodes (default: the machine's cores). The trace and the
    /// result do not depend on it.
    #[arg(long)]
    threads: Option<usize>,
    /// Plant a deliberate bug in every node, to see a checker catch it (repeatable):
    /// acquire-before-synced, never-yield-when-displaced, suspect-is-gone,
    /// no-direct-repair, no-ready-hold-off, no-self-fencing.
    #[arg(long)]
    plant: Vec<String>,
    /// `available` (default) or `quorum` (members: the fleet's size; pauses and drift are
    /// held to quorum mode's bounds).
    #[arg(long, value_enum, default_value_t = SafetyMode::Available)]
    safety: SafetyMode,
    /// Turn the successor probes off (`Timing::successor_probes`), to compare.
    #[arg(long)]
    no_successor_probes: bool,
}

/// `--safety`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SafetyMode {
    /// Each side of a partition elects its own owners.
    Available,
    /// Quorum mode, with the fleet's size as its members.
    Quorum,
}

impl RunArgs {
    fn config(&self) -> Result<RunConfig, String> {
        let scenario = Scenario::parse(&self.scenario).ok_or_else(|| {
            let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
            format!(
                "unknown scenario {:?}; one of {}",
                self.scenario,
                names.join(", ")
            )
        })?;
        if !(2..=65_000).contains(&self.nodes) {
            return Err("--nodes must be 2..=65000".into());
        }
        if !(0.0..1.0).contains(&self.loss) {
            return Err("--loss must be in [0, 1)".into());
        }
        if self.duration < Duration::from_secs(60) {
            return Err(
                "--duration must be at least 60s (bootstrap, chaos, then a healed liveness phase)"
                    .into(),
            );
        }
        if self.tickets == Some(0) {
            return Err("--tickets must be at least 1".into());
        }
        if !(1..=32).contains(&self.resources) {
            return Err("--resources must be 1..=32".into());
        }
        let mut config = RunConfig::new(self.seed, self.nodes, scenario);
        config.duration = self.duration.as_nanos() as u64;
        config.loss = self.loss;
        config.latency = (self.latency.as_nanos() as u64).max(1000);
        config.tickets = self.tickets;
        config.quorum = self.safety == SafetyMode::Quorum;
        config.successor_probes = !self.no_successor_probes;
        config.resources = self.resources;
        config.progress = self.progress;
        config.threads = self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        if config.threads == 0 {
            return Err("--threads must be at least 1".to_string());
        }
        for bug in &self.plant {
            let b = &mut config.bugs;
            match bug.as_str() {
                "acquire-before-synced" => b.acquire_before_synced = true,
                "never-yield-when-displaced" => b.never_yield_when_displaced = true,
                "suspect-is-gone" => b.suspect_is_gone = true,
                "no-direct-repair" => b.no_direct_repair = true,
                "no-ready-hold-off" => b.no_ready_hold_off = true,
                "no-self-fencing" => b.no_self_fencing = true,
                other => return Err(format!("unknown planted bug {other:?}")),
            }
        }
        Ok(config)
    }
}

fn print_report(report: &sim::Report, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).expect("serializable"));
        return;
    }
    let m = &report.metrics;
    println!(
        "seed {} {} {} nodes {} sim {:.0}s wall {:.2}s events {} trace {} checks {}",
        report.seed,
        report.scenario.name(),
        report.safety,
        report.nodes,
        report.sim_seconds,
        report.wall_seconds,
        report.events,
        report.trace_hash,
        m.checks
    );
    println!(
        "  failover p50/p99/max {:?}/{:?}/{:?} ms, handoff p50/p99 {:?}/{:?} ms, heal convergence {:?} ms",
        m.failover_ms.p50,
        m.failover_ms.p99,
        m.failover_ms.max,
        m.handoff_ms.p50,
        m.handoff_ms.p99,
        m.heal_convergence_ms
    );
    if m.majority_failover_ms.p50.is_some() {
        println!(
            "  majority-side failover p50/p99/max {:?}/{:?}/{:?} ms",
            m.majority_failover_ms.p50, m.majority_failover_ms.p99, m.majority_failover_ms.max
        );
    }
    println!(
        "  ownership changes {}, false downs {}, dropped by partition {}, {:.0} B/node/s",
        m.ownership_changes, m.false_downs, m.dropped_by_partition, m.bytes_per_node_per_s
    );
    for v in &report.violations {
        println!(
            "  VIOLATION {} at {} ms: {}",
            v.invariant, v.at_ms, v.detail
        );
    }
}

/// `sim bench`: rows to stderr (JSON: to stdout) as cells finish, then the table and the
/// commands that reproduce each cell.
fn bench(json: bool, full: bool, threads: Option<usize>, cells: &[sim::bench::Cell]) -> ExitCode {
    let threads = threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if threads == 0 {
        eprintln!("error: --threads must be at least 1");
        return ExitCode::from(2);
    }
    let runs: u64 = cells.iter().map(|c| c.seeds).sum();
    let mut finished = 0;
    if !json {
        eprintln!("{runs} runs on {threads} threads; rows as their cells finish:");
        eprintln!("{}", sim::bench::header());
    }
    let (rows, summary) = sim::bench::bench_matrix(
        cells,
        full,
        threads,
        |cell, report| {
            finished += 1;
            eprintln!(
                "  run {finished}/{runs}: {} {} nodes loss {} seed {} ({:.1} s wall){}",
                cell.scenario.name(),
                cell.nodes,
                cell.loss,
                report.seed,
                report.wall_seconds,
                if report.violations.is_empty() {
                    String::new()
                } else {
                    format!("; VIOLATIONS, reproduce: {}", report.reproduce)
                }
            );
        },
        |rows| {
            for row in rows {
                if json {
                    println!("{}", serde_json::to_string(row).expect("serializable"));
                } else {
                    eprintln!("{}", sim::bench::line(row));
                }
            }
        },
    );
    if json {
        println!("{}", serde_json::json!({ "summary": summary }));
    } else {
        println!("{}", sim::bench::header());
        for row in &rows {
            println!("{}", sim::bench::line(row));
        }
        println!(
            "\n{} runs, {} rows, {} threads, {:.1} s wall, {} violations",
            summary.runs, summary.rows, summary.threads, summary.wall_seconds, summary.violations
        );
        println!("\nreproduce (each cell's seeds, one after another):");
        let mut last = String::new();
        for row in &rows {
            if row.reproduce != last {
                println!(
                    "  {} {} nodes {}%: {}",
                    row.scenario.name(),
                    row.nodes,
                    row.loss * 100.0,
                    row.reproduce
                );
                last.clone_from(&row.reproduce);
            }
        }
    }
    if summary.violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Whole fleets allocate and free packets and records on two threads; glibc's allocator
/// spent a fifth of a 1000-node run consolidating chunks freed on the other thread.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match cli.command {
        Command::Run(args) => {
            let config = match args.config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let report = sim::run(&config, None);
            print_report(&report, args.json);
            if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("reproduce: {}", report.reproduce);
                ExitCode::from(1)
            }
        }
        Command::Bench {
            json,
            full,
            threads,
            nodes,
            loss,
            scenario,
            no_successor_probes,
        } => {
            let mut cells = sim::bench::matrix(full);
            for cell in &mut cells {
                cell.successor_probes = !no_successor_probes;
            }
            for name in &scenario {
                if Scenario::parse(name).is_none() {
                    eprintln!("error: unknown scenario {name:?}; see `sim scenarios`");
                    return ExitCode::from(2);
                }
            }
            cells.retain(|c| {
                nodes.is_none_or(|n| c.nodes == n)
                    && loss.is_none_or(|l| (c.loss - l).abs() < 1e-9)
                    && (scenario.is_empty() || scenario.iter().any(|s| s == c.scenario.name()))
            });
            if cells.is_empty() {
                eprintln!("error: no cell of the matrix matches --nodes, --loss and --scenario");
                return ExitCode::from(2);
            }
            bench(json, full, threads, &cells)
        }
        Command::Scenarios => {
            for scenario in Scenario::ALL {
                println!("{}", scenario.name());
            }
            ExitCode::SUCCESS
        }
        Command::Replay { run, trace } => {
            let config = match run.config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let out: Box<dyn std::io::Write> = match trace {
                Some(path) => match std::fs::File::create(&path) {
                    Ok(f) => Box::new(std::io::BufWriter::new(f)),
                    Err(e) => {
                        eprintln!("error: cannot create {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                },
                None => Box::new(std::io::stderr()),
            };
            let report = sim::run(&config, Some(out));
            print_report(&report, run.json);
            if report.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Sweep {
            seeds,
            start_seed,
            max_nodes,
            threads,
            json,
            safety,
        } => {
            if seeds == 0 || max_nodes < 3 {
                eprintln!("error: --seeds must be at least 1 and --max-nodes at least 3");
                return ExitCode::from(2);
            }
            let summary = sim::sweep(
                start_seed,
                seeds,
                (max_nodes, safety == SafetyMode::Quorum),
                threads,
                |report| {
                    if json {
                        print_report(report, true);
                    } else if !report.violations.is_empty() {
                        print_report(report, false);
                    }
                    if !report.violations.is_empty() {
                        eprintln!("reproduce: {}", report.reproduce);
                    }
                },
            );
            if json {
                println!("{}", serde_json::json!({ "summary": summary }));
            } else {
                println!(
                    "{} seeds, {} failed, {} checks, {:.1}s wall{}",
                    summary.seeds,
                    summary.failed,
                    summary.checks,
                    summary.wall_seconds,
                    if summary.inert.is_empty() {
                        String::new()
                    } else {
                        format!("; never happened: {}", summary.inert.join(", "))
                    }
                );
            }
            if summary.failed == 0 && summary.inert.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}
