//! The real tokio driver (`NodeBuilder::run_on`) over turmoil's simulated network:
//! deterministic, virtual-time tests of join, restart, partition and late seeds.
//!
//! Written against **turmoil 0.7.2** (`Builder` setters taking `&mut self`, `Sim::step`,
//! `Sim::{crash, bounce, partition, repair, lookup, is_host_running}`, host software on a
//! per-host current-thread runtime with a `LocalSet`, `turmoil::net::UdpSocket`). Newer
//! turmoil releases may change these; pin the dev-dependency when upgrading.
//!
//! How the pieces fit:
//!
//! * Each host's software binds a `turmoil::net::UdpSocket` on `0.0.0.0:PORT`, wraps it
//!   in [`SimSocket`] (our [`Socket`] impl; a newtype because of the orphan rule) and runs
//!   the node with `run_on`. The protocol loop is `!Send`: it is `spawn_local`ed on the
//!   host's `LocalSet`, which turmoil provides.
//! * Addresses are turmoil's simulated ones (192.168.0.0/16, from `turmoil::lookup` /
//!   `Sim::lookup`); they exist only inside the simulation. 127.0.0.0/8 would route back
//!   to the sending host in turmoil, so it cannot be used to advertise.
//! * Hosts publish a [`Snapshot`] of their node (info, owners of `echo`, members) every
//!   50 ms of simulated time, and their application loop records in [`Fleet`] when it
//!   runs `echo`. The test body only steps the simulation (`Sim::step`, 1 ms per tick) and
//!   checks that shared state, so it can crash, restart and partition hosts between
//!   steps. Every wait is bounded in simulated time, and a never-finishing "watchdog"
//!   client makes turmoil itself fail a run that exceeds `simulation_duration`.
//!
//! Determinism: the seed (`rng_seed`), the epoch and every boot number are explicit; the
//! driver's `select!` is `biased;` (turmoil seeds tokio's RNG only under
//! `--cfg tokio_unstable`); nothing here reads `std::time` (the builder reads
//! `SystemTime::now()` for a boot left unset, and as the wall clock it refuses absurd boots
//! against, which these boots are far below). `GOSSIP_TURMOIL_SEED=<u64>` replaces
//! the fixed seed to explore others. Without `tokio_unstable`, a panic in a task the host
//! spawned (protocol loop, worker) is swallowed by its `LocalSet`: the reporter therefore
//! fails the host when the protocol loop ends.
//!
//! No `#[tokio::test]`: turmoil drives its own runtimes with `block_on`.

use std::cell::{Ref, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use gossip_election::{
    Candidacy, LostReason, MemberInfo, MemberState, Node, NodeInfo, NodeState, OwnerInfo, Owners,
    Socket, Timing,
};
use turmoil::{Builder, Sim};

/// The UDP port every host binds (hosts have distinct simulated IPs).
const PORT: u16 = 7946;
const RESOURCE: &str = "echo";
/// How often each host publishes its snapshot (simulated time).
const REPORT_EVERY: Duration = Duration::from_millis(50);
/// turmoil's hard cap per test (simulated time).
const SIM_LIMIT: Duration = Duration::from_secs(120);
/// First boot number; each start of a name adds one, so restarts always rise.
const BOOT_BASE: u64 = 1_000;

/// `echo` ranks w0, w2, w4, w1, w3 over five (w0, w2, w1 over the first three); see the
/// placement vectors and tests/election.rs.
const NAMES3: [&str; 3] = ["w0", "w1", "w2"];
const NAMES5: [&str; 5] = ["w0", "w1", "w2", "w3", "w4"];

// ------------------------------------------------------------------------ the seam

/// turmoil's UDP socket behind the driver's [`Socket`] trait. turmoil's `recv_from` is
/// cancel-safe (a datagram is buffered inside the socket before the await can end).
struct SimSocket(turmoil::net::UdpSocket);

impl Socket for SimSocket {
    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> {
        self.0.recv_from(buf)
    }

    fn send_to(&self, buf: &[u8], target: SocketAddr) -> impl Future<Output = io::Result<usize>> {
        self.0.send_to(buf, target)
    }
}

// ------------------------------------------------------------------- shared state

/// What the application loops did.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// A process of `name` started with `boot`.
    Started { name: String, boot: u64 },
    /// It began running `echo`.
    Acquired(String),
    /// It was told to stop, and stopped (the lease is dropped right after).
    Lost(String, LostReason),
    /// Its process died (crash or bounce) while it ran `echo`.
    Killed(String),
}

