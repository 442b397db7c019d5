//! Hostile and unlucky datagrams: bounded answers, no state from strangers, no panics.

use foca::{Header, Member, Message as FocaMessage};

use super::*;
use crate::record::Record;

/// A foca packet from `src` to `dst` with member `updates` and custom broadcast `items`.
fn foca_packet(
    src: NodeId,
    dst: NodeId,
    message: FocaMessage<NodeId>,
    updates: &[Member<NodeId>],
    items: &[Vec<u8>],
) -> Vec<u8> {
    let mut codec = PostcardCodec;
    let mut buf: Vec<u8> = Vec::new();
    let header = Header {
        src,
        src_incarnation: 0,
        dst,
        message,
    };
    Codec::<NodeId>::encode_header(&mut codec, &header, &mut buf).unwrap();
    if !updates.is_empty() {
        buf.extend_from_slice(&(updates.len() as u16).to_be_bytes());
        for m in updates {
            Codec::<NodeId>::encode_member(&mut codec, m, &mut buf).unwrap();
        }
    }
    for item in items {
        buf.extend_from_slice(&(item.len() as u16).to_be_bytes());
        buf.extend_from_slice(item);
    }
    wire::encode_foca(&buf)
}

/// Feeds `data` from `from` to node `i` and returns the bytes it sends back to `from`
/// (everything else it sends is delivered as usual).
fn bytes_back(f: &mut Fleet, i: usize, from: SocketAddr, data: &[u8]) -> usize {
    let now = f.now;
    let node = f.node(i);
    node.handle_datagram(now, from, data);
    let mut back = 0;
    let mut others = Vec::new();
    while let Some(t) = node.poll_transmit() {
        if t.to == from {
            back += t.data.len();
        } else {
            others.push(t);
        }
    }
    for t in others {
        node.transmits.push_back(t);
    }
    f.flush(addr(i));
    back
}

#[test]
fn stranger_gets_no_more_bytes_back_than_it_sent() {
    let mut f = competing_fleet(5);
    let stranger: SocketAddr = "127.0.0.1:9999".parse().unwrap();
    let members: Vec<SocketAddr> = (0..5).map(addr).collect();
    let listed: Vec<SocketAddr> = members.iter().cycle().take(64).copied().collect();
    let probes = [
        wire::encode(&Message::RecordRequest(listed.clone())),
        wire::encode(&Message::RecordRequest(Vec::new())),
        wire::encode(&Message::MembersRequest),
        wire::encode(&Message::Digest {
            buckets: vec![0; view::BUCKETS],
            view: 1,
            members: 1000,
        }),
        wire::encode(&Message::Versions {
            buckets: u32::MAX,
            entries: members.iter().map(|a| (*a, 1, 1)).collect(),
            view: 1,
        }),
    ];
    let mut sent = 0;
    let mut back = 0;
    for probe in &probes {
        sent += probe.len();
        back += bytes_back(&mut f, 0, stranger, probe);
    }
    assert!(back <= sent, "{back} bytes back for {sent} sent");
    assert!(f.node(0).reported_digests().get(&stranger).is_none());

    // A member asking for the same record 64 times gets it once.
    let once = bytes_back(
        &mut f,
        0,
        addr(1),
        &wire::encode(&Message::RecordRequest(vec![addr(2); 64])),
    );
    let record = wire::encode_records([&f.node(2).own_record()])[0].len();
    assert_eq!(once, record, "{once} bytes for one record of {record}");
}

#[test]
fn unsolicited_same_view_answer_does_not_confirm_a_view() {
    let mut f = fleet(3);
    f.run_for(Duration::from_millis(20));
    assert!(f.node(2).conn.active && !f.node(2).sync.view_confirmed);
    let same_view = wire::encode(&Message::Versions {
        buckets: 0,
        entries: Vec::new(),
        view: 0,
    });
    for from in [addr(0), addr(1)] {
        if f.node(2).sync.digest_sent_to != Some(from) {
            let now = f.now;
            f.node(2).handle_datagram(now, from, &same_view);
        }
    }
    assert!(!f.node(2).sync.view_confirmed);
}

#[test]
fn forged_own_record_is_not_stored_and_the_next_version_jumps_past_it() {
    let mut f = competing_fleet(3);
    let own = f.node(0).own_record();
    let forged = |version: u64| Record {
        version,
        claims: Vec::new(),
        ..own.clone()
    };
    let w0 = f.node(0).id();
    let w1 = f.node(1).id();
    let now = f.now;
    let packet = foca_packet(
        w1,
        w0,
        FocaMessage::Broadcast,
        &[],
        &[forged(own.version + 100).encode()],
    );
    f.node(0).handle_datagram(now, addr(1), &packet);
    assert_eq!(
        f.node(0).own_record(),
        own,
        "the forged copy replaced the own record"
    );
    let now = f.now;
    f.node(0).withdraw(now, "echo");
    f.flush(addr(0));
    assert!(f.node(0).own_record().version > own.version + 100);

    // A copy at the highest version: the node cannot jump past it and raises its boot.
    let packet = foca_packet(
        w1,
        w0,
        FocaMessage::Broadcast,
        &[],
        &[forged(u64::MAX).encode()],
    );
    let now = f.now;
    f.node(0).handle_datagram(now, addr(1), &packet);
    f.node(0).obtain(now, "echo", 1).unwrap();
    f.flush(addr(0));
    assert!(f.node(0).own_record().boot > own.boot);
    f.run_for(Duration::from_secs(5));
    assert_eq!(f.holders("echo"), ["w0"]);
    for i in 1..3 {
        let seen = f.node(i).record(&addr(0)).expect("w0's record");
        assert_eq!(seen.boot, f.node(0).own_record().boot, "w{i}");
    }
}

