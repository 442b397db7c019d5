//! What the fuzz targets share: the fleet's key, addresses, and a core that has joined a
//! small fleet, rebuilt identically for every input.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use gossip_election::proto::{Core, CoreConfig};
use gossip_election::{Key, Keyring};

/// The fleet's keyring.
pub fn keys() -> Keyring {
    Keyring::new([Key::from_bytes([7; 32])])
}

/// Member `i`'s address.
pub fn sender_addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + i))
}

/// Where fuzzed datagrams come from: the two other members, a stranger, and the node
/// itself.
pub const SOURCES: [SocketAddr; 4] = [
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7001),
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7002),
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9999),
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7000),
];

const START: Duration = Duration::from_secs(1);

fn config(i: u16) -> CoreConfig {
    let mut cfg = CoreConfig::new(format!("w{i}"), sender_addr(i), 1000 + u64::from(i));
    cfg.seeds = (0..3).map(sender_addr).collect();
    cfg.rng_seed = u64::from(i);
    cfg
}

/// One input of node 0, in the order it had them.
#[derive(Clone, Debug)]
pub enum Input {
    /// A datagram `(at, from, bytes)`.
    Datagram(Duration, SocketAddr, Vec<u8>),
    /// Its timers ran at this time.
    Timeout(Duration),
}

/// Runs three nodes competing for `echo` for three virtual seconds and records what node 0
/// received and when its timers ran.
pub fn transcript() -> &'static (Vec<Input>, Duration) {
    static TRANSCRIPT: OnceLock<(Vec<Input>, Duration)> = OnceLock::new();
    TRANSCRIPT.get_or_init(|| {
        let mut nodes: Vec<Core> = (0..3)
            .map(|i| {
                let mut core = Core::new(config(i), START).expect("valid config");
                core.obtain(START, "echo", 1).expect("valid resource");
                core
            })
            .collect();
        let mut inflight: BinaryHeap<Reverse<(Duration, u64, usize, SocketAddr, Vec<u8>)>> =
            BinaryHeap::new();
        let mut seq = 0;
        let mut inputs = Vec::new();
        let end = START + Duration::from_secs(1);
        let mut now = START;
        loop {
            for (i, core) in nodes.iter_mut().enumerate() {
                while let Some(t) = core.poll_transmit() {
                    if let Some(to) = (0..3).find(|&j| sender_addr(j) == t.to) {
                        seq += 1;
                        let at = now + Duration::from_millis(1);
                        inflight.push(Reverse((
                            at,
                            seq,
                            to as usize,
                            sender_addr(i as u16),
                            t.data,
                        )));
                    }
                }
                while core.poll_event().is_some() {}
            }
            let timer = nodes
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.poll_timeout().map(|t| (t, i)))
                .min();
            let packet = inflight.peek().map(|Reverse(p)| p.0);
            let next = match (timer, packet) {
                (Some((t, _)), Some(p)) => t.min(p),
                (Some((t, _)), None) => t,
                (None, Some(p)) => p,
                (None, None) => break,
            };
            if next > end {
                break;
            }
            now = next;
            if packet == Some(now) {
                let Reverse((at, _, to, from, data)) = inflight.pop().expect("peeked");
                if to == 0 {
                    inputs.push(Input::Datagram(at, from, data.clone()));
                }
                nodes[to].handle_datagram(at, from, &data);
            } else if let Some((t, i)) = timer {
                if i == 0 {
                    inputs.push(Input::Timeout(t));
                }
                nodes[i].handle_timeout(t);
            }
        }
        (inputs, end)
    })
}

/// Node 0 as it was after joining: rebuilt from its recorded inputs (the core is
/// deterministic), and the time it is at.
pub fn joined_core() -> (Core, Duration) {
    let (inputs, end) = transcript();
    let mut core = Core::new(config(0), START).expect("valid config");
    core.obtain(START, "echo", 1).expect("valid resource");
    for input in inputs {
        match input {
            Input::Datagram(at, from, data) => core.handle_datagram(*at, *from, data),
            Input::Timeout(at) => core.handle_timeout(*at),
        }
        while core.poll_transmit().is_some() {}
        while core.poll_event().is_some() {}
    }
    (core, *end)
}
