//! Whole-fleet tests of the core in virtual time, over a lossless in-memory network.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::SocketAddr;
use std::time::Duration;

use super::*;

mod hostile;
mod liveness;
mod quorum;
mod successor;

/// `(deliver at, sequence, from, to, datagram)`.
type InFlight = (Duration, u64, SocketAddr, SocketAddr, Vec<u8>);

/// Decides whether a datagram `(now, from, to, data)` is lost.
type Lose = Box<dyn FnMut(Duration, SocketAddr, SocketAddr, &[u8]) -> bool>;

struct Fleet {
    now: Duration,
    nodes: BTreeMap<SocketAddr, Core>,
    inflight: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    events: Vec<(Duration, SocketAddr, Event)>,
    latency: Duration,
    auto_drop: bool,
    /// `handle_timeout` calls per node.
    wakeups: BTreeMap<SocketAddr, u64>,
    /// The side of a partition each node is on (none: the network is whole).
    sides: BTreeMap<SocketAddr, u8>,
    /// The wall clock nodes start with (none: boots are not checked against a clock).
    wall_clock: Option<Duration>,
    /// Drops a datagram `(now, from, to, data)` when it returns true.
    lose: Option<Lose>,
    /// The safety mode nodes start with.
    safety: Safety,
}

fn addr(i: usize) -> SocketAddr {
    format!("127.0.0.1:{}", 7000 + i).parse().unwrap()
}

impl Fleet {
    fn new() -> Self {
        Fleet {
            now: Duration::from_secs(1),
            nodes: BTreeMap::new(),
            inflight: BinaryHeap::new(),
            seq: 0,
            events: Vec::new(),
            latency: Duration::from_millis(1),
            auto_drop: true,
            wakeups: BTreeMap::new(),
            sides: BTreeMap::new(),
            lose: None,
            wall_clock: None,
            safety: Safety::Available,
        }
    }

    fn start(&mut self, i: usize, boot: u64, seeds: &[usize]) {
        self.start_named(&format!("w{i}"), i, boot, seeds);
    }

    fn start_named(&mut self, name: &str, i: usize, boot: u64, seeds: &[usize]) {
        let mut cfg = CoreConfig::new(name, addr(i), boot);
        cfg.seeds = seeds.iter().map(|s| addr(*s)).collect();
        cfg.rng_seed = (i as u64) << 8 | boot;
        cfg.wall_clock = self.wall_clock;
        cfg.safety = self.safety;
        let core = Core::new(cfg, self.now).unwrap();
        self.nodes.insert(addr(i), core);
        self.flush(addr(i));
    }

    fn obtain_all(&mut self, nodes: std::ops::Range<usize>, resource: &str, tickets: u16) {
        for i in nodes {
            let now = self.now;
            self.node(i).obtain(now, resource, tickets).unwrap();
            self.flush(addr(i));
        }
    }

    fn crash(&mut self, i: usize) {
        self.nodes.remove(&addr(i));
    }

    fn node(&mut self, i: usize) -> &mut Core {
        self.nodes.get_mut(&addr(i)).unwrap()
    }