#[test]
fn record_of_another_boot_does_not_replace_the_live_members_record() {
    let mut f = competing_fleet(3);
    let real = f.node(0).record(&addr(1)).unwrap();
    let other_boot = Record {
        boot: real.boot + 1,
        version: 0,
        claims: Vec::new(),
        ..real.clone()
    };
    let now = f.now;
    f.node(0)
        .handle_datagram(now, addr(2), &wire::encode_records([&other_boot])[0]);
    f.flush(addr(0));
    assert_eq!(f.node(0).record(&addr(1)), Some(real));
    assert_eq!(f.node(0).missing_records(), 0);
}

#[test]
fn identity_with_a_boot_far_ahead_of_the_clock_is_refused() {
    let mut f = Fleet::new();
    f.wall_clock = Some(Duration::from_secs(1_700_000_000));
    let all = [0, 1, 2];
    let boot = 1_700_000_000_000;
    for i in 0..3 {
        f.start(i, boot + i as u64, &all);
    }
    f.run_for(Duration::from_secs(3));
    let w0 = f.node(0).id();
    let real = f.node(0).view.members[&addr(1)];
    let forged = NodeId::new(addr(1), u64::MAX, u32::MAX);
    let now = f.now;
    let announce = foca_packet(forged, w0, FocaMessage::Announce, &[], &[]);
    f.node(0).handle_datagram(now, addr(1), &announce);
    let gossip = foca_packet(
        f.node(2).id(),
        w0,
        FocaMessage::Gossip,
        &[Member::alive(forged)],
        &[],
    );
    f.node(0).handle_datagram(now, addr(2), &gossip);
    f.flush(addr(0));
    f.run_for(Duration::from_secs(3));
    assert_eq!(f.node(0).view.members[&addr(1)], real);
    assert_eq!(f.node(0).stats().dropped[&DropReason::Identity], 2);
}

/// Datagrams a settled fleet of three exchanged, to mutate.
fn corpus() -> &'static [Vec<u8>] {
    static CORPUS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    CORPUS.get_or_init(|| {
        let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut f = fleet(3);
        let sink = seen.clone();
        f.lose = Some(Box::new(move |_, _, _, data| {
            let mut seen = sink.borrow_mut();
            if seen.len() < 2000 {
                seen.push(data.to_vec());
            }
            false
        }));
        f.run_for(Duration::from_secs(2));
        f.obtain_all(0..3, "echo", 1);
        f.run_for(Duration::from_secs(3));
        seen.take()
    })
}

/// What a datagram refused before it reached foca or the election must not change.
type Observed = (u64, Record, Vec<(NodeId, String, u16)>, NodeState, Owners);

fn observable(core: &Core) -> Observed {
    let mut members: Vec<(NodeId, String, u16)> = core
        .membership()
        .map(|m| (*m.id(), format!("{:?}", m.state()), m.incarnation()))
        .collect();
    members.sort_unstable();
    (
        core.view_fingerprint(),
        core.own_record(),
        members,
        core.state(),
        core.owners("echo"),
    )
}

fn datagram() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1500),
        // A valid envelope and anything after it.
        (1u8..=2, proptest::collection::vec(any::<u8>(), 0..200)).prop_map(|(kind, rest)| {
            let mut data = vec![b'G', b'E', wire::VERSION, kind];
            data.extend(rest);
            data
        }),
        // A datagram the fleet exchanged, with bytes flipped and the tail cut.
        (
            any::<proptest::sample::Index>(),
            proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..6),
            any::<proptest::sample::Index>(),
        )
            .prop_map(|(pick, flips, cut)| {
                let corpus = corpus();
                let mut data = corpus[pick.index(corpus.len())].clone();
                for (at, byte) in flips {
                    let i = at.index(data.len());
                    data[i] ^= byte;
                }
                let keep = data.len() / 2 + cut.index(data.len() / 2 + 1);
                data.truncate(keep);
                data
            }),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Arbitrary bytes from members and strangers never panic; a datagram refused as
    /// oversized, undecodable, of another version or naming an absurd identity changes
    /// nothing. (One that decodes may apply in part: foca applies a packet's membership
    /// updates before its records, and a record that does not validate is dropped alone.)
    #[test]
    fn arbitrary_datagrams_never_panic_and_refused_ones_change_nothing(
        inputs in proptest::collection::vec((0usize..5, datagram()), 1..8)
    ) {
        let mut f = competing_fleet(3);
        for (source, data) in inputs {
            let from = if source < 3 { addr(source) } else { addr(50 + source) };
            let now = f.now;
            let node = f.node(0);
            let before = observable(node);
            let dropped_before = node.stats().dropped.clone();
            node.handle_datagram(now, from, &data);
            let refused_early = [DropReason::Size, DropReason::Decode, DropReason::Version, DropReason::Identity]
                .iter()
                .any(|r| node.stats().dropped.get(r) != dropped_before.get(r));
            if refused_early {
                proptest::prop_assert_eq!(observable(node), before);
            }
            f.flush(addr(0));
            f.run_for(Duration::from_millis(5));
        }
        f.lose = None;
        f.run_for(Duration::from_secs(5));
        proptest::prop_assert_eq!(f.holders("echo").len(), 1);
    }
}
