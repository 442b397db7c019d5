//! Authenticated gossip over real UDP on 127.0.0.1: a node without the key stays out, and
//! a running fleet turns keys on and rotates them one node at a time without two owners.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use gossip_election::wire::DropReason;
use gossip_election::{Key, Keyring, Node, Plaintext};

const NAMES: [&str; 3] = ["w0", "w1", "w2"];

fn ring(bytes: &[u8]) -> Keyring {
    Keyring::new(bytes.iter().map(|b| Key::from_bytes([*b; 32])))
}

/// Starts `names[i]` at `addrs[i]` with `keys` (none: plaintext) and `plaintext`, competing
/// for `echo` through a logged worker.
async fn start_worker(
    i: usize,
    addrs: &[SocketAddr],
    keys: Option<(Keyring, Plaintext)>,
    boot: u64,
    log: &Log,
) -> Node {
    let mut builder = fleet_member(NAMES[i], addrs, i).boot(boot);
    if let Some((keys, plaintext)) = keys {
        builder = builder.keys(keys).plaintext(plaintext);
    }
    let node = builder.start().await.unwrap();
    let candidacy = node.obtain("echo", 1).await.unwrap();
    run_worker(NAMES[i], candidacy, log);
    node
}

/// Waits until every node sees all the others and they agree `echo` is held by one, the
/// one it should be.
async fn settled(nodes: &[Node]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut ok = true;
        let mut holders = Vec::new();
        for node in nodes {
            let members = node.members().await.unwrap();
            let live = members
                .iter()
                .filter(|m| m.state != gossip_election::MemberState::Down)
                .count();
            let owners = node.owners("echo").await.unwrap();
            ok &= live == nodes.len() - 1
                && owners.holders.len() == 1
                && owners.holders == owners.desired;
            holders.push(owners.holders.first().map(|o| o.name.clone()));
        }
        if ok && holders.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fleet never settled: holders {holders:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Restarts every node in turn with `keys`, each once the fleet settled again.
async fn roll(
    nodes: &mut [Node],
    addrs: &[SocketAddr],
    keys: Option<(Keyring, Plaintext)>,
    log: &Log,
) {
    for i in 0..nodes.len() {
        let boot = nodes[i].boot() + 1;
        nodes[i].leave().await;
        nodes[i] = start_worker(i, addrs, keys.clone(), boot, log).await;
        settled(nodes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_without_the_key_stays_alone_and_the_fleet_keeps_its_owner() {
    let log = Log::default();
    let mut addrs: Vec<_> = (0..3).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes
            .push(start_worker(i, &addrs, Some((ring(&[1]), Plaintext::Refuse)), 1000, &log).await);
    }
    settled(&nodes).await;
    let owner = nodes[0].owners("echo").await.unwrap().holders[0]
        .name
        .clone();

    // An outsider that knows every address but holds another key (and one with none).
    addrs.push(free_addr());
    addrs.push(free_addr());
    let wrong_key = Node::builder("outsider-keyed")
        .bind(addrs[3])
        .join(addrs.iter().copied())
        .keys(ring(&[2]))
        .start()
        .await
        .unwrap();
    let no_key = Node::builder("outsider-plain")
        .bind(addrs[4])
        .join(addrs.iter().copied())
        .start()
        .await
        .unwrap();
    for outsider in [&wrong_key, &no_key] {
        let _candidacy = outsider.obtain("echo", 1).await.unwrap();
    }
    // Long enough to run alone (sync_timeout) and to be probed by the fleet many times.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for outsider in [&wrong_key, &no_key] {
        assert!(
            outsider.members().await.unwrap().is_empty(),
            "{} learned members",
            outsider.name()
        );
        assert_eq!(outsider.state(), gossip_election::NodeState::Alone);
    }
    for node in &nodes {
        let members = node.members().await.unwrap();
        assert!(
            members
                .iter()
                .all(|m| m.addr != addrs[3] && m.addr != addrs[4]),
            "{} lists an outsider: {members:?}",
            node.name()
        );
        let owners = node.owners("echo").await.unwrap();
        assert_eq!(owners.holders.len(), 1);
        assert_eq!(owners.holders[0].name, owner);
        let dropped = node.info().await.unwrap().stats.dropped;
        assert!(
            dropped.get(&DropReason::Auth).is_some_and(|n| *n > 0),
            "{} counted no auth drop: {dropped:?}",
            node.name()
        );
    }
    assert_eq!(log.max_holders(), 1);
    for node in nodes.iter().chain([&wrong_key, &no_key]) {
        node.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_fleet_turns_keys_on_and_rotates_them_one_node_at_a_time() {
    let log = Log::default();
    let addrs: Vec<_> = (0..3).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(start_worker(i, &addrs, None, 1000, &log).await);
    }
    settled(&nodes).await;
    // Turning keys on: accept both while sending plaintext, then seal while accepting
    // both, then refuse plaintext.
    for step in [
        Plaintext::SendAndAccept,
        Plaintext::Accept,
        Plaintext::Refuse,
    ] {
        roll(&mut nodes, &addrs, Some((ring(&[1]), step)), &log).await;
    }
    // Rotating: add the new key, make it first, remove the old one.
    for keys in [ring(&[1, 2]), ring(&[2, 1]), ring(&[2])] {
        roll(&mut nodes, &addrs, Some((keys, Plaintext::Refuse)), &log).await;
    }
    assert_eq!(
        log.max_holders(),
        1,
        "two owners at once: {:?}",
        log.steps()
    );
    for node in &nodes {
        let info = node.info().await.unwrap();
        assert_eq!(info.live_members, 2, "{}", node.name());
    }
    // Past the harness's capture: how long the fleet was without a holder at worst.
    let line = format!(
        "keys: 18 rolling restarts, at most 1 holder, longest without one {} ms\n",
        log.longest_without_holder().as_millis()
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    for node in &nodes {
        node.leave().await;
    }
}