/// One host's latest report.
#[derive(Clone, Debug)]
struct Snapshot {
    at: Duration,
    info: NodeInfo,
    owners: Owners,
    members: Vec<MemberInfo>,
}

/// Everything the hosts report, shared with the test body. Single-threaded: turmoil runs
/// every host and the test body on this thread, so `Rc<RefCell<_>>` suffices. Borrows are
/// never held across an await or across `Sim::{step, crash, bounce}`.
#[derive(Default)]
struct Fleet {
    /// Simulated time at the start of the current step (set by the test body; hosts read
    /// it instead of a clock, which keeps drop paths off the real clock).
    clock: Duration,
    addrs: BTreeMap<String, SocketAddr>,
    starts: BTreeMap<String, u64>,
    snapshots: BTreeMap<String, Snapshot>,
    /// Processes running `echo` now (application level).
    running: BTreeSet<String>,
    /// The most ever running at once.
    max_running: usize,
    log: Vec<(Duration, Step)>,
    /// Hosts whose application never takes the lease it is offered.
    never_take: BTreeSet<&'static str>,
    /// Hosts told to leave the fleet (they leave once, then idle).
    leave: BTreeSet<&'static str>,
}

type Shared = Rc<RefCell<Fleet>>;

fn names(owners: &[OwnerInfo]) -> Vec<&str> {
    owners.iter().map(|o| o.name.as_str()).collect()
}

impl Fleet {
    fn record(&mut self, step: Step) {
        self.log.push((self.clock, step));
    }

    fn next_boot(&mut self, name: &str) -> u64 {
        let starts = self.starts.entry(name.to_string()).or_default();
        *starts += 1;
        BOOT_BASE + *starts
    }

    fn name_at(&self, addr: SocketAddr) -> Option<&str> {
        self.addrs
            .iter()
            .find(|(_, a)| **a == addr)
            .map(|(n, _)| n.as_str())
    }

    fn snapshot(&self, name: &str) -> Result<&Snapshot, String> {
        self.snapshots
            .get(name)
            .ok_or_else(|| format!("{name} has not reported (not running?)"))
    }

    fn boot_of(&self, name: &str) -> Option<u64> {
        self.snapshots.get(name).map(|s| s.info.boot)
    }

    /// The processes running `echo` are exactly `expected`.
    fn running_is(&self, expected: &[&str]) -> Result<(), String> {
        let expected: BTreeSet<&str> = expected.iter().copied().collect();
        let running: BTreeSet<&str> = self.running.iter().map(String::as_str).collect();
        if running == expected {
            Ok(())
        } else {
            Err(format!("running {running:?}, expected {expected:?}"))
        }
    }

    /// Every node of `group` sees exactly `owner` holding `echo`.
    fn views_hold(&self, group: &[&str], owner: &str) -> Result<(), String> {
        for &name in group {
            let s = self.snapshot(name)?;
            let holders = names(&s.owners.holders);
            if holders != [owner] {
                return Err(format!("{name} sees holders {holders:?}, not [{owner}]"));
            }
        }
        Ok(())
    }

