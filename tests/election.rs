//! The election end to end, over real UDP on 127.0.0.1.

mod common;

use std::time::Duration;

use common::*;
use gossip_election::{Error, LostReason, Node, NodeState};

/// `echo` ranks w0, w2, w4, w1, w3 (see the placement vectors).
const NAMES: [&str; 5] = ["w0", "w1", "w2", "w3", "w4"];

async fn fleet_with_workers(
    tickets: u16,
    log: &Log,
) -> (Vec<Node>, Vec<tokio::task::JoinHandle<()>>) {
    let addrs: Vec<_> = (0..5).map(|_| free_addr()).collect();
    let nodes = start_fleet(&NAMES, &addrs).await;
    let mut workers = Vec::new();
    for node in &nodes {
        let candidacy = node.obtain("echo", tickets).await.unwrap();
        workers.push(run_worker(node.name(), candidacy, log));
    }
    (nodes, workers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_reach_exactly_tickets_holders_and_agree() {
    for (tickets, expected) in [(1u16, vec!["w0"]), (2, vec!["w0", "w2"])] {
        let log = Log::default();
        let (nodes, _workers) = fleet_with_workers(tickets, &log).await;
        let refs: Vec<&Node> = nodes.iter().collect();
        expect_owners(&refs, "echo", &expected).await;
        log.wait_for("applications to match the owners", |l| {
            l.holders() == expected
        })
        .await;
        for node in &nodes {
            node.leave().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_of_holder_moves_ticket_to_next_ranked() {
    let log = Log::default();
    let (nodes, _workers) = fleet_with_workers(1, &log).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    expect_owners(&refs, "echo", &["w0"]).await;
    nodes[0].crash().await;
    let survivors: Vec<&Node> = nodes[1..].iter().collect();
    expect_owners(&survivors, "echo", &["w2"]).await;
    log.wait_for("w2 to run echo", |l| l.holders() == ["w2"])
        .await;
    for node in &nodes[1..] {
        node.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdraw_and_drop_of_candidacy_hand_over() {
    let addrs: Vec<_> = (0..3).map(|_| free_addr()).collect();
    let nodes = start_fleet(&NAMES[..3], &addrs).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    // echo over w0..w2 ranks w0, w2, w1.
    let mut candidacies = obtain_all(&nodes, "echo", 1).await;
    let lease = candidacies[0].acquired().await.unwrap();
    expect_owners(&refs, "echo", &["w0"]).await;

    // withdraw(): the lease is told lost at once, and the ticket moves once it is dropped.
    let w0 = candidacies.remove(0);
    let withdraw = tokio::spawn(w0.withdraw());
    assert_eq!(lease.lost().await, LostReason::Withdrawn);
    drop(lease);
    withdraw.await.unwrap();
    let lease = tokio::time::timeout(PATIENCE, candidacies[1].acquired())
        .await
        .expect("w2 takes over")
        .unwrap();
    expect_owners(&refs, "echo", &["w2"]).await;

    // Dropping the Candidacy releases too.
    let w2 = candidacies.remove(1);
    drop(w2);
    assert_eq!(lease.lost().await, LostReason::Withdrawn);
    drop(lease);
    let _lease = tokio::time::timeout(PATIENCE, candidacies[0].acquired())
        .await
        .expect("w1 takes over")
        .unwrap();
    expect_owners(&refs, "echo", &["w1"]).await;
    for node in &nodes {
        node.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_ranked_join_makes_holder_lose_first_and_never_two_holders() {
    let log = Log::default();
    let addrs: Vec<_> = (0..5).map(|_| free_addr()).collect();
    let late = start_fleet(&NAMES[1..], &addrs[1..]).await;
    for node in &late {
        let candidacy = node.obtain("echo", 1).await.unwrap();
        run_worker(node.name(), candidacy, &log);
    }
    let refs: Vec<&Node> = late.iter().collect();
    expect_owners(&refs, "echo", &["w2"]).await;

    let w0 = fleet_member("w0", &addrs, 0).start().await.unwrap();
    let candidacy = w0.obtain("echo", 1).await.unwrap();
    run_worker("w0", candidacy, &log);
    let mut all = refs.clone();
    all.push(&w0);
    expect_owners(&all, "echo", &["w0"]).await;
    log.wait_for("w0 to run echo", |l| l.holders() == ["w0"])
        .await;

    let steps = log.steps();
    let lost = steps
        .iter()
        .position(|s| *s == Step::Lost("w2".into(), LostReason::Displaced))
        .expect("w2 was told it lost echo");
    let acquired = steps
        .iter()
        .position(|s| *s == Step::Acquired("w0".into()))
        .expect("w0 acquired");
    assert!(lost < acquired, "{steps:?}");
    assert_eq!(log.max_holders(), 1, "{steps:?}");
    for node in all {
        node.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_top_ranked_node_takes_its_ticket_back() {
    let log = Log::default();
    let addrs: Vec<_> = (0..3).map(|_| free_addr()).collect();
    let nodes = start_fleet(&NAMES[..3], &addrs).await;
    for node in &nodes {
        let candidacy = node.obtain("echo", 1).await.unwrap();
        run_worker(node.name(), candidacy, &log);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    expect_owners(&refs, "echo", &["w0"]).await;
    nodes[0].crash().await;
    let survivors: Vec<&Node> = nodes[1..].iter().collect();
    expect_owners(&survivors, "echo", &["w2"]).await;
    log.wait_for("w2 to run echo", |l| l.holders() == ["w2"])
        .await;
    let before = log.steps().len();

    // Same name, same address, a newer boot.
    let w0 = fleet_member("w0", &addrs, 0)
        .boot(nodes[0].boot() + 1)
        .start()
        .await
        .unwrap();
    let candidacy = w0.obtain("echo", 1).await.unwrap();
    run_worker("w0", candidacy, &log);
    let mut all = survivors.clone();
    all.push(&w0);
    expect_owners(&all, "echo", &["w0"]).await;
    log.wait_for("w0 to run echo", |l| l.holders() == ["w0"])
        .await;
    let steps = log.steps()[before..].to_vec();
    // w2 ran echo until w0 took it back: told first, then w0 acquired; never two at once.
    // (That w2 is displaced only once w0 is ready is checked step by step in the core's
    // virtual-time tests.)
    let lost = steps
        .iter()
        .position(|s| *s == Step::Lost("w2".into(), LostReason::Displaced))
        .expect("w2 lost echo");
    let back = steps
        .iter()
        .rposition(|s| *s == Step::Acquired("w0".into()))
        .unwrap();
    assert!(lost < back, "{steps:?}");
    assert!(
        steps
            .iter()
            .filter(|s| matches!(s, Step::Acquired(_)))
            .count()
            == 1,
        "{steps:?}"
    );
    for node in all {
        node.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_that_starts_alone_yields_when_it_meets_the_fleet() {
    let log = Log::default();
    let addrs: Vec<_> = (0..4).map(|_| free_addr()).collect();
    // w2 starts first: it reaches nobody, runs alone and takes echo.
    let w2 = fleet_member("w2", &addrs, 2)
        .sync_timeout(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let candidacy = w2.obtain("echo", 1).await.unwrap();
    run_worker("w2", candidacy, &log);
    log.wait_for("w2 to run echo alone", |l| l.holders() == ["w2"])
        .await;
    assert_eq!(w2.state(), NodeState::Alone);

    // The rest of the fleet (w0 ranks first) comes up.
    let mut nodes = vec![w2];
    for i in [0, 1, 3] {
        let node = fleet_member(NAMES[i], &addrs, i).start().await.unwrap();
        let candidacy = node.obtain("echo", 1).await.unwrap();
        run_worker(NAMES[i], candidacy, &log);
        nodes.push(node);
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    expect_owners(&refs, "echo", &["w0"]).await;
    log.wait_for("w0 to run echo", |l| l.holders() == ["w0"])
        .await;
    assert!(
        log.steps()
            .contains(&Step::Lost("w2".into(), LostReason::Displaced))
    );
    assert_eq!(nodes[0].state(), NodeState::Active);
    for node in &nodes {
        node.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_tickets_are_reported() {
    let addrs: Vec<_> = (0..4).map(|_| free_addr()).collect();
    let nodes = start_fleet(&NAMES[..4], &addrs).await;
    let mut candidacies = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let tickets = if i == 3 { 3 } else { 2 };
        candidacies.push(node.obtain("echo", tickets).await.unwrap());
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while candidacies[3].tickets_mismatch() != Some((3, 2)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "mismatch never reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(candidacies[0].tickets_mismatch(), None);
    let owners = nodes[0].owners("echo").await.unwrap();
    assert_eq!(owners.tickets, 2);
    assert!(owners.desired.iter().all(|o| o.name != "w3"));
    for node in &nodes {
        node.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_returns_typed_errors() {
    let node = builder("w0").start().await.unwrap();
    let err = |r: Result<gossip_election::Candidacy, Error>| r.unwrap_err();
    assert!(matches!(
        err(node.obtain("", 1).await),
        Error::Command(gossip_election::proto::CommandError::InvalidResource(_))
    ));
    assert!(matches!(
        err(node.obtain(&"r".repeat(65), 1).await),
        Error::Command(gossip_election::proto::CommandError::InvalidResource(_))
    ));
    assert!(matches!(
        err(node.obtain("echo", 0).await),
        Error::Command(gossip_election::proto::CommandError::ZeroTickets)
    ));
    let _first = node.obtain("echo", 1).await.unwrap();
    let second = err(node.obtain("echo", 1).await);
    assert!(matches!(
        second,
        Error::Command(gossip_election::proto::CommandError::AlreadyCompeting(_))
    ));
    assert!(second.to_string().contains("already competes"));
    let mut kept = Vec::new();
    let full = loop {
        match node
            .obtain(&format!("resource-with-a-long-name-{:03}", kept.len()), 1)
            .await
        {
            Ok(c) => kept.push(c),
            Err(e) => break e,
        }
        assert!(kept.len() < 64, "the record cap never applied");
    };
    assert!(matches!(
        full,
        Error::Command(gossip_election::proto::CommandError::RecordFull { .. })
    ));

    let wildcard = Node::builder("w1")
        .bind("0.0.0.0:0".parse().unwrap())
        .start()
        .await
        .unwrap_err();
    assert!(matches!(wildcard, Error::WildcardWithoutAdvertise(_)));
    assert!(wildcard.to_string().contains("advertise"));
    assert!(matches!(
        Node::builder("w1").start().await.unwrap_err(),
        Error::MissingBind
    ));
    assert!(matches!(
        builder("").start().await.unwrap_err(),
        Error::InvalidName(_)
    ));
    let mut timing = gossip_election::Timing::lan();
    timing.anti_entropy_interval = Duration::ZERO;
    let zero = builder("w3").timing(timing).start().await.unwrap_err();
    assert!(
        matches!(&zero, Error::InvalidTiming(e) if e.field == "anti_entropy_interval"),
        "{zero}"
    );
    let forever = builder("w3")
        .handoff_timeout(Duration::MAX)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&forever, Error::InvalidTiming(e) if e.field == "handoff_timeout"),
        "{forever}"
    );
    let scoped: std::net::SocketAddr = "[fe80::1%2]:7946".parse().unwrap();
    let link_local = Node::builder("w4")
        .bind("127.0.0.1:0".parse().unwrap())
        .advertise(scoped)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(link_local, Error::ScopedAddress(a) if a == scoped),
        "{link_local}"
    );
    let taken = node.addr();
    assert!(matches!(
        Node::builder("w2").bind(taken).start().await.unwrap_err(),
        Error::Bind { .. }
    ));
    node.leave().await;
    assert!(matches!(
        node.obtain("late", 1).await.unwrap_err(),
        Error::Stopped
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_runs_on_a_socket_and_runtime_the_caller_provides() {
    let addrs: Vec<_> = (0..2).map(|_| free_addr()).collect();
    let w0 = fleet_member("w0", &addrs, 0).start().await.unwrap();
    // w1's protocol loop runs on this test's runtime, over a socket bound here.
    let socket = tokio::net::UdpSocket::bind(addrs[1]).await.unwrap();
    let (w1, protocol) = Node::builder("w1")
        .join(addrs.iter().copied())
        .run_on(socket, addrs[1])
        .unwrap();
    // The loop is not Send: it runs on a LocalSet.
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let protocol = tokio::task::spawn_local(protocol);
            let _c0 = w0.obtain("echo", 1).await.unwrap();
            let _c1 = w1.obtain("echo", 1).await.unwrap();
            expect_owners(&[&w0, &w1], "echo", &["w0"]).await;
            w1.leave().await;
            protocol.await.unwrap();
        })
        .await;
    w0.leave().await;
}

#[tokio::test]
async fn a_protocol_loop_that_is_dropped_tells_its_leases_to_stop() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let (node, run) = Node::builder("w0")
                .sync_timeout(Duration::from_millis(100))
                .run_on(socket, addr)
                .unwrap();
            let protocol = tokio::task::spawn_local(run);
            let mut candidacy = node.obtain("echo", 1).await.unwrap();
            let lease = tokio::time::timeout(PATIENCE, candidacy.acquired())
                .await
                .expect("w0, alone, acquires")
                .unwrap();
            // The caller drops the loop (as a panic in it would).
            protocol.abort();
            let reason = tokio::time::timeout(PATIENCE, lease.lost())
                .await
                .expect("the lease never heard that its node stopped");
            assert_eq!(reason, LostReason::Stopped);
        })
        .await;
}

/// Seeds by name: w1 knows w0 only as `localhost:<port>` and starts first, so it keeps
/// announcing (and resolving) until w0, which knows nobody, answers; a name that never
/// resolves is logged and does not stop the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_given_by_name_are_resolved_and_retried() {
    let a = free_addr();
    let b = free_addr();
    let by_name = |addr: std::net::SocketAddr| format!("localhost:{}", addr.port());
    let w1 = builder("w1")
        .bind(b)
        .join([by_name(a), "no-such-host.invalid:7946".to_string()])
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let w0 = builder("w0").bind(a).start().await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while w1
        .members()
        .await
        .unwrap()
        .iter()
        .all(|m| m.name.as_deref() != Some("w0"))
        || w0.state() != NodeState::Active
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "w1 never met w0 by name"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w0.leave().await;
    w1.leave().await;
}

#[tokio::test]
async fn a_join_address_that_is_not_host_and_port_is_refused_with_the_reason() {
    let err = builder("w0")
        .bind(free_addr())
        .join(["worker-1"])
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSeed { ref seed, .. } if seed == "worker-1"));
    assert!(err.to_string().contains("no port"), "{err}");
}

/// A candidacy obtained again after the previous one stepped down and withdrew waits for
/// a new acquisition: it is never handed the lease the previous one held (the preferred
/// worker would otherwise run again while the next worker still holds the ticket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obtaining_again_after_a_step_down_never_hands_out_the_old_lease() {
    let addrs: Vec<_> = (0..2).map(|_| free_addr()).collect();
    // echo over w0, w1 prefers w0.
    let nodes = start_fleet(&NAMES[..2], &addrs).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let mut w1 = nodes[1].obtain("echo", 1).await.unwrap();
    let mut w0 = nodes[0].obtain("echo", 1).await.unwrap();
    let first = w0.acquired().await.unwrap();
    let first_id = first.id();
    expect_owners(&refs, "echo", &["w0"]).await;
    drop(first); // steps down
    w0.withdraw().await;
    let w1_lease = tokio::time::timeout(PATIENCE, w1.acquired())
        .await
        .expect("w1 takes over")
        .unwrap();
    let mut w0 = nodes[0].obtain("echo", 1).await.unwrap();
    let again = tokio::time::timeout(PATIENCE, w0.acquired())
        .await
        .expect("w0 acquires again after its step-down back-off")
        .unwrap();
    assert_ne!(again.id(), first_id, "the old lease was handed out again");
    // w0 holds again only once w1 gave the ticket up.
    assert!(w1_lease.is_lost(), "w0 acquired while w1 still held");
    drop(w1_lease);
    drop(again);
    for node in &nodes {
        node.leave().await;
    }
}
