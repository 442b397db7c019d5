//! Liveness: a node is never stuck, and waits no longer than the timing table says.

use super::*;

fn last_acquired(f: &Fleet, i: usize) -> LeaseId {
    f.events
        .iter()
        .rev()
        .find_map(|(_, a, e)| match e {
            Event::Acquired { lease, .. } if *a == addr(i) => Some(*lease),
            _ => None,
        })
        .expect("acquired")
}

#[test]
fn withdraw_then_obtain_keeps_the_step_down_backoff() {
    let mut f = competing_fleet(3);
    assert_eq!(f.holders("echo"), ["w0"]);
    // w0's application drops a live lease: w0 steps down for step_down_backoff (5 s).
    let lease = last_acquired(&f, 0);
    let now = f.now;
    f.node(0).lease_dropped(now, "echo", lease);
    f.flush(addr(0));
    f.run_for(Duration::from_secs(1));
    assert_eq!(f.holders("echo"), ["w2"]);
    // Withdrawing and competing again at once must not cut the back-off short.
    let now = f.now;
    f.node(0).withdraw(now, "echo");
    f.node(0).obtain(now, "echo", 1).unwrap();
    f.flush(addr(0));
    f.run_for(Duration::from_secs(2));
    assert_eq!(
        f.holders("echo"),
        ["w2"],
        "w0 came back inside its back-off"
    );
    f.run_for(Duration::from_secs(4));
    assert_eq!(f.holders("echo"), ["w0"]);
}

#[test]
fn node_that_lost_every_member_before_it_synced_runs_alone() {
    let mut f = Fleet::new();
    f.start(1, 1001, &[1]);
    f.run_for(Duration::from_secs(4));
    assert_eq!(f.node(1).state(), NodeState::Alone);
    // w0 connects to w1, which crashes before w0 could confirm its view.
    f.start(0, 1000, &[1]);
    f.run_for(Duration::from_millis(10));
    assert!(
        f.node(0).membership.foca.iter_members().count() == 1,
        "w0 connected"
    );
    assert!(!f.node(0).is_ready());
    f.crash(1);
    f.run_for(Duration::from_secs(10));
    assert!(f.node(0).is_ready(), "w0 stayed {}", f.node(0).state());
    assert_eq!(f.node(0).state(), NodeState::Alone);
}

#[test]
fn newcomer_is_not_ready_until_every_part_of_a_membership_answer_arrived() {
    let n = 150;
    let mut f = Fleet::new();
    for i in 0..n {
        f.start(i, 1000 + i as u64, &[0]);
    }
    f.run_for(Duration::from_secs(30));
    // Every membership answer to the newcomer loses all but its first datagram for 6 s.
    let newcomer = addr(n);
    let until = f.now + Duration::from_secs(6);
    let parts_lost = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let counter = parts_lost.clone();
    f.lose = Some(Box::new(move |now, _, to, data| {
        let later_part = matches!(
            wire::decode(data),
            Ok(Datagram::Election(Message::MembersPart { part, .. })) if part > 0
        );
        let lose = to == newcomer && now < until && later_part;
        counter.set(counter.get() + usize::from(lose));
        lose
    }));
    f.start(n, 5000, &[0]);
    for _ in 0..1000 {
        f.run_for(Duration::from_millis(10));
        let node = f.node(n);
        if node.is_ready() {
            assert_eq!(
                node.live_members(),
                n,
                "ready knowing {} of {n} members",
                node.live_members()
            );
            break;
        }
    }
    assert!(f.node(n).is_ready(), "never ready");
    assert!(parts_lost.get() > 0, "no part of an answer was lost");
}

#[test]
fn newcomer_becomes_ready_when_a_members_record_can_never_be_had() {
    let mut f = competing_fleet(3);
    // w2's record never reaches the newcomer (as if it did not decode there).
    let record = f.node(2).own_record().encode();
    let newcomer = addr(3);
    f.lose = Some(Box::new(move |_, _, to, data| {
        to == newcomer && data.windows(record.len()).any(|w| w == record.as_slice())
    }));
    f.start(3, 2000, &[0, 1, 2]);
    let now = f.now;
    f.node(3).obtain(now, "echo", 1).unwrap();
    f.flush(addr(3));
    f.run_for(Duration::from_secs(20));
    let node = f.node(3);
    assert_eq!(node.missing_records(), 1, "w2's record arrived after all");
    assert!(node.is_ready(), "w3 stayed {}", node.state());
    assert_eq!(node.stats().ready_escapes, 1);
    assert_eq!(node.state(), NodeState::Active);
}