    /// Every node of `group` runs and is `Active`; sees `owner`, and only `owner`, as
    /// both holder and desired owner of `echo`; lists every other node of `group` alive,
    /// under its name and current boot; and lists nodes outside `group` only as down.
    fn agrees(&self, group: &[&str], owner: &str) -> Result<(), String> {
        for &name in group {
            let s = self.snapshot(name)?;
            if s.info.state != NodeState::Active {
                return Err(format!("{name} is {:?}", s.info.state));
            }
            let holders = names(&s.owners.holders);
            let desired = names(&s.owners.desired);
            if s.owners.tickets != 1 || holders != [owner] || desired != [owner] {
                return Err(format!(
                    "{name} sees tickets {}, holders {holders:?}, desired {desired:?}; expected [{owner}]",
                    s.owners.tickets
                ));
            }
            let mut seen = BTreeSet::new();
            for m in &s.members {
                let Some(peer) = self.name_at(m.addr) else {
                    return Err(format!("{name} lists an unknown member {}", m.addr));
                };
                if group.contains(&peer) {
                    let boot = self.snapshot(peer)?.info.boot;
                    if m.state != MemberState::Alive
                        || m.boot != boot
                        || m.name.as_deref() != Some(peer)
                    {
                        return Err(format!(
                            "{name} sees {peer} as {:?}, boot {}, name {:?}; expected alive, boot {boot}",
                            m.state, m.boot, m.name
                        ));
                    }
                    if !seen.insert(peer) {
                        return Err(format!("{name} lists {peer} twice"));
                    }
                } else if m.state != MemberState::Down {
                    return Err(format!(
                        "{name} sees {peer} (outside {group:?}) as {:?}",
                        m.state
                    ));
                }
            }
            let missing: Vec<&str> = group
                .iter()
                .copied()
                .filter(|p| *p != name && !seen.contains(p))
                .collect();
            if !missing.is_empty() {
                return Err(format!("{name} does not list {missing:?}"));
            }
            if s.info.live_members != group.len() - 1 {
                return Err(format!(
                    "{name} counts {} live members, expected {}",
                    s.info.live_members,
                    group.len() - 1
                ));
            }
        }
        Ok(())
    }

    /// `name` reaches nobody (`Alone`, no live member) and holds `echo` on its own view.
    fn runs_alone_holding(&self, name: &str) -> Result<(), String> {
        let s = self.snapshot(name)?;
        if s.info.state != NodeState::Alone {
            return Err(format!("{name} is {:?}, not alone", s.info.state));
        }
        let holders = names(&s.owners.holders);
        let desired = names(&s.owners.desired);
        if holders != [name] || desired != [name] {
            return Err(format!(
                "{name} alone sees holders {holders:?}, desired {desired:?}"
            ));
        }
        if s.info.live_members != 0 {
            return Err(format!(
                "{name} still counts {} live members",
                s.info.live_members
            ));
        }
        if let Some(m) = s.members.iter().find(|m| m.state != MemberState::Down) {
            return Err(format!("{name} still sees {} as {:?}", m.addr, m.state));
        }
        Ok(())
    }

    fn steps_since(&self, mark: usize) -> Vec<&Step> {
        self.log[mark..].iter().map(|(_, s)| s).collect()
    }

    fn has_since(&self, mark: usize, step: &Step) -> bool {
        self.log[mark..].iter().any(|(_, s)| s == step)
    }

