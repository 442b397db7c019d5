//! Scenarios: what faults and workload a run gets, drawn from its seed.

use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;
use serde::Serialize;

use crate::net::Partition;

/// Nanoseconds.
pub const MS: u64 = 1_000_000;
/// Nanoseconds.
pub const S: u64 = 1_000_000_000;

/// The named scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// No faults: bootstrap, then nothing but the configured loss.
    Steady,
    /// The holder of a resource crashes every 20 s and restarts 10 s later.
    CrashOwner,
    /// As `CrashOwner`, with the last third of the nodes competing for nothing; about when
    /// the holder is declared down, one of those restarts at once (new boot): its new
    /// record, which claims nothing, is still in flight when the next-ranked node decides.
    CrashOwnerRestarting,
    /// Two halves, then a heal, then an owner crash.
    PartitionHalves,
    /// A third cut from the rest, then a heal, then an owner crash.
    PartitionMinority,
    /// The holder of `r0` is cut from everyone for 20 s, every 40 s.
    IsolateOwner,
    /// Every 90 s the holder of `r0` loses its outgoing packets for 30 s (it hears everyone,
    /// nobody hears it); 45 s later a node that holds nothing does.
    OneWayCut,
    /// The second half of the nodes are short-lived workers: every 2 s each in turn stops
    /// (crashes or leaves) and a new worker starts in its place at a fresh address under a
    /// fresh name, competing for nothing. Per-address state must level off.
    AddressChurn,
    /// The second half of the nodes stop, and 30 s later start again 30 ms apart (a
    /// deployment scaling up), every 60 s: newcomers become ready while others'
    /// acquisitions are still in flight.
    JoinWave,
    /// Every 30 s the top-ranked of n0 and n1 for the last resource (the only node that
    /// competes for it) leaves and starts again 2 s later; the moment it is ready again,
    /// the other starts competing for that resource, and withdraws 20 s later. The
    /// other's acquisition is in flight when the restarted node first decides.
    ReadyRace,
    /// Every 5 s the next node restarts (new boot, same name and address).
    RollingRestart,
    /// Every 5 s the next node shuts down gracefully (hands its leases over, leaves the
    /// membership) and starts again 500 ms after it has left.
    RollingLeave,
    /// The network splits in halves for 2 s and heals for 3 s, over and over (a flapping
    /// link between two racks).
    Flap,
    /// Every 40 s the holder of `r0` is cut off from everyone and a process with its name
    /// starts at another node's address (as when a scheduler moves a worker off a machine it
    /// cannot reach); 15 s later the network heals, so two processes share the name, and
    /// 10 s after that the old one is stopped.
    Reschedule,
    /// Nodes withdraw and re-obtain resources every 2 s; a crash and restart every 30 s,
    /// every other one with the restarted node's clock stepped back.
    Churn,
    /// A random mix of faults, network and workload, drawn per seed.
    Swarm,
}

impl Scenario {
    /// Every scenario, in CLI order.
    pub const ALL: [Scenario; 16] = [
        Scenario::Steady,
        Scenario::CrashOwner,
        Scenario::CrashOwnerRestarting,
        Scenario::PartitionHalves,
        Scenario::PartitionMinority,
        Scenario::IsolateOwner,
        Scenario::OneWayCut,
        Scenario::AddressChurn,
        Scenario::JoinWave,
        Scenario::ReadyRace,
        Scenario::RollingRestart,
        Scenario::RollingLeave,
        Scenario::Flap,
        Scenario::Reschedule,
        Scenario::Churn,
        Scenario::Swarm,
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::CrashOwner => "crash-owner",
            Scenario::CrashOwnerRestarting => "crash-owner-restarting",
            Scenario::PartitionHalves => "partition-halves",
            Scenario::PartitionMinority => "partition-minority",
            Scenario::IsolateOwner => "isolate-owner",
            Scenario::OneWayCut => "one-way-cut",
            Scenario::AddressChurn => "address-churn",
            Scenario::JoinWave => "join-wave",
            Scenario::ReadyRace => "ready-race",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::RollingLeave => "rolling-leave",
            Scenario::Flap => "flap",
            Scenario::Reschedule => "reschedule",
            Scenario::Churn => "churn",
            Scenario::Swarm => "swarm",
        }
    }

    /// Parses a CLI name.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether the scenario cuts the network (so a partition must drop something).
    pub fn partitions(self) -> bool {
        matches!(
            self,
            Scenario::PartitionHalves
                | Scenario::PartitionMinority
                | Scenario::IsolateOwner
                | Scenario::OneWayCut
                | Scenario::Reschedule
                | Scenario::Flap
        )
    }
}

