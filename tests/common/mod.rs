//! Helpers for tests that run real nodes over UDP on 127.0.0.1.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gossip_election::{Candidacy, LostReason, Node, NodeBuilder, Timing};

/// Generous bound for anything that should happen in a few seconds.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What the applications of a test fleet did, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Acquired(String),
    Lost(String, LostReason),
    Released(String),
}

/// A shared log plus the number of holders at the application level (from acquisition
/// until the lease is dropped), and the most ever seen at once.
#[derive(Clone, Default)]
pub struct Log {
    inner: Arc<Mutex<LogInner>>,
}

#[derive(Default)]
struct LogInner {
    steps: Vec<Step>,
    holders: Vec<String>,
    max_holders: usize,
    /// Since when nobody holds (after the first acquisition).
    empty_since: Option<std::time::Instant>,
    /// The longest time nobody held, so far.
    longest_empty: Duration,
}

impl Log {
    pub fn steps(&self) -> Vec<Step> {
        self.inner.lock().unwrap().steps.clone()
    }

    pub fn holders(&self) -> Vec<String> {
        let mut h = self.inner.lock().unwrap().holders.clone();
        h.sort();
        h
    }

    pub fn max_holders(&self) -> usize {
        self.inner.lock().unwrap().max_holders
    }

    /// The longest time nobody held, between the first acquisition and now (a figure to
    /// report; tests do not assert on wall-clock times).
    pub fn longest_without_holder(&self) -> Duration {
        let inner = self.inner.lock().unwrap();
        let open = inner.empty_since.map_or(Duration::ZERO, |t| t.elapsed());
        inner.longest_empty.max(open)
    }

    pub fn acquired(&self, name: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.steps.push(Step::Acquired(name.into()));
        if let Some(since) = inner.empty_since.take() {
            inner.longest_empty = inner.longest_empty.max(since.elapsed());
        }
        inner.holders.push(name.into());
        inner.max_holders = inner.max_holders.max(inner.holders.len());
    }

    fn lost(&self, name: &str, reason: LostReason) {
        self.inner
            .lock()
            .unwrap()
            .steps
            .push(Step::Lost(name.into(), reason));
    }

    pub fn released(&self, name: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.steps.push(Step::Released(name.into()));
        inner.holders.retain(|h| h != name);
        if inner.holders.is_empty() {
            inner.empty_since = Some(std::time::Instant::now());
        }
    }

    /// Waits (bounded) until `check` holds on the log.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&Log) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !check(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; steps: {:?}",
                self.steps()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A builder on 127.0.0.1 with an OS-chosen port.
pub fn builder(name: &str) -> NodeBuilder {
    Node::builder(name)
        .bind("127.0.0.1:0".parse().unwrap())
        .timing(Timing::lan())
        .handoff_timeout(Duration::from_secs(5))
}

/// A free UDP port on 127.0.0.1, from below Linux's ephemeral range (32768–60999): a
/// port the OS hands out to any socket (another process's, such as the browser the
/// dashboard test starts) could be taken between this check and the node's bind. A port
/// given to one test of this process is never given to another.
pub fn free_addr() -> SocketAddr {
    static NEXT: std::sync::Mutex<u16> = std::sync::Mutex::new(0);
    let mut next = NEXT.lock().unwrap();
    if *next == 0 {
        *next = 20_000 + (std::process::id() % 1_000) as u16 * 10;
    }
    for _ in 20_000..=32_000 {
        let port = *next;
        *next = if port >= 32_000 { 20_000 } else { port + 1 };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free UDP port on 127.0.0.1 in 20000..=32000");
}

/// Runs the application loop of one worker: acquire, wait for `lost`, drop.
pub fn run_worker(name: &str, mut candidacy: Candidacy, log: &Log) -> tokio::task::JoinHandle<()> {
    let name = name.to_string();
    let log = log.clone();
    tokio::spawn(async move {
        while let Ok(lease) = candidacy.acquired().await {
            log.acquired(&name);
            let reason = lease.lost().await;
            log.lost(&name, reason);
            log.released(&name);
            drop(lease);
        }
    })
}

/// Every node competes for `resource`; the candidacies are returned so they stay alive.
pub async fn obtain_all(nodes: &[Node], resource: &str, tickets: u16) -> Vec<Candidacy> {
    let mut candidacies = Vec::new();
    for node in nodes {
        candidacies.push(node.obtain(resource, tickets).await.unwrap());
    }
    candidacies
}

/// Starts nodes `names`, each joining through every address in `seeds`.
pub async fn start_fleet(names: &[&str], seeds: &[SocketAddr]) -> Vec<Node> {
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        nodes.push(fleet_member(name, seeds, i).start().await.unwrap());
    }
    nodes
}

/// The builder of fleet member `i`: bound to `addrs[i]`, joining through all of `addrs`.
pub fn fleet_member(name: &str, addrs: &[SocketAddr], i: usize) -> NodeBuilder {
    Node::builder(name)
        .bind(addrs[i])
        .join(addrs.iter().copied())
}

/// Waits until every node reports `expected` as both the holders and the desired owners
/// of `resource` (in rank order).
pub async fn expect_owners(nodes: &[&Node], resource: &str, expected: &[&str]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut views = Vec::new();
        for node in nodes {
            views.push(node.owners(resource).await.unwrap());
        }
        let agree = views.iter().all(|v| {
            v.holders
                .iter()
                .map(|o| o.name.as_str())
                .eq(expected.iter().copied())
                && v.holders == v.desired
        });
        if agree {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "owners never became {expected:?}: {views:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