    fn acquired_since(&self, mark: usize) -> Vec<&str> {
        self.steps_since(mark)
            .into_iter()
            .filter_map(|s| match s {
                Step::Acquired(n) => Some(n.as_str()),
                _ => None,
            })
            .collect()
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "snapshots at {:?}:", self.clock);
        for (name, s) in &self.snapshots {
            let members: Vec<String> = s
                .members
                .iter()
                .map(|m| {
                    format!(
                        "{}/{}/{}",
                        m.name.as_deref().unwrap_or("?"),
                        m.boot,
                        m.state.as_str()
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "  {name} (boot {}, {}, at {:?}): holders {:?} desired {:?} members {members:?}",
                s.info.boot,
                s.info.state.as_str(),
                s.at,
                names(&s.owners.holders),
                names(&s.owners.desired),
            );
        }
        let _ = writeln!(
            out,
            "running {:?} (at most {} at once); last steps:",
            self.running, self.max_running
        );
        let from = self.log.len().saturating_sub(40);
        for (at, step) in &self.log[from..] {
            let _ = writeln!(out, "  {at:?} {step:?}");
        }
        out
    }
}

// ------------------------------------------------------------------ host software

/// Removes the host's snapshot when its process ends (returns, crashes or is bounced).
struct Process {
    name: &'static str,
    fleet: Shared,
}

impl Drop for Process {
    fn drop(&mut self) {
        self.fleet.borrow_mut().snapshots.remove(self.name);
    }
}

/// Marks `name` as running `echo` from acquisition until it stops; if the process dies
/// first (the task is dropped by `Sim::crash` / `Sim::bounce`), records `Killed`.
struct Running {
    name: &'static str,
    fleet: Shared,
    stopped: bool,
}

impl Running {
    fn start(name: &'static str, fleet: &Shared) -> Running {
        {
            let mut f = fleet.borrow_mut();
            f.record(Step::Acquired(name.to_string()));
            f.running.insert(name.to_string());
            f.max_running = f.max_running.max(f.running.len());
        }
        Running {
            name,
            fleet: Rc::clone(fleet),
            stopped: false,
        }
    }

    fn stop(mut self, reason: LostReason) {
        self.stopped = true;
        let mut f = self.fleet.borrow_mut();
        f.record(Step::Lost(self.name.to_string(), reason));
        f.running.remove(self.name);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.stopped {
            let mut f = self.fleet.borrow_mut();
            f.running.remove(self.name);
            f.record(Step::Killed(self.name.to_string()));
        }
    }
}

/// The application: run `echo` while holding it; stop when told, then drop the lease.
async fn run_worker(name: &'static str, mut candidacy: Candidacy, fleet: Shared) {
    while let Ok(lease) = candidacy.acquired().await {
        let running = Running::start(name, &fleet);
        let reason = lease.lost().await;
        running.stop(reason);
        drop(lease);
    }
}

/// One host's software. turmoil calls it again (fresh process, next boot) on `bounce`.
async fn run_host(name: &'static str, seeds: Vec<SocketAddr>, fleet: Shared) -> turmoil::Result {
    let _process = Process {
        name,
        fleet: Rc::clone(&fleet),
    };
    let boot = {
        let mut f = fleet.borrow_mut();
        let boot = f.next_boot(name);
        f.record(Step::Started {
            name: name.to_string(),
            boot,
        });
        boot
    };
    // Simulated address: exists only inside this turmoil simulation.
    let advertise = SocketAddr::new(turmoil::lookup(name), PORT);
    let socket = turmoil::net::UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)).await?;
    let (node, protocol) = Node::builder(name)
        .join(seeds)
        .boot(boot)
        .timing(Timing::lan())
        .sync_timeout(Duration::from_secs(3))
        .handoff_timeout(Duration::from_secs(5))
        .run_on(SimSocket(socket), advertise)?;
    let protocol = tokio::task::spawn_local(protocol);
    let candidacy = node.obtain(RESOURCE, 1).await?;
    let _untaken = if fleet.borrow().never_take.contains(name) {
        Some(candidacy)
    } else {
        tokio::task::spawn_local(run_worker(name, candidacy, Rc::clone(&fleet)));
        None
    };
    loop {
        if fleet.borrow().leave.contains(name) {
            node.leave().await;
            return std::future::pending().await;
        }
        if protocol.is_finished() {
            return Err(format!("{name}: the protocol loop ended").into());
        }
        let info = node.info().await?;
        let owners = node.owners(RESOURCE).await?;
        let members = node.members().await?;
        {
            let mut f = fleet.borrow_mut();
            let at = f.clock;
            f.snapshots.insert(
                name.to_string(),
                Snapshot {
                    at,
                    info,
                    owners,
                    members,
                },
            );
        }
        tokio::time::sleep(REPORT_EVERY).await;
    }
}

