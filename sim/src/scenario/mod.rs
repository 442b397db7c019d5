//! Scenarios: what faults and workload a run gets, drawn from its seed.

use serde::Serialize;

use gossip_election::proto::QuorumMargins;

use crate::net::Partition;

mod plan;

pub use plan::plan;

/// Nanoseconds.
pub const MS: u64 = 1_000_000;
/// Nanoseconds.
pub const S: u64 = 1_000_000_000;

/// A `Leave`'s `restart_after` for a node that leaves for good (until the final heal).
pub const RETIRE: u64 = u64::MAX;

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
    /// The fleet shrinks by one node and grows back by quorum mode's procedure: the last
    /// node leaves for good, every other node restarts with M - 1, one every 12 s; then
    /// every node restarts with M again, and the last node starts. (In available mode,
    /// rolling restarts with one node out.)
    Resize,
    /// As `PartitionHalves`, one way: packets from the first half to the second are
    /// dropped, the reverse passes.
    PartitionOneWay,
    /// As `PartitionHalves`, with one node (drawn per seed) that reaches both halves.
    PartitionBridge,
    /// As `PartitionHalves`, with overlapping majorities: nodes on a ring reach those at
    /// most a quarter of the ring away.
    PartitionRing,
    /// Every 10 s the holder of a resource (drawn per pause) is frozen for exactly 1 s,
    /// starting at a random instant within the first second of the 10: whether the fleet
    /// declares a paused holder down.
    PauseHolder,
    /// Every 4 s a holder hands its ticket over on purpose, in turn by leaving gracefully
    /// (it starts again 500 ms after it left, and takes the ticket back once ready) and by
    /// withdrawing (it competes again 2 s later, and takes it back): graceful handoffs,
    /// enough of them to measure in a large fleet, each move seconds from the next.
    HandOver,
}

impl Scenario {
    /// Every scenario, in CLI order.
    pub const ALL: [Scenario; 22] = [
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
        Scenario::Resize,
        Scenario::PartitionOneWay,
        Scenario::PartitionBridge,
        Scenario::PartitionRing,
        Scenario::PauseHolder,
        Scenario::HandOver,
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
            Scenario::Resize => "resize",
            Scenario::PartitionOneWay => "partition-one-way",
            Scenario::PartitionBridge => "partition-bridge",
            Scenario::PartitionRing => "partition-ring",
            Scenario::PauseHolder => "pause-holder",
            Scenario::HandOver => "hand-over",
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
                | Scenario::PartitionOneWay
                | Scenario::PartitionBridge
                | Scenario::PartitionRing
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
    /// Whoever holds the resource (its first holder in rank order) withdraws, and obtains
    /// it again after the given delay (ns).
    WithdrawHolder { resource: usize, obtain_after: u64 },
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
    /// Quorum mode: the fleet size the node's next process starts with.
    SetMembers { node: u32, members: u16 },
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
    /// Quorum mode's margins, when the run is in quorum mode (members: the fleet's size).
    pub quorum: Option<QuorumMargins>,
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
    /// Quorum mode (members: the fleet's size): pauses and drift stay within its bounds.
    pub quorum: bool,
}
