//! Quorum mode: a minority holder gives up before the majority takes over, the majority
//! re-acquires, a heal converges, and a node with a bad link steals nothing.

use super::*;

/// `n` nodes in quorum mode with `members`, all competing for `echo` with one ticket,
/// run until every node promises (the start wait) and one holds.
fn quorum_fleet(n: usize, members: u16) -> Fleet {
    let mut f = Fleet::new();
    f.safety = Safety::Quorum { members };
    let all: Vec<usize> = (0..n).collect();
    for i in 0..n {
        f.start(i, 1000 + i as u64, &all);
    }
    f.run_for(Duration::from_secs(2));
    f.obtain_all(0..n, "echo", 1);
    let wait = f.node(0).cfg.quorum_margins().start_wait;
    f.run_for(wait + Duration::from_secs(1));
    f
}

/// `(from, until)` of every tenure of `resource`, from the events: from the acquisition
/// until the loss (the harness's application drops at once) or `end`.
fn tenures(f: &Fleet, resource: &str) -> Vec<(SocketAddr, Duration, Duration)> {
    let mut open: BTreeMap<SocketAddr, Duration> = BTreeMap::new();
    let mut done = Vec::new();
    for (t, a, e) in &f.events {
        match e {
            Event::Acquired { resource: r, .. } if r == resource => {
                open.insert(*a, *t);
            }
            Event::Lost { resource: r, .. } | Event::Yielded { resource: r, .. }
                if r == resource =>
            {
                if let Some(from) = open.remove(a) {
                    done.push((*a, from, *t));
                }
            }
            _ => {}
        }
    }
    done.extend(open.into_iter().map(|(a, from)| (a, from, f.now)));
    done.sort_by_key(|(_, from, _)| *from);
    done
}