/// A scheduled fault.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Drop the node's instance.
    Crash(u32),
    /// Start a new instance (new boot, same name and address).
    Restart(u32),
    /// Stop the node (leave gracefully or crash) and start a new worker in its slot at a
    /// fresh address under a fresh name.
    Reincarnate { node: u32, graceful: bool },
    /// Restart at once (drop the instance, start a new boot) an up node that does not
    /// compete for the resource; a planned restart, not a fault.
    BounceBystander(usize),
    /// Shut the node down gracefully; once it has left, start a new instance after the
    /// given delay (ns).
    Leave { node: u32, restart_after: u64 },
    /// As `Leave`, for whoever holds the resource (its first holder in rank order).
    LeaveHolder { resource: usize, restart_after: u64 },
    /// Start a new instance whose clock stepped back: its boot is below the last one's, so
    /// the fleet keeps preferring the old identity until the node raises its boot.
    RestartClockBack(u32),
    /// Crash whoever holds the resource (its first holder in rank order), restarting it
    /// after the given delay (ns).
    CrashHolder { resource: usize, restart_after: u64 },
    /// Cut the network.
    Partition(Partition),
    /// Cut the holder of the resource from everyone.
    IsolateHolder(usize),
    /// Drop every packet a node sends (it still hears everyone): the holder of the
    /// resource, or (false) an up node that competes for it and holds nothing.
    CutOutgoing { resource: usize, holder: bool },
    /// Cut the holder of the resource from everyone and start a process with its name (and
    /// a newer boot) in place of another node that holds nothing; the replaced node's
    /// process is crashed first.
    RescheduleHolder(usize),
    /// Crash the oldest of two up processes that share a name, if any.
    StopOlderNamesake,
    /// Remove partitions.
    HealNetwork,
    /// Freeze a node for a while (ns).
    Pause { node: u32, duration: u64 },
    /// Freeze the holder of a resource for a while (ns).
    PauseHolder { resource: usize, duration: u64 },
    /// Set a node's clock-rate drift.
    Drift { node: u32, rate: f64 },
    /// Extra loss on every link until the next `LossBurstEnd`.
    LossBurst(f64),
    /// End of a loss burst.
    LossBurstEnd,
    /// A node stops competing for a resource.
    Withdraw { node: u32, resource: usize },
    /// A node competes (again) for a resource.
    Obtain { node: u32, resource: usize },
    /// End of the chaos phase: heal everything, restart crashed nodes, stop drift.
    Heal,
}

/// Everything a run is made of, derived from the seed and the command line.
#[derive(Clone, Debug)]
pub struct Plan {
    pub scenario: Scenario,
    pub nodes: usize,
    pub duration: u64,
    pub boot_end: u64,
    pub heal_at: u64,
    pub tickets: Vec<u16>,
    /// `competes[node][resource]` at start.
    pub competes: Vec<Vec<bool>>,
    pub faults: Vec<(u64, Fault)>,
    pub loss: f64,
    pub duplicate: f64,
    pub latency_mean: u64,
    pub burst: Option<(f64, f64, f64)>,
    /// Seconds over which nodes start.
    pub stagger: u64,
    /// Fault kinds the plan contains (for coverage).
    pub kinds: Vec<&'static str>,
    /// `ready-race`: `(racer, rival, resource)`: when the racer becomes ready after a
    /// restart, the rival starts competing for the resource at once.
    pub race: Option<(u32, u32, usize)>,
}