/// Runs `f` with the core's log lines (level and message) captured.
fn logs_of(f: impl FnOnce()) -> String {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
}

#[test]
fn last_peer_leaving_gracefully_reads_as_a_leave() {
    let logs = logs_of(|| {
        let mut f = competing_fleet(2);
        let now = f.now;
        f.node(1).leave(now);
        f.flush(addr(1));
        f.run_for(Duration::from_secs(5));
        assert_eq!(f.node(0).state(), NodeState::Alone);
    });
    assert!(
        logs.contains("INFO") && logs.contains("the last member left the fleet"),
        "{logs}"
    );
    assert!(!logs.contains("lost every member"), "{logs}");
    assert!(!logs.contains("WARN"), "{logs}");
}

/// Starts `w<i>` with `alone` as its policy.
fn start_alone(f: &mut Fleet, i: usize, boot: u64, seeds: &[usize], alone: Alone) {
    let mut cfg = CoreConfig::new(format!("w{i}"), addr(i), boot);
    cfg.seeds = seeds.iter().map(|s| addr(*s)).collect();
    cfg.rng_seed = (i as u64) << 8 | boot;
    cfg.alone = alone;
    let core = Core::new(cfg, f.now).unwrap();
    f.nodes.insert(addr(i), core);
    f.flush(addr(i));
}

#[test]
fn a_node_that_never_runs_alone_holds_nothing_when_it_reaches_nobody() {
    // Both were given a join list that names no live node (a typo).
    let mut f = Fleet::new();
    start_alone(&mut f, 0, 1000, &[7], Alone::Never);
    start_alone(&mut f, 1, 1001, &[8], Alone::After(Duration::from_secs(3)));
    f.obtain_all(0..2, "echo", 1);
    f.run_for(Duration::from_secs(20));
    assert_eq!(f.node(0).state(), NodeState::Joining);
    assert_eq!(f.node(1).state(), NodeState::Alone);
    assert_eq!(
        f.holders("echo"),
        ["w1"],
        "only the node allowed to run alone holds"
    );
    // Given a seed that runs, it connects and competes as any node does.
    let now = f.now;
    f.node(0).set_seeds(now, vec![addr(1)]);
    f.flush(addr(0));
    f.run_for(Duration::from_secs(5));
    assert_eq!(f.node(0).state(), NodeState::Active);
    assert_eq!(f.holders("echo"), ["w0"], "echo over w0, w1 prefers w0");
}

#[test]
fn a_holder_that_never_runs_alone_gives_its_tickets_up_when_it_loses_every_member() {
    let mut f = Fleet::new();
    for i in 0..2 {
        start_alone(&mut f, i, 1000 + i as u64, &[0, 1], Alone::Never);
    }
    f.run_for(Duration::from_secs(2));
    f.obtain_all(0..2, "echo", 1);
    f.run_for(Duration::from_secs(2));
    assert_eq!(f.holders("echo"), ["w0"]);
    f.sides.insert(addr(1), 1);
    f.run_for(Duration::from_secs(10));
    assert!(f.holders("echo").is_empty(), "{:?}", f.holders("echo"));
    assert!(f.events.iter().any(|(_, a, e)| *a == addr(0)
        && matches!(
            e,
            Event::Lost {
                reason: LostReason::Isolated,
                ..
            }
        )));
    f.sides.clear();
    f.run_for(Duration::from_secs(10));
    assert_eq!(f.holders("echo"), ["w0"]);
}

#[test]
fn alone_parses_from_never_or_a_duration() {
    assert_eq!("never".parse::<Alone>(), Ok(Alone::Never));
    assert_eq!(
        "3s".parse::<Alone>(),
        Ok(Alone::After(Duration::from_secs(3)))
    );
    assert_eq!(
        "500ms".parse::<Alone>(),
        Ok(Alone::After(Duration::from_millis(500)))
    );
    assert_eq!(
        "2m".parse::<Alone>(),
        Ok(Alone::After(Duration::from_secs(120)))
    );
    assert!("3".parse::<Alone>().unwrap_err().contains("unit"));
    assert!("soon".parse::<Alone>().unwrap_err().contains("never"));
}