/// No two tenures of `resource` overlap in time.
fn assert_one_at_a_time(f: &Fleet, resource: &str) {
    let t = tenures(f, resource);
    for pair in t.windows(2) {
        assert!(
            pair[1].1 > pair[0].2,
            "two holders of {resource} at once: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}

fn losses(f: &Fleet, node: usize) -> Vec<(Duration, LostReason)> {
    f.events
        .iter()
        .filter(|(_, a, _)| *a == addr(node))
        .filter_map(|(t, _, e)| match e {
            Event::Lost { reason, .. } => Some((*t, *reason)),
            _ => None,
        })
        .collect()
}

fn acquisitions(f: &Fleet, node: usize) -> Vec<Duration> {
    f.events
        .iter()
        .filter(|(_, a, e)| *a == addr(node) && matches!(e, Event::Acquired { .. }))
        .map(|(t, _, _)| *t)
        .collect()
}

#[test]
fn a_quorum_fleet_holds_one_ticket_once_nodes_promise() {
    let mut f = Fleet::new();
    f.safety = Safety::Quorum { members: 3 };
    for i in 0..3 {
        f.start(i, 1000 + i as u64, &[0, 1, 2]);
    }
    f.run_for(Duration::from_secs(2));
    f.obtain_all(0..3, "echo", 1);
    // Nobody promises before its start wait: a previous process's promises may stand.
    f.run_for(Duration::from_secs(3));
    assert!(f.holders("echo").is_empty(), "{:?}", f.holders("echo"));
    let wait = f.node(0).cfg.quorum_margins().start_wait;
    f.run_for(wait);
    assert_eq!(f.holders("echo"), ["w0"]);
    assert_eq!(acquisitions(&f, 0).len(), 1);
    // Renewals keep it: nothing changes over a quiet minute.
    f.run_for(Duration::from_secs(60));
    assert_eq!(f.holders("echo"), ["w0"]);
    assert!(losses(&f, 0).is_empty());
    assert_eq!(f.node(0).stats().fences, 0);
}

#[test]
fn a_minority_owner_gives_up_before_the_majority_takes_over() {
    let mut f = quorum_fleet(3, 3);
    assert_eq!(f.holders("echo"), ["w0"]);
    let cut = f.now;
    f.sides.insert(addr(0), 1);
    f.run_for(Duration::from_secs(20));
    let lost = losses(&f, 0);
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(lost[0].1, LostReason::NoQuorum);
    let margins = f.node(1).cfg.quorum_margins();
    // It gave up within the fencing window of its last renewal.
    assert!(lost[0].0 <= cut + margins.fence_after, "{lost:?}");
    // The majority re-acquired: after the minority holder had stopped, and within the
    // promise's length of the cut.
    let taken = acquisitions(&f, 2);
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert!(taken[0] > lost[0].0);
    assert!(taken[0] <= cut + margins.promise_for + margins.renew_every * 2);
    assert_one_at_a_time(&f, "echo");
    assert_eq!(f.node(0).state(), NodeState::NoQuorum);
}

#[test]
fn the_majority_reacquires_after_the_holder_crashes() {
    let mut f = quorum_fleet(5, 5);
    assert_eq!(f.holders("echo"), ["w0"]);
    let crash = f.now;
    f.crash(0);
    f.run_for(Duration::from_secs(15));
    assert_eq!(f.holders("echo"), ["w2"]);
    let margins = f.node(1).cfg.quorum_margins();
    let taken = acquisitions(&f, 2);
    assert_eq!(taken.len(), 1);
    // Not before the crashed holder's promises ran out, and soon after.
    let failover = taken[0] - crash;
    assert!(
        failover >= margins.promise_for - margins.renew_every
            && failover <= margins.promise_for + margins.renew_every * 2,
        "{failover:?} with promises of {:?}",
        margins.promise_for
    );
}

#[test]
fn a_heal_converges_on_one_holder_and_terms_rise() {
    let mut f = quorum_fleet(5, 5);
    assert_eq!(f.holders("echo"), ["w0"]);
    // w0 and w1 (a minority) apart from w2, w3, w4.
    f.sides.insert(addr(0), 1);
    f.sides.insert(addr(1), 1);
    f.run_for(Duration::from_secs(20));
    assert_eq!(f.holders("echo"), ["w2"]);
    assert_eq!(f.node(0).state(), NodeState::NoQuorum);
    f.sides.clear();
    f.run_for(Duration::from_secs(30));
    // w0, first in rank, takes it back once w2 handed it over.
    assert_eq!(f.holders("echo"), ["w0"]);
    for i in 0..5 {
        assert_eq!(f.node(i).state(), NodeState::Active, "w{i}");
    }
    assert_one_at_a_time(&f, "echo");
    let terms: Vec<u64> = f
        .events
        .iter()
        .filter_map(|(_, _, e)| match e {
            Event::Acquired { term, .. } => Some(*term),
            _ => None,
        })
        .collect();
    assert!(terms.windows(2).all(|w| w[0] < w[1]), "{terms:?}");
    assert_eq!(terms.len(), 3, "{terms:?}");
}

#[test]
fn a_graceful_handover_takes_no_wait_for_promises() {
    let mut f = quorum_fleet(3, 3);
    assert_eq!(f.holders("echo"), ["w0"]);
    let now = f.now;
    f.node(0).withdraw(now, "echo");
    f.flush(addr(0));
    f.run_for(Duration::from_secs(1));
    assert_eq!(f.holders("echo"), ["w2"]);
    let taken = acquisitions(&f, 2);
    assert!(
        taken[0] - now < Duration::from_millis(300),
        "{:?}",
        taken[0] - now
    );
    assert_one_at_a_time(&f, "echo");
}

#[test]
fn a_node_whose_outgoing_link_fails_steals_nothing() {
    let mut f = quorum_fleet(3, 3);
    assert_eq!(f.holders("echo"), ["w0"]);
    // w1 hears everyone, nobody hears it, for 30 s: the others declare it down, it
    // declares nobody down.
    let until = f.now + Duration::from_secs(30);
    f.lose = Some(Box::new(move |t, from, _, _| from == addr(1) && t < until));
    f.run_for(Duration::from_secs(40));
    assert!(acquisitions(&f, 1).is_empty());
    assert_eq!(f.holders("echo"), ["w0"]);
    assert!(losses(&f, 0).is_empty(), "{:?}", losses(&f, 0));
    // And a flaky link (half its packets lost) neither.
    let lossy = f.now + Duration::from_secs(30);
    let mut n = 0u64;
    f.lose = Some(Box::new(move |t, from, to, _| {
        n += 1;
        (from == addr(1) || to == addr(1)) && t < lossy && n.is_multiple_of(2)
    }));
    f.run_for(Duration::from_secs(40));
    assert!(acquisitions(&f, 1).is_empty());
    assert_eq!(f.holders("echo"), ["w0"]);
    assert_one_at_a_time(&f, "echo");
}

#[test]
fn more_live_members_than_the_quorum_hold_nothing() {
    let mut f = quorum_fleet(4, 3);
    assert!(f.holders("echo").is_empty(), "{:?}", f.holders("echo"));
    assert_eq!(f.node(0).state(), NodeState::NoQuorum);
    // One leaves: three of three, a majority, and one holder.
    let now = f.now;
    f.node(3).leave(now);
    f.flush(addr(3));
    f.run_for(Duration::from_secs(5));
    assert_eq!(f.holders("echo"), ["w0"]);
}

#[test]
fn two_tickets_take_two_slots() {
    let mut f = Fleet::new();
    f.safety = Safety::Quorum { members: 5 };
    let all: Vec<usize> = (0..5).collect();
    for i in 0..5 {
        f.start(i, 1000 + i as u64, &all);
    }
    f.run_for(Duration::from_secs(2));
    f.obtain_all(0..5, "echo", 2);
    let wait = f.node(0).cfg.quorum_margins().start_wait;
    f.run_for(wait + Duration::from_secs(2));
    let mut holders = f.holders("echo");
    holders.sort();
    let mut desired: Vec<String> = f
        .node(0)
        .owners("echo")
        .desired
        .iter()
        .map(|o| o.name.clone())
        .collect();
    desired.sort();
    assert_eq!(holders, desired);
}

#[test]
fn zero_members_is_refused() {
    let mut cfg = CoreConfig::new("w0", addr(0), 1);
    cfg.safety = Safety::Quorum { members: 0 };
    assert_eq!(
        Core::new(cfg, Duration::ZERO).unwrap_err(),
        ConfigError::QuorumMembers
    );
}

#[test]
fn restarted_acceptors_renew_a_standing_tenure() {
    let mut f = quorum_fleet(5, 5);
    let holder: usize = f.holders("echo")[0][1..].parse().unwrap();
    let others: Vec<usize> = (0..5).filter(|&i| i != holder).collect();
    let wait = f.node(0).cfg.quorum_margins().start_wait;
    // Three of the four others restart, one after the other, each a new process that
    // knows nothing of the promise it made but the holder's record.
    for (k, &v) in others[..3].iter().enumerate() {
        let now = f.now;
        f.node(v).leave(now);
        f.flush(addr(v));
        f.run_for(Duration::from_millis(500));
        f.start(v, 5000 + k as u64, &[0, 1, 2]);
        f.obtain_all(v..v + 1, "echo", 1);
        f.run_for(wait + Duration::from_secs(1));
    }
    assert!(losses(&f, holder).is_empty(), "{:?}", losses(&f, holder));
    assert_eq!(acquisitions(&f, holder).len(), 1);
}

#[test]
fn a_late_or_stale_release_does_not_end_a_standing_promise() {
    let mut f = quorum_fleet(3, 3);
    let holder: usize = f.holders("echo")[0][1..].parse().unwrap();
    let acceptor = (holder + 1) % 3;
    let now = f.now;
    let (to, term) = f.node(acceptor).promised_to(now, "echo", 0).unwrap();
    assert_eq!(to, addr(holder));
    let boot = f.node(holder).id().boot();
    let release = |term, round| {
        crate::wire::encode(&Message::Unpromise {
            resource: "echo".into(),
            slot: 0,
            boot,
            term,
            round,
        })
    };
    // The release of a failed round long gone (round 0 acquired; renewals came since), of
    // another tenure, and of another process at the holder's address: none ends it.
    let other_process = crate::wire::encode(&Message::Unpromise {
        resource: "echo".into(),
        slot: 0,
        boot: boot + 1,
        term,
        round: None,
    });
    for stale in [
        release(term, Some(0)),
        release(term + 1, None),
        other_process,
    ] {
        f.node(acceptor).handle_datagram(now, addr(holder), &stale);
    }
    assert_eq!(
        f.node(acceptor).promised_to(now, "echo", 0),
        Some((addr(holder), term))
    );
    // The tenure's own release does.
    f.node(acceptor)
        .handle_datagram(now, addr(holder), &release(term, None));
    assert_eq!(f.node(acceptor).promised_to(now, "echo", 0), None);
}

#[test]
fn a_promise_for_an_absurd_term_is_dropped_and_counted() {
    let mut f = quorum_fleet(3, 3);
    let now = f.now;
    let boot = f.node(2).id().boot();
    let absurd = crate::wire::encode(&Message::Promise {
        resource: "echo".into(),
        slot: 0,
        round: 7,
        term: u64::MAX,
        boot,
        renew: false,
    });
    let before = f.node(0).stats().dropped.get(&DropReason::Invalid).copied();
    f.node(0).handle_datagram(now, addr(2), &absurd);
    let after = f.node(0).stats().dropped.get(&DropReason::Invalid).copied();
    assert_eq!(after.unwrap_or(0), before.unwrap_or(0) + 1);
    assert!(f.node(0).poll_transmit().is_none(), "it answered");
}
