//! Turning a scenario and a seed into a [`Plan`]: the faults, their times and the
//! workload.

use gossip_election::proto::{CoreConfig, MAX_DRIFT, QuorumMargins};
use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;

use super::{Fault, MS, Plan, PlanInput, RETIRE, S, Scenario};
use crate::net::Partition;

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
        Scenario::PartitionHalves
        | Scenario::PartitionMinority
        | Scenario::PartitionOneWay
        | Scenario::PartitionBridge
        | Scenario::PartitionRing => {
            kinds.push("partition");
            kinds.push("crash-owner");
            let shape = match input.scenario {
                Scenario::PartitionMinority => {
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
                    Partition::Groups(g)
                }
                Scenario::PartitionOneWay => Partition::OneWay {
                    group: halves(n),
                    from: 0,
                    to: 1,
                },
                Scenario::PartitionBridge => Partition::Bridge {
                    group: halves(n),
                    bridge: pick(rng, n),
                },
                Scenario::PartitionRing => Partition::Ring { nodes: n as u32 },
                _ => Partition::Groups(halves(n)),
            };
            let span = c1 - c0;
            faults.push((c0, Fault::Partition(shape)));
            faults.push((c0 + (span / 2).min(120 * S), Fault::HealNetwork));
            faults.push((
                c0 + span * 3 / 4,
                Fault::CrashHolder {
                    resource: 0,
                    restart_after: 10 * S,
                },
            ));
        }
        Scenario::HandOver => {
            kinds.push("leave");
            kinds.push("churn");
            let mut t = c0;
            let mut k = 0u64;
            while t + 4 * S < c1 {
                let resource = rng.random_range(0..resources);
                faults.push((
                    t,
                    if k.is_multiple_of(2) {
                        Fault::LeaveHolder {
                            resource,
                            restart_after: 500 * MS,
                        }
                    } else {
                        Fault::WithdrawHolder {
                            resource,
                            obtain_after: 2 * S,
                        }
                    },
                ));
                k += 1;
                t += 4 * S;
            }
        }
        Scenario::PauseHolder => {
            kinds.push("pause");
            // A random phase against the probe rounds; the pause ends long before the next.
            let mut t = c0;
            while t + 10 * S <= c1 {
                let resource = rng.random_range(0..resources);
                let phase = rng.random_range(0..S);
                faults.push((
                    t + phase,
                    Fault::PauseHolder {
                        resource,
                        duration: S,
                    },
                ));
                t += 10 * S;
            }
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
        Scenario::Resize => {
            kinds.push("leave");
            let last = (n - 1) as u32;
            let smaller = (n - 1) as u16;
            let mut t = c0;
            faults.push((
                t,
                Fault::Leave {
                    node: last,
                    restart_after: RETIRE,
                },
            ));
            // One step at a time: the restarted node promises nothing for its start wait.
            let step = 12 * S;
            for members in [smaller, smaller + 1] {
                for i in 0..last {
                    t += step;
                    faults.push((t, Fault::SetMembers { node: i, members }));
                    faults.push((
                        t,
                        Fault::Leave {
                            node: i,
                            restart_after: 500 * MS,
                        },
                    ));
                }
            }
            t += step;
            faults.push((
                t,
                Fault::SetMembers {
                    node: last,
                    members: smaller + 1,
                },
            ));
            faults.push((t, Fault::Restart(last)));
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
    // Quorum mode promises safety for pauses and drift within its bounds: the same faults,
    // held to them (so a seed draws the same plan in both modes).
    let quorum = input.quorum.then(quorum_margins);
    if let Some(m) = quorum {
        let max_pause = m.max_pause.as_nanos() as u64;
        for (_, fault) in &mut faults {
            match fault {
                Fault::Pause { duration, .. } | Fault::PauseHolder { duration, .. } => {
                    *duration = (*duration).min(max_pause);
                }
                Fault::Drift { rate, .. } => *rate = rate.clamp(-MAX_DRIFT, MAX_DRIFT),
                _ => {}
            }
        }
    }
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
        quorum,
    }
}

/// The margins of quorum mode with the simulator's node configuration (the defaults).
pub fn quorum_margins() -> QuorumMargins {
    CoreConfig::new("n", crate::slots::addr_at(0, crate::slots::FIRST_PORT), 1).quorum_margins()
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
