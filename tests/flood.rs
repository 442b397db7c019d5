//! A keyed fleet on 127.0.0.1 under a flood of bad datagrams: malformed, truncated,
//! oversized, sealed with the wrong key, and replays of datagrams the fleet really sent.
//! Nobody's ownership changes, every drop is counted by its reason, and the node's
//! memory does not grow with the flood.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use gossip_election::seal::{Plaintext, Sealer};
use gossip_election::wire::DropReason;
use gossip_election::{Key, Keyring, Node};

const FLOOD: usize = 20_000;

fn ring(byte: u8) -> Keyring {
    Keyring::new([Key::from_bytes([byte; 32])])
}

/// The resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn holders(nodes: &[Node]) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for node in nodes {
        let owners = node.owners("echo").await.unwrap();
        all.push(owners.holders.into_iter().map(|o| o.name).collect());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_datagrams_changes_no_owner_and_is_counted() {
    let log = Log::default();
    // A tap the fleet believes is a seed: what it receives are datagrams the fleet sent.
    let tap = UdpSocket::bind("127.0.0.1:0").unwrap();
    tap.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let tap_addr = tap.local_addr().unwrap();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut nodes = Vec::new();
    for (i, name) in ["w0", "w1", "w2"].iter().enumerate() {
        let node = fleet_member(name, &addrs, i)
            .join([tap_addr])
            .keys(ring(1))
            .start()
            .await
            .unwrap();
        let candidacy = node.obtain("echo", 1).await.unwrap();
        run_worker(name, candidacy, &log);
        nodes.push(node);
    }
    expect_owners(&nodes.iter().collect::<Vec<_>>(), "echo", &["w0"]).await;
    let before = holders(&nodes).await;

    // Capture a few real sealed datagrams (announces to a seed held as down).
    let mut captured = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = std::time::Instant::now() + PATIENCE;
    while captured.len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the tap heard nothing"
        );
        if let Ok((n, _)) = tap.recv_from(&mut buf) {
            captured.push(buf[..n].to_vec());
        }
    }

    let mut wrong = Sealer::new(&ring(2), Plaintext::Refuse, tap_addr, 1).unwrap();
    let sources: Vec<UdpSocket> = (0..4)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let target = addrs[0];
    let rss_before = rss_kib();
    let mut sent = [0usize; 5];
    for k in 0..FLOOD {
        let kind = k % 5;
        let datagram: Vec<u8> = match kind {
            // Malformed: bytes that are no datagram at all.
            0 => (0..(k % 300) + 1).map(|j| (j * 31 + k) as u8).collect(),
            // Truncated: a real sealed datagram cut short.
            1 => {
                let c = &captured[k % captured.len()];
                c[..c.len() * (k % 7 + 1) / 8].to_vec()
            }
            // Oversized: a sealed envelope far past the largest datagram.
            2 => {
                let mut d = vec![b'G', b'E', 1, 3];
                d.resize(3000, 0xaa);
                d
            }
            // Sealed with a key the fleet does not have.
            3 => wrong.seal(&captured[k % captured.len()]).into_owned(),
            // Replays of what the fleet sent.
            _ => captured[k % captured.len()].clone(),
        };
        sources[k % sources.len()]
            .send_to(&datagram, target)
            .unwrap();
        sent[kind] += 1;
        if k % 20 == 19 {
            // Let the node keep up: an overflowing socket buffer would lose datagrams
            // uncounted.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if k % 1000 == 999 {
            assert_eq!(
                holders(&nodes).await,
                before,
                "ownership changed during the flood"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        holders(&nodes).await,
        before,
        "ownership changed after the flood"
    );
    assert_eq!(log.max_holders(), 1);
    assert_eq!(log.holders(), ["w0"]);

    let dropped = nodes[0].info().await.unwrap().stats.dropped;
    let count = |r: DropReason| dropped.get(&r).copied().unwrap_or(0);
    // Malformed and truncated datagrams and the wrong key fail authentication; oversized
    // ones are refused by size; replays of what w0 already had are replays.
    assert!(
        count(DropReason::Size) >= sent[2] as u64,
        "{dropped:?} after {sent:?}"
    );
    assert!(
        count(DropReason::Auth) >= (sent[0] + sent[1] + sent[3]) as u64 * 9 / 10,
        "{dropped:?} after {sent:?}"
    );
    // Each captured datagram may be new to w0 once (it was sent to the tap); every other
    // copy is a replay.
    assert!(
        count(DropReason::Replay) >= (sent[4] - captured.len()) as u64 * 9 / 10,
        "{dropped:?} after {sent:?}"
    );
    // Nothing of the flood is kept: 20,000 datagrams held anywhere would be megabytes.
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 8 * 1024,
        "resident memory grew by {grown} KiB during the flood"
    );
    for node in &nodes {
        node.leave().await;
    }
}