// ------------------------------------------------------------------------ harness

struct Harness {
    sim: Sim<'static>,
    fleet: Shared,
    seed: u64,
}

impl Harness {
    /// A simulation with fixed seed, epoch, 1 ms tick, 1–10 ms links, roomy UDP buffers,
    /// and addresses for `names` (their hosts are added with [`Harness::add_host`]).
    fn new(default_seed: u64, names: &[&'static str]) -> Harness {
        let seed = std::env::var("GOSSIP_TURMOIL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_seed);
        let mut sim = Builder::new()
            .rng_seed(seed)
            .epoch(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
            .tick_duration(Duration::from_millis(1))
            .simulation_duration(SIM_LIMIT)
            .min_message_latency(Duration::from_millis(1))
            .max_message_latency(Duration::from_millis(10))
            .udp_capacity(1024)
            .build();
        let fleet = Shared::default();
        for &name in names {
            let addr = SocketAddr::new(sim.lookup(name), PORT);
            fleet.borrow_mut().addrs.insert(name.to_string(), addr);
        }
        // Never finishes: with a client registered, `Sim::step` fails once the run
        // exceeds `simulation_duration` (hosts alone would run unbounded).
        sim.client("watchdog", std::future::pending::<turmoil::Result>());
        Harness { sim, fleet, seed }
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.fleet.borrow().addrs[name]
    }

    fn addrs(&self, names: &[&str]) -> Vec<SocketAddr> {
        names.iter().map(|n| self.addr(n)).collect()
    }

    fn fleet(&self) -> Ref<'_, Fleet> {
        self.fleet.borrow()
    }

    /// Restarts the "most running at once" count from the current number.
    fn reset_max_running(&mut self) {
        let mut f = self.fleet.borrow_mut();
        f.max_running = f.running.len();
    }

    fn add_host(&mut self, name: &'static str, seeds: &[SocketAddr]) {
        let fleet = Rc::clone(&self.fleet);
        let seeds = seeds.to_vec();
        self.sim.host(name, move || {
            run_host(name, seeds.clone(), Rc::clone(&fleet))
        });
    }

    fn step(&mut self) {
        self.fleet.borrow_mut().clock = self.sim.elapsed();
        if let Err(err) = self.sim.step() {
            panic!(
                "seed {}: the simulation failed at {:?}: {err}\n{}",
                self.seed,
                self.sim.elapsed(),
                self.fleet.borrow().dump()
            );
        }
    }

    /// Steps until `check` passes; fails after `within` of simulated time.
    fn run_until(
        &mut self,
        within: Duration,
        what: &str,
        check: impl Fn(&Fleet) -> Result<(), String>,
    ) {
        let start = self.sim.elapsed();
        loop {
            self.step();
            let outcome = check(&self.fleet.borrow());
            if let Err(why) = outcome {
                if self.sim.elapsed() - start >= within {
                    panic!(
                        "seed {}: {what}: not reached within {within:?} (now {:?}): {why}\n{}",
                        self.seed,
                        self.sim.elapsed(),
                        self.fleet.borrow().dump()
                    );
                }
            } else {
                return;
            }
        }
    }

    /// Steps for `span`, requiring `check` to pass after every step.
    fn run_for(
        &mut self,
        span: Duration,
        what: &str,
        check: impl Fn(&Fleet) -> Result<(), String>,
    ) {
        let end = self.sim.elapsed() + span;
        while self.sim.elapsed() < end {
            self.step();
            let outcome = check(&self.fleet.borrow());
            if let Err(why) = outcome {
                panic!(
                    "seed {}: {what}: broken at {:?}: {why}\n{}",
                    self.seed,
                    self.sim.elapsed(),
                    self.fleet.borrow().dump()
                );
            }
        }
    }

    /// Panics with the seed and the fleet's state unless `check` passes now.
    fn expect(&self, what: &str, check: impl Fn(&Fleet) -> Result<(), String>) {
        let outcome = check(&self.fleet.borrow());
        if let Err(why) = outcome {
            panic!(
                "seed {}: {what}: {why}\n{}",
                self.seed,
                self.fleet.borrow().dump()
            );
        }
    }
}

// -------------------------------------------------------------------------- tests

#[test]
fn hosts_join_and_agree_on_one_owner() {
    let mut h = Harness::new(1, &NAMES5);
    // Every host joins through the first one only (w0 ignores its own address): the
    // others learn of each other by gossip.
    let seeds = [h.addr("w0")];
    for name in NAMES5 {
        h.add_host(name, &seeds);
    }
    h.run_until(
        Duration::from_secs(15),
        "five hosts agree that w0 holds echo",
        |f| {
            f.agrees(&NAMES5, "w0")?;
            f.running_is(&["w0"])
        },
    );
    let mark = h.fleet().log.len();
    h.run_for(Duration::from_secs(5), "w0 keeps echo", |f| {
        f.views_hold(&NAMES5, "w0")?;
        f.running_is(&["w0"])
    });
    h.expect("still agreed after 5 s", |f| {
        f.agrees(&NAMES5, "w0")?;
        let after = f.acquired_since(mark);
        if !after.is_empty() {
            return Err(format!("acquisitions after convergence: {after:?}"));
        }
        // w0 ranks first in every view that contains it, so it acquires exactly once.
        let w0 = f.acquired_since(0).iter().filter(|n| **n == "w0").count();
        if w0 != 1 {
            return Err(format!("w0 acquired {w0} times"));
        }
        Ok(())
    });
}

#[test]
fn leave_with_a_lease_the_application_never_took_reaches_the_fleet_at_once() {
    let mut h = Harness::new(6, &NAMES3);
    h.fleet.borrow_mut().never_take.insert("w0");
    let seeds = h.addrs(&NAMES3);
    for name in NAMES3 {
        h.add_host(name, &seeds);
    }
    h.run_until(Duration::from_secs(15), "w0 holds echo", |f| {
        f.agrees(&NAMES3, "w0")
    });
    // Leaving, w0 reports the lease lost; nobody holds it, so the driver drops it at
    // once, which completes the leave: its last records and foca's leave must go out
    // then, not wait for a timer that never comes (peers would wait for failure
    // detection, over a second).
    h.fleet.borrow_mut().leave.insert("w0");
    h.run_until(
        Duration::from_millis(300),
        "w1 and w2 see w2 holding echo",
        |f| f.views_hold(&["w1", "w2"], "w2"),
    );
}

#[test]
fn restart_with_new_boot_rejoins_and_takes_back_its_rank() {
    let mut h = Harness::new(2, &NAMES3);
    let seeds = h.addrs(&NAMES3);
    for name in NAMES3 {
        h.add_host(name, &seeds);
    }
    h.run_until(Duration::from_secs(15), "w0 holds echo", |f| {
        f.agrees(&NAMES3, "w0")?;
        f.running_is(&["w0"])
    });
    let first_boot = h.fleet().boot_of("w0").expect("w0 reported");

    // Crash the owner: failure detection moves the ticket to w2 (w0, w2, w1). From here
    // on, never two at once (start-up itself promises no such thing; see the README).
    h.reset_max_running();
    let mark = h.fleet().log.len();
    h.sim.crash("w0");
    assert!(!h.sim.is_host_running("w0"));
    h.run_until(
        Duration::from_secs(15),
        "w2 takes over from crashed w0",
        |f| {
            f.agrees(&["w1", "w2"], "w2")?;
            f.running_is(&["w2"])
        },
    );
    h.expect("the crash killed w0's echo", |f| {
        if f.has_since(mark, &Step::Killed("w0".into())) {
            Ok(())
        } else {
            Err("no Killed(w0) step".into())
        }
    });

    // Restart w0: a new process, same name and address, a higher boot.
    let mark = h.fleet().log.len();
    h.sim.bounce("w0");
    h.run_until(
        Duration::from_secs(20),
        "restarted w0 is seen with its new boot and takes echo back",
        |f| {
            let boot = f.boot_of("w0").ok_or("restarted w0 has not reported")?;
            if boot <= first_boot {
                return Err(format!("w0 boot {boot} did not rise above {first_boot}"));
            }
            f.agrees(&NAMES3, "w0")?;
            f.running_is(&["w0"])
        },
    );
    h.run_for(Duration::from_secs(3), "w0 keeps echo", |f| {
        f.views_hold(&NAMES3, "w0")?;
        f.running_is(&["w0"])
    });
    h.expect("w2 stopped before w0 started, never two at once", |f| {
        let steps = f.steps_since(mark);
        let restarted = steps.iter().any(|s| {
            matches!(s, Step::Started { name, boot } if name == "w0" && *boot == first_boot + 1)
        });
        if !restarted {
            return Err(format!("w0 did not restart with boot {}", first_boot + 1));
        }
        let lost = steps
            .iter()
            .position(|s| **s == Step::Lost("w2".into(), LostReason::Displaced))
            .ok_or("w2 was never told it lost echo")?;
        let acquired = steps
            .iter()
            .position(|s| **s == Step::Acquired("w0".into()))
            .ok_or("w0 never acquired")?;
        if lost > acquired {
            return Err("w0 acquired before w2 was told to stop".into());
        }
        let acquisitions = f.acquired_since(mark);
        if acquisitions != ["w0"] {
            return Err(format!("acquisitions after the restart: {acquisitions:?}"));
        }
        if f.max_running != 1 {
            return Err(format!(
                "{} ran echo at once since the crash",
                f.max_running
            ));
        }
        Ok(())
    });

    // Bounce the owner while it holds echo: no failover in between, the peers see the
    // newer boot replace the older one, and w0 ends up holding again.
    let second_boot = first_boot + 1;
    let mark = h.fleet().log.len();
    h.sim.bounce("w0");
    h.run_until(
        Duration::from_secs(20),
        "bounced w0 is seen with its new boot and holds echo",
        |f| {
            let boot = f.boot_of("w0").ok_or("bounced w0 has not reported")?;
            if boot <= second_boot {
                return Err(format!("w0 boot {boot} did not rise above {second_boot}"));
            }
            f.agrees(&NAMES3, "w0")?;
            f.running_is(&["w0"])
        },
    );
    h.expect("the bounce killed the old process's echo", |f| {
        if f.has_since(mark, &Step::Killed("w0".into())) {
            Ok(())
        } else {
            Err("no Killed(w0) step".into())
        }
    });
}

#[test]
fn partition_heal_merges_to_one_owner() {
    let mut h = Harness::new(3, &NAMES5);
    let seeds = h.addrs(&NAMES5);
    for name in NAMES5 {
        h.add_host(name, &seeds);
    }
    h.run_until(Duration::from_secs(15), "w0 holds echo", |f| {
        f.agrees(&NAMES5, "w0")?;
        f.running_is(&["w0"])
    });

    // Cut the owner off. Available mode: each side elects its own owner (w2 ranks first
    // on the majority side; w0, alone, keeps echo).
    let rest = ["w1", "w2", "w3", "w4"];
    for other in rest {
        h.sim.partition("w0", other);
    }
    h.run_until(
        Duration::from_secs(20),
        "both sides of the partition elect an owner",
        |f| {
            f.agrees(&rest, "w2")?;
            f.runs_alone_holding("w0")?;
            f.running_is(&["w0", "w2"])
        },
    );
    h.run_for(Duration::from_secs(3), "both sides keep their owner", |f| {
        f.views_hold(&["w0"], "w0")?;
        f.views_hold(&rest, "w2")?;
        f.running_is(&["w0", "w2"])
    });

    // Heal: the ranking merges back to one holder, w0.
    let mark = h.fleet().log.len();
    for other in rest {
        h.sim.repair("w0", other);
    }
    h.run_until(Duration::from_secs(30), "one owner after the heal", |f| {
        f.agrees(&NAMES5, "w0")?;
        f.running_is(&["w0"])
    });
    h.run_for(Duration::from_secs(3), "w0 keeps echo", |f| {
        f.views_hold(&NAMES5, "w0")?;
        f.running_is(&["w0"])
    });
    h.expect("w2 yielded; w0 ran echo throughout", |f| {
        if !f.has_since(mark, &Step::Lost("w2".into(), LostReason::Displaced)) {
            return Err("w2 was not displaced after the heal".into());
        }
        let after = f.acquired_since(mark);
        if !after.is_empty() {
            return Err(format!("acquisitions after the heal: {after:?}"));
        }
        let w0_stopped = f
            .log
            .iter()
            .any(|(_, s)| matches!(s, Step::Lost(n, _) | Step::Killed(n) if n == "w0"));
        if w0_stopped {
            return Err("w0 stopped echo at some point".into());
        }
        Ok(())
    });
}

#[test]
fn join_is_retried_until_seed_comes_up() {
    let mut h = Harness::new(4, &NAMES3);
    // w1 and w2 know only w0, which is not up yet: each runs alone and holds echo.
    let seed = [h.addr("w0")];
    h.add_host("w1", &seed);
    h.add_host("w2", &seed);
    let islands = |f: &Fleet| -> Result<(), String> {
        f.runs_alone_holding("w1")?;
        f.runs_alone_holding("w2")?;
        f.running_is(&["w1", "w2"])
    };
    h.run_until(Duration::from_secs(10), "w1 and w2 run alone", islands);
    h.run_for(
        Duration::from_secs(2),
        "w1 and w2 stay apart while the seed is down",
        islands,
    );

    // The seed comes up with an empty join list: only the retries of w1 and w2 (re-announce
    // to the join list while not connected) can connect anyone.
    h.add_host("w0", &[]);
    h.run_until(
        Duration::from_secs(30),
        "the late seed joins everyone and w0 holds echo",
        |f| {
            f.agrees(&NAMES3, "w0")?;
            f.running_is(&["w0"])
        },
    );
    h.expect("both islands' owners yielded", |f| {
        for n in ["w1", "w2"] {
            if !f.has_since(0, &Step::Lost(n.into(), LostReason::Displaced)) {
                return Err(format!("{n} was not displaced"));
            }
        }
        Ok(())
    });
}

/// Five hosts join and run 10 simulated seconds; returns what their applications did and
/// when, plus every node's final member list.
fn join_history(seed: u64) -> (Vec<(Duration, Step)>, Vec<String>) {
    let mut h = Harness::new(seed, &NAMES5);
    let seeds = [h.addr("w0")];
    for name in NAMES5 {
        h.add_host(name, &seeds);
    }
    h.run_for(Duration::from_secs(10), "running", |_| Ok(()));
    let f = h.fleet();
    let members = f
        .snapshots
        .iter()
        .map(|(name, s)| format!("{name}: {:?} {:?}", s.members, s.owners))
        .collect();
    (f.log.clone(), members)
}

#[test]
fn same_seed_same_history() {
    let first = join_history(7);
    assert!(
        first.0.iter().any(|(_, s)| matches!(s, Step::Acquired(_))),
        "nothing was acquired: {:?}",
        first.0
    );
    assert_eq!(first, join_history(7), "one seed, two different runs");
}
