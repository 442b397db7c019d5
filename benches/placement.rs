//! How long a node takes to compute owners, to take in one membership change, and to run a
//! fleet step in virtual time.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use foca::{Codec, Header, Message as FocaMessage, PostcardCodec};
use gossip_election::NodeId;
use gossip_election::placement::{desired_owners, name_hash, score_hashed, top_n};
use gossip_election::proto::{Core, CoreConfig};
use gossip_election::record::{Claim, Record};
use gossip_election::wire;

fn placement(c: &mut Criterion) {
    for members in [10usize, 100, 1000] {
        let names: Vec<String> = (0..members).map(|i| format!("worker-{i:04}")).collect();
        c.bench_function(
            &format!("desired_owners/{members}_members/3_tickets"),
            |b| {
                b.iter(|| {
                    desired_owners(
                        black_box("billing-cron"),
                        names.iter().map(String::as_str),
                        3,
                    )
                })
            },
        );
    }
}

/// Fresh resource names, cycled through so that no cache holds the last one's work.
fn fresh_resources() -> Vec<String> {
    (0..100_000).map(|i| format!("job-{i:06}")).collect()
}

/// The 3 owners of a fresh resource among 1000 members: ours beside the
/// `rendezvous_hash` and `hrw-hash` crates. Each gets the member set prepared once, the
/// way its API takes it, and does per resource only what a new resource needs.
fn owners_among_1000(c: &mut Criterion) {
    let names: Vec<String> = (0..1000).map(|i| format!("worker-{i:04}")).collect();
    let resources = fresh_resources();
    let mut group = c.benchmark_group("owners/1000_members/3_tickets");

    let hashed: Vec<(u64, &str)> = names.iter().map(|n| (name_hash(n), n.as_str())).collect();
    let mut next = resources.iter().cycle();
    group.bench_function("gossip-election", |b| {
        b.iter(|| {
            let resource_hash = name_hash(next.next().unwrap());
            top_n(
                hashed
                    .iter()
                    .map(|&(hash, name)| (score_hashed(resource_hash, hash), name)),
                3,
            )
        })
    });

    let mut nodes = rendezvous_hash::RendezvousNodes::default();
    for name in &names {
        nodes.insert(name.as_str());
    }
    let mut next = resources.iter().cycle();
    group.bench_function("rendezvous_hash", |b| {
        b.iter(|| {
            nodes
                .calc_candidates(next.next().unwrap())
                .take(3)
                .collect::<Vec<_>>()
        })
    });

    let nodes = hrw_hash::HrwNodes::new(names.iter().map(String::as_str));
    let mut next = resources.iter().cycle();
    group.bench_function("hrw-hash", |b| {
        b.iter(|| {
            nodes
                .sorted(next.next().unwrap())
                .take(3)
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

/// Peers of the node under test in `membership_change`.
const MEMBERS: usize = 1000;
/// Resources they claim, each claimed by 3 of them.
const RESOURCES: usize = 10_000;
/// The boot of every peer.
const PEER_BOOT: u64 = 5;

fn peer_addr(m: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (m >> 8) as u8, m as u8], 7000))
}

fn resource(r: usize) -> String {
    format!("res-{r:05}")
}

/// Peer `m`'s record, ready and competing for 30 resources with one ticket each: resource
/// `r` is claimed by peers `(r + 337 c) % 1000` for `c` in 0..3, so every resource has 3
/// candidates and every peer 30 claims (a record holds what fits in 512 bytes).
fn peer_record(m: usize) -> Record {
    let claims = (0..3)
        .flat_map(|c| {
            let first = (m + MEMBERS - 337 * c % MEMBERS) % MEMBERS;
            (first..RESOURCES).step_by(MEMBERS)
        })
        .map(|r| Claim {
            resource: resource(r),
            tickets: 1,
            candidate: true,
            held: false,
            term: 0,
        })
        .collect();
    let record = Record {
        addr: peer_addr(m),
        name: format!("worker-{m:04}"),
        boot: PEER_BOOT,
        version: 1,
        ready: true,
        claims,
    };
    record.validate().expect("a peer record fits the cap");
    record
}

/// A foca gossip packet from `src` to `dst` carrying member `updates`, in its envelope:
/// what a peer's SWIM traffic looks like on the wire.
fn gossip(src: NodeId, dst: NodeId, updates: &[foca::Member<NodeId>]) -> Vec<u8> {
    let mut codec = PostcardCodec;
    let mut packet = Vec::new();
    let header = Header {
        src,
        src_incarnation: 0,
        dst,
        message: FocaMessage::Gossip,
    };
    Codec::<NodeId>::encode_header(&mut codec, &header, &mut packet).expect("header encodes");
    if !updates.is_empty() {
        let count = u16::try_from(updates.len()).expect("a packet's worth of updates");
        packet.extend_from_slice(&count.to_be_bytes());
        for member in updates {
            Codec::<NodeId>::encode_member(&mut codec, member, &mut packet)
                .expect("member encodes");
        }
    }
    wire::encode_foca(&packet)
}

/// Throws away what the core sent and reported.
fn drain(core: &mut Core) {
    while core.poll_transmit().is_some() {}
    while core.poll_event().is_some() {}
}

/// A ready node that watches all [`RESOURCES`] and sees all [`MEMBERS`] peers with their
/// records, brought there through its public inputs only: the peers' records, a gossip
/// packet from the first peer, and that peer's answer listing every peer.
struct Steady {
    core: Core,
    /// Each peer's current identity (renewed every time it comes back).
    peers: Vec<NodeId>,
    now: Duration,
}

impl Steady {
    fn new() -> Steady {
        let mut now = Duration::from_secs(1);
        let cfg = CoreConfig::new("observer", SocketAddr::from(([10, 1, 0, 0], 7000)), 1);
        let mut core = Core::new(cfg, now).expect("config is valid");
        for r in 0..RESOURCES {
            core.watch(&resource(r));
        }
        let peers: Vec<NodeId> = (0..MEMBERS)
            .map(|m| NodeId::new(peer_addr(m), PEER_BOOT, 0))
            .collect();
        let records: Vec<Record> = (0..MEMBERS).map(peer_record).collect();
        for datagram in wire::encode_records(&records) {
            core.handle_datagram(now, peer_addr(0), &datagram);
        }
        core.handle_datagram(now, peer_addr(0), &gossip(peers[0], core.id(), &[]));
        let everyone: Vec<foca::Member<NodeId>> =
            peers.iter().map(|&id| foca::Member::alive(id)).collect();
        for datagram in wire::encode_members(1, &everyone) {
            core.handle_datagram(now, peer_addr(0), &datagram);
        }
        drain(&mut core);
        // Ready once connected with a whole membership answer for `sync_timeout`.
        now += core.config().sync_timeout;
        core.handle_timeout(now);
        drain(&mut core);
        assert_eq!(core.members().count(), MEMBERS);
        assert!(core.is_ready(), "the node under test is not ready");
        assert_eq!(core.owners(&resource(0)).desired.len(), 1);
        let mut steady = Steady { core, peers, now };
        let down = steady.down(0);
        steady.feed(0, &down);
        assert_eq!(steady.core.members().count(), MEMBERS - 1);
        let back = steady.back(0);
        steady.feed(0, &back);
        assert_eq!(steady.core.members().count(), MEMBERS);
        steady
    }

    /// Peer `m` is declared down, in gossip relayed by another peer.
    fn down(&self, m: usize) -> Vec<u8> {
        let relay = self.peers[(m + 1) % MEMBERS];
        gossip(relay, self.core.id(), &[foca::Member::down(self.peers[m])])
    }

    /// Peer `m`, down, comes back: a renewed identity (same boot, so the record this node
    /// kept for it is valid again) talks to this node.
    fn back(&mut self, m: usize) -> Vec<u8> {
        self.peers[m] = self.peers[m].renewed();
        gossip(self.peers[m], self.core.id(), &[])
    }

    /// Feeds one datagram from peer `m`'s side and returns how long the core took.
    fn feed(&mut self, m: usize, datagram: &[u8]) -> Duration {
        let start = Instant::now();
        self.core.handle_datagram(self.now, peer_addr(m), datagram);
        let spent = start.elapsed();
        drain(&mut self.core);
        spent
    }
}

/// One membership change on a node that sees 1000 members whose records claim 10,000
/// resources (3 candidates each, one ticket), and watches all of them: the whole
/// `handle_datagram` of the gossip packet that brings a member up or down (foca, the
/// view's re-index of that member's claims, the owner reports of the resources it
/// touched). `full_recompute` reads the owners of every resource with `Core::owners`,
/// which is what the node would spend if it placed everything again.
fn membership_change(c: &mut Criterion) {
    let mut fleet = Steady::new();
    let mut group = c.benchmark_group("membership_change/1000_members/10000_resources");
    let mut next = (0..MEMBERS).cycle();
    group.bench_function("join", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let m = next.next().expect("cycles");
                let down = fleet.down(m);
                fleet.feed(m, &down);
                let back = fleet.back(m);
                spent += fleet.feed(m, &back);
            }
            spent
        })
    });
    group.bench_function("leave", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let m = next.next().expect("cycles");
                let down = fleet.down(m);
                spent += fleet.feed(m, &down);
                let back = fleet.back(m);
                fleet.feed(m, &back);
            }
            spent
        })
    });
    assert_eq!(fleet.core.members().count(), MEMBERS);
    let resources: Vec<String> = (0..RESOURCES).map(resource).collect();
    group.sample_size(10);
    group.bench_function("full_recompute", |b| {
        b.iter(|| {
            resources
                .iter()
                .map(|r| fleet.core.owners(r))
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

/// Two cores exchanging datagrams until both hold the other's record: the cost of the
/// sans-IO core itself, with no network and no clock.
fn join_two_cores(c: &mut Criterion) {
    c.bench_function("core/two_nodes_join_and_sync", |b| {
        b.iter(|| {
            let a_addr = "127.0.0.1:7001".parse().unwrap();
            let b_addr = "127.0.0.1:7002".parse().unwrap();
            let mut a_cfg = CoreConfig::new("a", a_addr, 1);
            a_cfg.seeds = vec![b_addr];
            let mut b_cfg = CoreConfig::new("b", b_addr, 2);
            b_cfg.seeds = vec![a_addr];
            let mut now = Duration::from_secs(1);
            let mut a = Core::new(a_cfg, now).unwrap();
            let mut bb = Core::new(b_cfg, now).unwrap();
            for _ in 0..2000 {
                now += Duration::from_millis(1);
                while let Some(t) = a.poll_transmit() {
                    bb.handle_datagram(now, a_addr, &t.data);
                }
                while let Some(t) = bb.poll_transmit() {
                    a.handle_datagram(now, b_addr, &t.data);
                }
                a.handle_timeout(now);
                bb.handle_timeout(now);
                if a.is_ready() && bb.is_ready() {
                    break;
                }
            }
            assert!(a.is_ready() && bb.is_ready(), "the two nodes never synced");
            black_box((a.is_ready(), bb.is_ready()))
        })
    });
}

criterion_group!(
    benches,
    placement,
    owners_among_1000,
    membership_change,
    join_two_cores
);
criterion_main!(benches);