/// Inputs of [`plan`].
#[derive(Clone, Debug)]
pub struct PlanInput {
    pub scenario: Scenario,
    pub nodes: usize,
    pub duration: u64,
    pub loss: f64,
    pub latency_mean: u64,
    pub tickets: Option<u16>,
    pub resources: usize,
}

fn pick(rng: &mut Xoshiro256PlusPlus, n: usize) -> u32 {
    rng.random_range(0..n as u32)
}

/// The first half of the nodes in group 0, the rest in group 1.
fn halves(n: usize) -> Vec<u8> {
    (0..n).map(|i| u8::from(i >= n / 2)).collect()
}

/// One flap at `t`: halves for 2 s, then whole again.
fn flap(faults: &mut Vec<(u64, Fault)>, n: usize, t: u64) {
    faults.push((t, Fault::Partition(Partition::Groups(halves(n)))));
    faults.push((t + 2 * S, Fault::HealNetwork));
}

/// One reschedule at `t`: the holder of `resource` is cut off and a process with its name
/// starts elsewhere, the network heals 15 s later, and the older process stops 10 s after.
fn reschedule(faults: &mut Vec<(u64, Fault)>, resource: usize, t: u64) {
    faults.push((t, Fault::RescheduleHolder(resource)));
    faults.push((t + 15 * S, Fault::HealNetwork));
    faults.push((t + 25 * S, Fault::StopOlderNamesake));
}