    fn flush(&mut self, a: SocketAddr) {
        let Some(core) = self.nodes.get_mut(&a) else {
            return;
        };
        while let Some(t) = core.poll_transmit() {
            self.seq += 1;
            self.inflight.push(Reverse((
                self.now + self.latency,
                self.seq,
                a,
                t.to,
                t.data,
            )));
        }
        let mut lost = Vec::new();
        while let Some(e) = core.poll_event() {
            if let Event::Lost {
                resource, lease, ..
            } = &e
            {
                lost.push((resource.clone(), *lease));
            }
            self.events.push((self.now, a, e));
        }
        // A well-behaved application: stop at once when told.
        for (resource, lease) in lost {
            if self.auto_drop {
                let now = self.now;
                self.nodes
                    .get_mut(&a)
                    .unwrap()
                    .lease_dropped(now, &resource, lease);
                self.flush(a);
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next_timer = self
                .nodes
                .iter()
                .filter_map(|(a, c)| c.poll_timeout().map(|t| (t, *a)))
                .min();
            let next_packet = self.inflight.peek().map(|Reverse(p)| p.0);
            let t = match (next_timer, next_packet) {
                (Some((t, _)), Some(p)) => t.min(p),
                (Some((t, _)), None) => t,
                (None, Some(p)) => p,
                (None, None) => break,
            };
            if t > end {
                break;
            }
            self.now = t;
            if next_packet == Some(t) {
                let Reverse((_, _, from, to, data)) = self.inflight.pop().unwrap();
                if self.sides.get(&from) != self.sides.get(&to) {
                    continue;
                }
                if let Some(lose) = &mut self.lose
                    && lose(t, from, to, &data)
                {
                    continue;
                }
                if let Some(core) = self.nodes.get_mut(&to) {
                    core.handle_datagram(t, from, &data);
                    self.flush(to);
                }
            } else if let Some((_, a)) = next_timer {
                self.nodes.get_mut(&a).unwrap().handle_timeout(t);
                *self.wakeups.entry(a).or_default() += 1;
                self.flush(a);
            }
        }
        self.now = end;
    }

    fn holders(&self, resource: &str) -> Vec<String> {
        self.nodes
            .values()
            .filter(|c| c.own_record().claim(resource).is_some_and(|c| c.held))
            .map(|c| c.name().to_string())
            .collect()
    }
}

/// `n` nodes that joined, all competing for `echo` with one ticket, settled.
fn competing_fleet(n: usize) -> Fleet {
    let mut f = fleet(n);
    f.run_for(Duration::from_secs(2));
    f.obtain_all(0..n, "echo", 1);
    f.run_for(Duration::from_secs(2));
    f
}

fn fleet(n: usize) -> Fleet {
    let mut f = Fleet::new();
    let all: Vec<usize> = (0..n).collect();
    for i in 0..n {
        f.start(i, 1000 + i as u64, &all);
    }
    f
}

#[test]
fn fleet_agrees_on_exactly_tickets_holders() {
    for tickets in [1u16, 2] {
        let mut f = fleet(5);
        f.run_for(Duration::from_secs(2));
        f.obtain_all(0..5, "echo", tickets);
        f.run_for(Duration::from_secs(3));
        let holders = f.holders("echo");
        assert_eq!(holders.len(), tickets as usize, "holders {holders:?}");
        let owners: Vec<_> = f.nodes.values().map(|c| c.owners("echo")).collect();
        assert!(owners.windows(2).all(|w| w[0] == w[1]), "{owners:#?}");
        let mut desired: Vec<String> = owners[0].desired.iter().map(|o| o.name.clone()).collect();
        desired.sort();
        let mut holders = holders;
        holders.sort();
        assert_eq!(holders, desired);
    }
}

#[test]
fn crash_of_holder_moves_ticket_to_next_ranked() {
    let mut f = fleet(5);
    f.run_for(Duration::from_secs(2));
    f.obtain_all(0..5, "echo", 1);
    f.run_for(Duration::from_secs(3));
    let before = f.holders("echo");
    assert_eq!(before, ["w0"]);
    f.crash(0);
    f.run_for(Duration::from_secs(5));
    assert_eq!(f.holders("echo"), ["w2"]);
}

/// w1..w4 (w0 not started) compete for `echo`, settled on w2, the highest of them;
/// `prepare` runs once they compete, before they settle.
fn w1_to_w4_settled_on_w2(prepare: impl FnOnce(&mut Fleet)) -> Fleet {
    let mut f = Fleet::new();
    let all: Vec<usize> = (0..5).collect();
    for i in 1..5 {
        f.start(i, 1000 + i as u64, &all);
    }
    f.run_for(Duration::from_secs(2));
    f.obtain_all(1..5, "echo", 1);
    prepare(&mut f);
    f.run_for(Duration::from_secs(2));
    assert_eq!(f.holders("echo"), ["w2"]);
    f
}

#[test]
fn higher_ranked_join_hands_over_without_two_holders() {
    let mut f = w1_to_w4_settled_on_w2(|_| {});
    let all: Vec<usize> = (0..5).collect();
    f.start(0, 2000, &all);
    let now = f.now;
    f.node(0).obtain(now, "echo", 1).unwrap();
    f.flush(addr(0));
    // w2 is told first and drops at once; never two holders.
    for _ in 0..300 {
        f.run_for(Duration::from_millis(10));
        assert!(
            f.holders("echo").len() <= 1,
            "two holders: {:?}",
            f.holders("echo")
        );
    }
    let lost = f
        .events
        .iter()
        .position(|(_, a, e)| *a == addr(2) && matches!(e, Event::Lost { .. }));
    let acquired = f
        .events
        .iter()
        .position(|(_, a, e)| *a == addr(0) && matches!(e, Event::Acquired { .. }));
    assert!(lost.unwrap() < acquired.unwrap());
    assert_eq!(f.holders("echo"), ["w0"]);
}

#[test]
fn restarted_top_ranked_node_takes_ticket_back_only_once_ready() {
    let mut f = competing_fleet(3);
    assert_eq!(f.holders("echo"), ["w0"]);
    f.crash(0);
    f.run_for(Duration::from_secs(5));
    assert_eq!(f.holders("echo"), ["w2"]);

    let before = f.events.len();
    f.start(0, 5000, &[0, 1, 2]);
    let now = f.now;
    f.node(0).obtain(now, "echo", 1).unwrap();
    f.flush(addr(0));
    let mut ready_seen = false;
    let mut lost_seen = false;
    for _ in 0..3000 {
        f.run_for(Duration::from_millis(1));
        ready_seen |= f.node(0).is_ready();
        let lost = f.events[before..]
            .iter()
            .any(|(_, a, e)| *a == addr(2) && matches!(e, Event::Lost { .. }));
        if lost && !lost_seen {
            lost_seen = true;
            assert!(
                ready_seen,
                "w2 was displaced before the restarted w0 was ready"
            );
        }
        // Never more than one holder, and never none for longer than a handoff round trip.
        assert!(f.holders("echo").len() <= 1);
    }
    assert!(lost_seen);
    assert_eq!(f.holders("echo"), ["w0"]);
    let gap = f
        .events
        .iter()
        .filter(|(_, a, e)| *a == addr(2) && matches!(e, Event::Yielded { .. }))
        .map(|(t, _, _)| *t)
        .next_back()
        .unwrap();
    let back = f
        .events
        .iter()
        .filter(|(_, a, e)| *a == addr(0) && matches!(e, Event::Acquired { .. }))
        .map(|(t, _, _)| *t)
        .next_back()
        .unwrap();
    // The ticket is ownerless only while w2's yield travels to w0 (1 ms), plus at most the
    // probe round trip a node waits after becoming ready before its first acquisition.
    let bound = Timing::lan().probe_rtt + Duration::from_millis(2);
    assert!(back - gap <= bound, "ownerless for {:?}", back - gap);
}

#[test]
fn newer_process_with_the_same_name_supersedes_the_older_one() {
    let mut f = competing_fleet(3);
    assert_eq!(f.holders("echo"), ["w0"]);
    // A second "w0" on another address, started later.
    f.start_named("w0", 3, 9000, &[0, 1, 2]);
    let now = f.now;
    f.node(3).obtain(now, "echo", 1).unwrap();
    f.flush(addr(3));
    f.run_for(Duration::from_secs(3));
    assert_eq!(f.node(0).state(), NodeState::Superseded);
    let old = |e: &Event| {
        matches!(
            e,
            Event::Lost {
                reason: LostReason::Superseded,
                ..
            }
        )
    };
    assert!(f.events.iter().any(|(_, a, e)| *a == addr(0) && old(e)));
    assert!(
        f.events.iter().any(|(_, a, e)| *a == addr(3)
            && matches!(e, Event::SupersedesOther { old } if *old == addr(0)))
    );
    // The newer w0 holds echo, and the older one no longer competes.
    let holders: Vec<SocketAddr> = f
        .nodes
        .iter()
        .filter(|(_, c)| c.own_record().claim("echo").is_some_and(|c| c.held))
        .map(|(a, _)| *a)
        .collect();
    assert_eq!(holders, [addr(3)]);
    assert!(f.node(0).obtain(now, "other", 1).is_err());
}

#[test]
fn newcomer_learns_a_large_stable_fleet_from_one_membership_answer() {
    // More members than one foca feed carries: gossip reports only changes, so without
    // the membership answer a newcomer would learn the rest only as they probe it.
    let n = 150;
    let mut f = Fleet::new();
    for i in 0..n {
        f.start(i, 1000 + i as u64, &[0]);
    }
    f.run_for(Duration::from_secs(30));
    for i in 0..n {
        assert_eq!(f.node(i).live_members(), n - 1, "w{i} before the newcomer");
    }
    f.start(n, 5000, &[0]);
    f.run_for(Duration::from_secs(1));
    let newcomer = f.node(n);
    assert_eq!(
        newcomer.live_members(),
        n,
        "one second after joining, the newcomer knows {} of {n} members",
        newcomer.live_members()
    );
}

#[test]
fn settled_node_does_not_wake_every_gossip_interval() {
    let mut f = competing_fleet(3);
    f.run_for(Duration::from_secs(5));
    f.wakeups.clear();
    let span = Duration::from_secs(10);
    f.run_for(span);
    let gossip_ticks = (span.as_millis() / Timing::lan().gossip_interval.as_millis()) as u64;
    for i in 0..3 {
        let wakes = f.wakeups.get(&addr(i)).copied().unwrap_or(0);
        assert!(
            wakes < gossip_ticks,
            "w{i} woke {wakes} times in {span:?}, at least once per gossip interval"
        );
    }
    assert_eq!(f.holders("echo").len(), 1);
}

#[test]
fn members_back_from_a_partition_are_not_sent_again() {
    let mut f = fleet(4);
    f.run_for(Duration::from_secs(5));
    let versions =
        |f: &mut Fleet| -> Vec<u64> { (0..4).map(|i| f.node(i).own_record().version).collect() };
    let before = versions(&mut f);
    // Halves: each declares the other half down.
    for i in 0..4 {
        f.sides.insert(addr(i), u8::from(i >= 2));
    }
    f.run_for(Duration::from_secs(10));
    assert!(
        f.node(0).view.members.len() == 1 && f.node(2).view.members.len() == 1,
        "the halves did not split"
    );
    f.sides.clear();
    f.run_for(Duration::from_secs(10));
    // Nobody re-published its record, yet every view holds every member's record again.
    assert_eq!(
        versions(&mut f),
        before,
        "records were re-published after the heal"
    );
    let fingerprints: Vec<u64> = (0..4).map(|i| f.node(i).view_fingerprint()).collect();
    assert!(
        fingerprints.windows(2).all(|w| w[0] == w[1]),
        "views differ"
    );
    for i in 0..4 {
        assert_eq!(f.node(i).view.members.len(), 3, "w{i} misses members");
        assert!(f.node(i).view.missing.is_empty(), "w{i} misses records");
    }
}

/// A lost lease whose job the crate runs is not yielded after `handoff_timeout` while the
/// job still runs, and is yielded once dropped.
#[test]
fn lease_kept_until_dropped_is_not_forced_out_after_handoff_timeout() {
    let mut f = w1_to_w4_settled_on_w2(|f| f.node(2).keep_until_dropped("echo"));
    let all: Vec<usize> = (0..5).collect();
    // The job does not stop: the application never drops the lease.
    f.auto_drop = false;
    f.start(0, 2000, &all);
    let now = f.now;
    f.node(0).obtain(now, "echo", 1).unwrap();
    f.flush(addr(0));
    // Past the handoff timeout, and short of the others' patience with a holder that does
    // not yield (one anti-entropy period more), w2 still holds and nobody else does.
    let handoff = f.node(2).config().handoff_timeout;
    let patience = f.node(2).config().timing.anti_entropy_interval;
    f.run_for(handoff + patience / 2);
    assert!(
        f.events
            .iter()
            .any(|(_, a, e)| *a == addr(2) && matches!(e, Event::Lost { .. })),
        "w2 was told to stop"
    );
    assert_eq!(f.holders("echo"), ["w2"], "w2 yielded while its job ran");
    let lease = f
        .events
        .iter()
        .rev()
        .find_map(|(_, a, e)| match e {
            Event::Lost { lease, .. } if *a == addr(2) => Some(*lease),
            _ => None,
        })
        .unwrap();
    let now = f.now;
    f.node(2).lease_dropped(now, "echo", lease);
    f.flush(addr(2));
    f.run_for(Duration::from_secs(2));
    assert_eq!(f.holders("echo"), ["w0"]);
}

/// Every acquisition's fencing term, in order.
fn acquired_terms(f: &Fleet) -> Vec<(String, u64)> {
    f.events
        .iter()
        .filter_map(|(_, a, e)| match e {
            Event::Acquired { term, .. } => Some((format!("w{}", a.port() - 7000), *term)),
            _ => None,
        })
        .collect()
}

#[test]
fn fencing_terms_rise_from_holder_to_holder() {
    let mut f = competing_fleet(3);
    // At start-up each node acquired before it heard of the others (all with term 1);
    // w0, ranked first, kept it.
    assert_eq!(f.holders("echo"), ["w0"]);
    let settled = acquired_terms(&f).len();
    // A failover: w2 had w0's record, term 1, before w0 crashed.
    f.crash(0);
    f.run_for(Duration::from_secs(5));
    // A take-back by a new process, which knows nothing but what the records say.
    f.start(0, 5000, &[0, 1, 2]);
    f.obtain_all(0..1, "echo", 1);
    f.run_for(Duration::from_secs(5));
    // A handover: w0 withdraws, w2 takes over.
    let now = f.now;
    f.node(0).withdraw(now, "echo");
    f.flush(addr(0));
    f.run_for(Duration::from_secs(2));
    assert_eq!(
        acquired_terms(&f)[settled..],
        [("w2".into(), 2), ("w0".into(), 3), ("w2".into(), 4)]
    );
    // Every record names the highest term it knows: a newcomer starts above it.
    assert_eq!(f.node(1).view.max_term("echo"), 4);
}
