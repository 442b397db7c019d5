//! The next candidate in rank probing the holders, and a cut-off node's return.

use super::*;

/// The holder of `echo` and its successor (the node that takes the ticket over).
fn holder_and_successor(f: &mut Fleet, n: usize) -> (usize, usize) {
    let holder = (0..n)
        .find(|i| {
            f.node(*i)
                .own_record()
                .claim("echo")
                .is_some_and(|c| c.held)
        })
        .expect("a holder");
    let other = (holder + 1) % n;
    let successor_addr = f
        .node(other)
        .view
        .successor("echo", 1)
        .expect("a successor");
    let successor = (0..n).find(|i| addr(*i) == successor_addr).unwrap();
    (holder, successor)
}

fn acquired_after(f: &Fleet, i: usize, after: Duration) -> Option<Duration> {
    f.events.iter().find_map(|(t, a, e)| {
        (*a == addr(i) && *t > after && matches!(e, Event::Acquired { .. })).then_some(*t)
    })
}

fn downs_of(f: &Fleet, i: usize, after: Duration) -> usize {
    f.events
        .iter()
        .filter(|(t, _, e)| {
            *t > after && matches!(e, Event::MemberDown(id) if id.addr() == addr(i))
        })
        .count()
}

#[test]
fn the_successor_probes_the_holder_and_suspects_it_within_one_probe_period_of_a_crash() {
    let n = 20;
    let mut f = competing_fleet(n);
    let (holder, successor) = holder_and_successor(&mut f, n);
    assert_eq!(f.node(successor).successor.targets(), [addr(holder)]);
    // Nobody else probes it.
    for i in (0..n).filter(|i| *i != successor) {
        assert!(f.node(i).successor.targets().is_empty(), "w{i} probes too");
    }
    let crash = f.now;
    f.crash(holder);
    f.run_for(Duration::from_secs(3));
    let took = acquired_after(&f, successor, crash).expect("the successor acquired") - crash;
    let timing = Timing::lan();
    // At most one probe period until the probe that goes unanswered, one until the
    // suspicion, then the suspicion time.
    let bound = 2 * timing.probe_period + timing.suspect_to_down + Duration::from_millis(20);
    assert!(took <= bound, "took {took:?}, bound {bound:?}");
    assert_eq!(f.node(successor).stats().successor_suspicions, 1);
}

#[test]
fn a_holder_cut_off_briefly_refutes_the_successors_suspicion() {
    let n = 5;
    let mut f = competing_fleet(n);
    let (holder, successor) = holder_and_successor(&mut f, n);
    let start = f.now;
    let cut = addr(holder);
    // 700 ms without a datagram to or from the holder: long enough for the successor to
    // suspect it, short enough to refute the suspicion.
    f.lose = Some(Box::new(move |t, from, to, _| {
        (from == cut || to == cut) && t < start + Duration::from_millis(700)
    }));
    f.run_for(Duration::from_secs(5));
    assert!(f.node(successor).stats().successor_suspicions >= 1);
    assert_eq!(
        downs_of(&f, holder, start),
        0,
        "the holder was declared down"
    );
    assert_eq!(f.holders("echo"), [format!("w{holder}")]);
}

#[test]
fn a_holder_that_never_answers_probes_is_left_to_foca() {
    // Holders of a build without successor probes ignore them.
    let n = 5;
    let mut f = fleet(n);
    f.lose = Some(Box::new(|_, _, _, data| {
        matches!(
            crate::wire::decode(data),
            Ok(crate::wire::Datagram::Election(
                crate::wire::Message::HolderProbe { .. }
            ))
        )
    }));
    f.run_for(Duration::from_secs(2));
    f.obtain_all(0..n, "echo", 1);
    f.run_for(Duration::from_secs(2));
    let (holder, successor) = holder_and_successor(&mut f, n);
    assert_eq!(f.node(successor).successor.targets(), [addr(holder)]);
    let start = f.now;
    f.run_for(Duration::from_secs(10));
    assert_eq!(f.node(successor).stats().successor_suspicions, 0);
    assert_eq!(downs_of(&f, holder, start), 0);
    assert_eq!(f.holders("echo"), [format!("w{holder}")]);
    // A crash is still found, by foca's own probes.
    let crash = f.now;
    f.crash(holder);
    f.run_for(Duration::from_secs(10));
    assert!(acquired_after(&f, successor, crash).is_some());
    assert_eq!(f.node(successor).stats().successor_suspicions, 0);
}