/// Draws a run's plan.
pub fn plan(input: &PlanInput, rng: &mut Xoshiro256PlusPlus) -> Plan {
    let n = input.nodes;
    let resources = input.resources.max(1);
    let swarm = input.scenario == Scenario::Swarm;
    let tickets: Vec<u16> = (0..resources)
        .map(|_| {
            input
                .tickets
                .unwrap_or_else(|| if swarm { rng.random_range(1..=3) } else { 1 })
        })
        .collect();
    // In `crash-owner-restarting` the last third of the nodes compete for nothing: their
    // records, when they restart, say nothing about any resource.
    let bystanders = match input.scenario {
        Scenario::CrashOwnerRestarting => (n / 3).max(1),
        Scenario::AddressChurn => n - n / 2,
        _ => 0,
    };
    // In `ready-race` only the racer competes for the last resource.
    let race = (input.scenario == Scenario::ReadyRace).then(|| {
        let last = resources - 1;
        let name = format!("r{last}");
        let score = |i: u32| gossip_election::placement::score(&name, &format!("n{i}"));
        if score(0) >= score(1) {
            (0, 1, last)
        } else {
            (1, 0, last)
        }
    });
    let mut competes: Vec<Vec<bool>> = (0..n)
        .map(|i| {
            (0..resources)
                .map(|_| i + bystanders < n && (!swarm || rng.random_bool(0.8)))
                .collect()
        })
        .collect();
    if let Some((racer, _, last)) = race {
        for (i, row) in competes.iter_mut().enumerate() {
            row[last] = i as u32 == racer;
        }
    }
    let boot_end = 10 * S;
    let heal_at = input.duration.saturating_sub(45 * S).max(boot_end + 15 * S);
    let c0 = boot_end + 5 * S;
    let c1 = heal_at;
    let mut faults: Vec<(u64, Fault)> = Vec::new();
    let mut kinds: Vec<&'static str> = Vec::new();
    let (mut loss, mut duplicate, mut latency_mean, mut burst) =
        (input.loss, 0.0, input.latency_mean, None);
    let mut stagger = 1;
    match input.scenario {
        Scenario::Steady => {}
        Scenario::CrashOwner | Scenario::CrashOwnerRestarting => {
            let restarting = input.scenario == Scenario::CrashOwnerRestarting;
            kinds.push("crash-owner");
            if restarting {
                kinds.push("restart");
            }
            let mut t = c0;
            // At least once, however short the chaos phase.
            while t + 12 * S < c1 || t == c0 {
                let resource = rng.random_range(0..resources);
                faults.push((
                    t,
                    Fault::CrashHolder {
                        resource,
                        restart_after: 10 * S,
                    },
                ));
                if restarting {
                    // Around the down declaration (suspicion 1 s after a missed probe).
                    let offset = rng.random_range(900..1600) * MS;
                    faults.push((t + offset, Fault::BounceBystander(resource)));
                }
                t += 20 * S;
            }
        }
        Scenario::PartitionHalves | Scenario::PartitionMinority => {
            kinds.push("partition");
            kinds.push("crash-owner");
            let group: Vec<u8> = if input.scenario == Scenario::PartitionHalves {
                halves(n)
            } else {
                let mut g = vec![0u8; n];
                let third = (n / 3).max(1);
                let mut chosen = 0;
                while chosen < third {
                    let i = pick(rng, n) as usize;
                    if g[i] == 0 {
                        g[i] = 1;
                        chosen += 1;
                    }
                }
                g
            };
            let span = c1 - c0;
            faults.push((c0, Fault::Partition(Partition::Groups(group))));
            faults.push((c0 + (span / 2).min(120 * S), Fault::HealNetwork));
            faults.push((
                c0 + span * 3 / 4,
                Fault::CrashHolder {
                    resource: 0,
                    restart_after: 10 * S,
                },
            ));
        }
        Scenario::IsolateOwner => {
            kinds.push("partition");
            let mut t = c0;
            while t + 25 * S < c1 || t == c0 {
                faults.push((t, Fault::IsolateHolder(0)));
                faults.push(((t + 20 * S).min(c1), Fault::HealNetwork));
                t += 40 * S;
            }
        }
        Scenario::OneWayCut => {
            kinds.push("partition");
            let mut t = c0;
            while t + 35 * S < c1 || t == c0 {
                for holder in [true, false] {
                    if t + 35 * S < c1 || t == c0 {
                        faults.push((
                            t,
                            Fault::CutOutgoing {
                                resource: 0,
                                holder,
                            },
                        ));
                        faults.push(((t + 30 * S).min(c1), Fault::HealNetwork));
                    }
                    t += 45 * S;
                }
            }
        }
        Scenario::ReadyRace => {
            kinds.push("leave");
            let (racer, rival, last) = race.expect("set for ready-race");
            let mut t = c0;
            while t + 25 * S < c1 {
                faults.push((
                    t,
                    Fault::Leave {
                        node: racer,
                        restart_after: 2 * S,
                    },
                ));
                faults.push((
                    t + 20 * S,
                    Fault::Withdraw {
                        node: rival,
                        resource: last,
                    },
                ));
                t += 30 * S;
            }
        }
        Scenario::JoinWave => {
            kinds.push("restart");
            let wave: Vec<u32> = (n / 2..n).map(|i| i as u32).collect();
            let mut t = boot_end;
            while t + 35 * S < c1 {
                for (k, &i) in wave.iter().enumerate() {
                    faults.push((t, Fault::Crash(i)));
                    // Apart by a little less than the hold-off after becoming ready.
                    faults.push((t + 30 * S + k as u64 * 30 * MS, Fault::Restart(i)));
                }
                t += 60 * S;
            }
        }
        Scenario::AddressChurn => {
            kinds.push("restart");
            let transient: Vec<u32> = (n / 2..n).map(|i| i as u32).collect();
            let step = 2 * S / transient.len().max(1) as u64;
            let mut t = c0;
            'churn: loop {
                for &node in &transient {
                    if t >= c1 {
                        break 'churn;
                    }
                    let graceful = rng.random_bool(0.5);
                    faults.push((t, Fault::Reincarnate { node, graceful }));
                    t += step;
                }
            }
        }
        Scenario::Flap => {
            kinds.push("partition");
            let mut t = c0;
            while t + 5 * S < c1 {
                flap(&mut faults, n, t);
                t += 5 * S;
            }
        }
        Scenario::Reschedule => {
            kinds.push("partition");
            kinds.push("reschedule");
            let mut t = c0;
            while t + 30 * S < c1 || t == c0 {
                reschedule(&mut faults, 0, t);
                t += 40 * S;
            }
        }
        Scenario::RollingRestart => {
            kinds.push("restart");
            let mut t = c0;
            let mut i = 0;
            while t + S < c1 {
                faults.push((t, Fault::Crash(i as u32)));
                faults.push((t + 500 * MS, Fault::Restart(i as u32)));
                i = (i + 1) % n;
                t += 5 * S;
            }
        }
        Scenario::RollingLeave => {
            kinds.push("leave");
            let mut t = c0;
            let mut i = 0;
            while t + S < c1 {
                faults.push((
                    t,
                    Fault::Leave {
                        node: i as u32,
                        restart_after: 500 * MS,
                    },
                ));
                i = (i + 1) % n;
                t += 5 * S;
            }
        }
        Scenario::Churn => {
            kinds.push("churn");
            kinds.push("restart");
            let mut t = c0;
            let mut k = 0;
            while t < c1 {
                let node = pick(rng, n);
                let resource = rng.random_range(0..resources);
                faults.push((t, Fault::Withdraw { node, resource }));
                faults.push((
                    t + rng.random_range(1..10) * S,
                    Fault::Obtain { node, resource },
                ));
                if k % 15 == 14 {
                    let victim = pick(rng, n);
                    faults.push((t, Fault::Crash(victim)));
                    // Every other restart comes back with its clock stepped back.
                    let restart = if k % 30 == 29 {
                        Fault::RestartClockBack(victim)
                    } else {
                        Fault::Restart(victim)
                    };
                    faults.push((t + 3 * S, restart));
                }
                k += 1;
                t += 2 * S;
            }
        }
        Scenario::Swarm => {
            loss = [0.0, 0.0, 0.01, 0.02, 0.05, 0.1][rng.random_range(0..6)];
            duplicate = if rng.random_bool(0.5) {
                rng.random_range(0.0..0.05)
            } else {
                0.0
            };
            latency_mean = rng.random_range(1..=20) * MS;
            if rng.random_bool(0.25) {
                burst = Some((0.001, 0.2, 0.5));
            }
            if rng.random_bool(0.5) {
                stagger = rng.random_range(1..=8);
            }
            let enabled: Vec<&'static str> = [
                "partition",
                "crash",
                "crash-owner",
                "pause",
                "drift",
                "loss-burst",
                "churn",
            ]
            .into_iter()
            .filter(|_| rng.random_bool(0.5))
            .collect();
            kinds = enabled.clone();
            let mut t = c0;
            while !enabled.is_empty() && t < c1 {
                let kind = enabled[rng.random_range(0..enabled.len())];
                let lasting = rng.random_range(5..40) * S;
                let end = (t + lasting).min(c1);
                match kind {
                    "partition" => {
                        let shape = random_partition(rng, n);
                        faults.push((t, Fault::Partition(shape)));
                        faults.push((end, Fault::HealNetwork));
                    }
                    "crash" => {
                        let node = pick(rng, n);
                        faults.push((t, Fault::Crash(node)));
                        if rng.random_bool(0.7) {
                            faults.push((end, Fault::Restart(node)));
                        }
                    }
                    "crash-owner" => {
                        let resource = rng.random_range(0..resources);
                        faults.push((
                            t,
                            Fault::CrashHolder {
                                resource,
                                restart_after: lasting,
                            },
                        ));
                    }
                    "pause" => {
                        let duration = rng.random_range(200..5000) * MS;
                        if rng.random_bool(0.5) {
                            let resource = rng.random_range(0..resources);
                            faults.push((t, Fault::PauseHolder { resource, duration }));
                        } else {
                            faults.push((
                                t,
                                Fault::Pause {
                                    node: pick(rng, n),
                                    duration,
                                },
                            ));
                        }
                    }
                    "drift" => {
                        let rate = if rng.random_bool(0.8) {
                            rng.random_range(-0.0005..0.0005)
                        } else if rng.random_bool(0.5) {
                            0.05
                        } else {
                            -0.05
                        };
                        faults.push((
                            t,
                            Fault::Drift {
                                node: pick(rng, n),
                                rate,
                            },
                        ));
                    }
                    "loss-burst" => {
                        faults.push((t, Fault::LossBurst(rng.random_range(0.2..0.5))));
                        faults.push((end, Fault::LossBurstEnd));
                    }
                    _ => {
                        let node = pick(rng, n);
                        let resource = rng.random_range(0..resources);
                        faults.push((t, Fault::Withdraw { node, resource }));
                        faults.push((end, Fault::Obtain { node, resource }));
                    }
                }
                t = end + rng.random_range(1..15) * S;
            }
            // Kinds added to the mix later, drawn after it, so that every seed keeps the
            // faults it had before them.
            for kind in ["leave", "clock-back", "reschedule", "flap"] {
                if !rng.random_bool(0.25) || c1 < c0 + 40 * S {
                    continue;
                }
                let t = rng.random_range(c0 / S..(c1 - 30 * S) / S) * S;
                kinds.push(kind);
                match kind {
                    "leave" => faults.push((
                        t,
                        Fault::LeaveHolder {
                            resource: rng.random_range(0..resources),
                            restart_after: 500 * MS,
                        },
                    )),
                    "clock-back" => {
                        let node = pick(rng, n);
                        faults.push((t, Fault::Crash(node)));
                        faults.push((t + 3 * S, Fault::RestartClockBack(node)));
                    }
                    "reschedule" => {
                        let resource = rng.random_range(0..resources);
                        reschedule(&mut faults, resource, t);
                    }
                    _ => {
                        for k in 0..4 {
                            flap(&mut faults, n, t + k * 5 * S);
                        }
                    }
                }
            }
        }
    }
    faults.push((heal_at, Fault::Heal));
    faults.sort_by_key(|(t, _)| *t);
    Plan {
        scenario: input.scenario,
        nodes: n,
        duration: input.duration,
        boot_end,
        heal_at,
        tickets,
        competes,
        faults,
        loss,
        duplicate,
        latency_mean,
        burst,
        stagger,
        kinds,
        race,
    }
}

fn random_partition(rng: &mut Xoshiro256PlusPlus, n: usize) -> Partition {
    let random_groups = |rng: &mut Xoshiro256PlusPlus, p: f64| -> Vec<u8> {
        let mut g: Vec<u8> = (0..n).map(|_| u8::from(rng.random_bool(p))).collect();
        if g.iter().all(|x| *x == g[0]) {
            g[0] = 1 - g[0];
        }
        g
    };
    match rng.random_range(0..6) {
        0 => Partition::Groups(halves(n)),
        1 => Partition::Groups(random_groups(rng, 0.33)),
        2 => {
            let mut g = vec![0u8; n];
            g[pick(rng, n) as usize] = 1;
            Partition::Groups(g)
        }
        3 if n >= 5 => Partition::Ring { nodes: n as u32 },
        4 if n >= 3 => {
            let bridge = pick(rng, n);
            Partition::Bridge {
                group: random_groups(rng, 0.5),
                bridge,
            }
        }
        _ => Partition::OneWay {
            group: random_groups(rng, 0.5),
            from: 0,
            to: 1,
        },
    }
}