#[test]
fn a_node_cut_off_alone_comes_back_without_making_the_fleet_rejoin() {
    let n = 20;
    let mut f = fleet(n);
    f.run_for(Duration::from_secs(5));
    // w0 alone for 3 s: it declares some members down itself, the fleet declares it down.
    f.sides.insert(addr(0), 1);
    f.run_for(Duration::from_secs(3));
    let own_downs = f
        .node(0)
        .membership
        .downs
        .iter()
        .filter(|(_, _, own)| *own)
        .count();
    assert!(own_downs >= 3, "w0 declared {own_downs} members down");
    let heal = f.now;
    f.sides.clear();
    f.run_for(Duration::from_secs(10));
    // Nobody but w0 had to rejoin: its downs were neither gossiped nor answered with
    // `TurnUndead`.
    for i in 1..n {
        assert_eq!(f.node(i).id.bump(), 0, "w{i} renewed its identity");
        let downs = f
            .events
            .iter()
            .filter(|(t, a, e)| {
                *t > heal
                    && *a != addr(0)
                    && matches!(e, Event::MemberDown(id) if id.addr() == addr(i))
            })
            .count();
        assert_eq!(downs, 0, "w{i} was declared down after the heal");
    }
    assert!(f.node(0).stats().rebuilds >= 1);
    for i in 0..n {
        assert_eq!(f.node(i).view.members.len(), n - 1, "w{i} misses members");
    }
}

#[test]
fn a_probe_suspecting_an_incarnation_other_than_the_current_one_moves_nothing() {
    let n = 3;
    let mut f = competing_fleet(n);
    let (holder, successor) = holder_and_successor(&mut f, n);
    let target = *f.node(holder).membership.foca.identity();
    for suspected in [u16::MAX - 1, u16::MAX, 7] {
        let probe = crate::wire::encode(&crate::wire::Message::HolderProbe {
            target,
            suspected: Some(suspected),
        });
        let now = f.now;
        f.node(holder).handle_datagram(now, addr(successor), &probe);
        f.flush(addr(holder));
        f.run_for(Duration::from_millis(300));
    }
    assert_eq!(
        f.node(holder).id.bump(),
        0,
        "the holder renewed its identity"
    );
    assert_eq!(f.node(holder).membership.own_incarnation, 0);
    assert_eq!(f.holders("echo"), [format!("w{holder}")]);
}

#[test]
fn a_node_that_declared_crashed_holders_down_does_not_rebuild_when_they_restart() {
    let n = 10;
    let mut f = fleet(n);
    f.run_for(Duration::from_secs(2));
    for r in 0..30 {
        f.obtain_all(0..n, &format!("job-{r}"), 1);
    }
    f.run_for(Duration::from_secs(3));
    // A node that probes three holders as their successor; the three crash together (a
    // rack), it declares them down itself, and they come back with new boots.
    let (watcher, holders) = (0..n)
        .find_map(|i| {
            let targets = f.node(i).successor.targets();
            (targets.len() >= 3).then(|| (i, targets[..3].to_vec()))
        })
        .expect("a node probing three holders");
    let crashed: Vec<usize> = (0..n).filter(|i| holders.contains(&addr(*i))).collect();
    for i in &crashed {
        f.crash(*i);
    }
    f.run_for(Duration::from_secs(5));
    assert!(f.node(watcher).stats().successor_suspicions >= 3);
    let all: Vec<usize> = (0..n).collect();
    for i in &crashed {
        f.start(*i, 2000 + *i as u64, &all);
    }
    f.run_for(Duration::from_secs(5));
    for i in (0..n).filter(|i| !crashed.contains(i)) {
        assert_eq!(f.node(i).stats().rebuilds, 0, "w{i} rebuilt its membership");
        assert_eq!(f.node(i).view.members.len(), n - 1, "w{i} misses members");
    }
}
