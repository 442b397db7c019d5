//! The datagram envelope.
//!
//! Every datagram is `magic (2 bytes "GE") | version (1 byte) | kind (1 byte) | payload`.
//! A foca packet travels as is in the payload of a [`Kind::Foca`] datagram; the election's
//! own messages are postcard-encoded [`Message`]s. Anything that does not decode is
//! dropped and counted by the caller, never acted on.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::identity::NodeId;
use crate::record::Record;

/// First two bytes of every datagram.
pub const MAGIC: [u8; 2] = *b"GE";
/// The wire version this build speaks.
pub const VERSION: u8 = 1;
/// Bytes of envelope before the payload.
pub const ENVELOPE_LEN: usize = 4;
/// Largest datagram sent or accepted.
pub const MAX_DATAGRAM: usize = 1400;

/// The kind byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A foca (SWIM) packet.
    Foca = 1,
    /// An election message ([`Message`]).
    Election = 2,
    /// An authenticated, encrypted datagram: a nonce, then another datagram (with its own
    /// envelope) sealed with a cluster key (see [`crate::seal`]).
    Sealed = 3,
}

/// The election's own datagrams: record repair and anti-entropy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Records pushed to a peer (own record to a member seen coming up, answers to requests).
    Records(Vec<Record>),
    /// "Send me these records"; empty means "send me yours".
    RecordRequest(Vec<SocketAddr>),
    /// A summary of the sender's live records, hashed into buckets, and the sender's
    /// view digest (for operators: equal on nodes that believe the same).
    Digest {
        /// Bucket hashes.
        buckets: Vec<u64>,
        /// The sender's view digest.
        view: u64,
        /// How many live members the sender knows (itself excluded): a receiver that
        /// knows fewer asks for the sender's membership.
        members: u32,
    },
    /// The sender's `(addr, boot, version)` entries of the buckets in `buckets` (a bit set),
    /// in answer to a [`Message::Digest`] that differed there.
    Versions {
        /// Bit `i` set: bucket `i` is listed in full.
        buckets: u32,
        /// `(addr, boot, version)` of every live record in those buckets; or, when one
        /// differing bucket alone is too large for a datagram, of part of it (then
        /// `buckets` is 0).
        entries: Vec<(SocketAddr, u64, u64)>,
        /// The sender's view digest.
        view: u64,
    },
    /// "Send me your live members" (a newcomer, or a node that knows fewer than a peer).
    MembersRequest,
    /// Some of the sender's live members, as foca updates (applied without re-gossip),
    /// from a build that did not number the parts of its answer: applied, but it does not
    /// complete an answer. Never sent by this build.
    Members(Vec<foca::Member<NodeId>>),
    /// Part `part` of `parts` of the answer `answer` to a [`Message::MembersRequest`]:
    /// some of the sender's live members, as foca updates (applied without re-gossip). An
    /// answer is complete when every part of it arrived.
    MembersPart {
        /// Names the answer (the sender's counter), so parts of two answers never mix.
        answer: u32,
        /// This part's index, below `parts`.
        part: u16,
        /// How many parts the answer has (at least one, even when it lists nobody).
        parts: u16,
        /// The members.
        members: Vec<foca::Member<NodeId>>,
    },
    /// The sender is leaving the fleet gracefully (foca's leave follows): when it goes, it
    /// left; it did not fail.
    Leaving,
    /// Quorum mode: "promise me ticket slot `slot` of `resource`", a first request or a
    /// renewal, from the sender's process `boot`, for a tenure with fencing term `term`.
    Promise {
        /// The resource.
        resource: String,
        /// The ticket slot, below the resource's tickets.
        slot: u16,
        /// Names the round, so that answers to an older round are not counted.
        round: u64,
        /// The term of the tenure asked for (or held).
        term: u64,
        /// The asking process's boot.
        boot: u64,
        /// A renewal of a tenure a majority granted already: an acceptor that has promised
        /// the slot to nobody else grants it without checking the term (it may have
        /// restarted since, and learnt the term from the holder's record).
        renew: bool,
    },
    /// Quorum mode: the answer to a [`Message::Promise`].
    Promised {
        /// The resource.
        resource: String,
        /// The ticket slot.
        slot: u16,
        /// The round answered.
        round: u64,
        /// The asking process's boot, echoed: an answer to an earlier process is ignored.
        boot: u64,
        /// Whether the promise was made (or renewed).
        granted: bool,
        /// The highest term of the slot the answering node knows.
        term: u64,
        /// Refused because the slot is promised to this node: ask for another slot while
        /// it holds this one.
        taken_by: Option<SocketAddr>,
    },
    /// Quorum mode: the sender's process `boot` gave slot `slot` of `resource` up (its
    /// application dropped the lease of tenure `term`), or its round `round` failed: the
    /// promise made to that tenure or in that round ends now.
    Unpromise {
        /// The resource.
        resource: String,
        /// The ticket slot.
        slot: u16,
        /// The process that gave it up.
        boot: u64,
        /// The tenure given up.
        term: u64,
        /// The failed round, when it is one (then only a promise that round made or last
        /// renewed ends).
        round: Option<u64>,
    },
    /// "Are you alive?", from the next candidate in rank of a resource `target` holds (or
    /// is desired for), once a probe period. An older process at the address ignores it.
    HolderProbe {
        /// The process probed.
        target: NodeId,
        /// The sender suspects `target` at this incarnation: refute it (foca's refutation).
        suspected: Option<u16>,
    },
    /// The answer to a [`Message::HolderProbe`], with the sender's current incarnation (past
    /// any suspicion the probe carried).
    HolderAck {
        /// The sender's foca incarnation.
        incarnation: u16,
    },
}

/// A decoded datagram.
#[derive(Debug)]
pub enum Datagram<'a> {
    /// A foca packet, still encoded.
    Foca(&'a [u8]),
    /// An election message.
    Election(Message),
}

/// Why an incoming datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// Larger than [`MAX_DATAGRAM`].
    Size,
    /// No magic, an unknown kind, or a payload that does not decode.
    Decode,
    /// A wire version this build does not speak.
    Version,
    /// Decoded, but its content is invalid (a bad record) or foca refused it. Unlike the
    /// other reasons, the datagram may have applied in part: foca applies a packet's
    /// membership updates before it reads the records that follow them, and a record that
    /// fails is refused alone.
    Invalid,
    /// Names an identity whose boot is absurdly far ahead of this node's clock.
    Identity,
    /// Failed authentication: sealed with a key this node does not have, altered, or sent
    /// in plaintext to a node that requires keys (or sealed, to a node without any).
    Auth,
    /// Authentic, but a replay: a datagram already received, or one from an older process
    /// at its address.
    Replay,
}

impl DropReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [DropReason; 7] = [
        DropReason::Decode,
        DropReason::Version,
        DropReason::Size,
        DropReason::Invalid,
        DropReason::Identity,
        DropReason::Auth,
        DropReason::Replay,
    ];

    /// A short label, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Size => "size",
            DropReason::Decode => "decode",
            DropReason::Version => "version",
            DropReason::Invalid => "invalid",
            DropReason::Identity => "identity",
            DropReason::Auth => "auth",
            DropReason::Replay => "replay",
        }
    }
}

fn envelope(kind: Kind, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_LEN + capacity);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out
}

/// Wraps an encoded foca packet.
pub fn encode_foca(packet: &[u8]) -> Vec<u8> {
    let mut out = envelope(Kind::Foca, packet.len());
    out.extend_from_slice(packet);
    out
}

/// Encodes an election message.
pub fn encode(message: &Message) -> Vec<u8> {
    let out = envelope(Kind::Election, 64);
    postcard::to_extend(message, out).expect("election messages always serialize")
}

/// Splits records into as few [`Message::Records`] datagrams as fit in [`MAX_DATAGRAM`].
pub fn encode_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<Vec<u8>> {
    encode_batches(records, Message::Records)
}

/// Splits an answer listing `members` into [`Message::MembersPart`] datagrams that fit in
/// [`MAX_DATAGRAM`]: at least one, even for no members, so that the asker learns the
/// answer is complete.
pub fn encode_members<'a>(
    answer: u32,
    members: impl IntoIterator<Item = &'a foca::Member<NodeId>>,
) -> Vec<Vec<u8>> {
    let batches = batches(members, MEMBERS_PART_HEADER);
    let parts = u16::try_from(batches.len().max(1)).unwrap_or(u16::MAX);
    if batches.is_empty() {
        return vec![encode(&Message::MembersPart {
            answer,
            part: 0,
            parts,
            members: Vec::new(),
        })];
    }
    batches
        .into_iter()
        .take(usize::from(parts))
        .enumerate()
        .map(|(part, members)| {
            encode(&Message::MembersPart {
                answer,
                part: part as u16,
                parts,
                members,
            })
        })
        .collect()
}

/// Bytes a [`Message::MembersPart`] spends on `answer`, `part` and `parts` (varints at
/// their longest).
const MEMBERS_PART_HEADER: usize = 5 + 3 + 3;

fn encode_batches<'a, T: Serialize + Clone + 'a>(
    items: impl IntoIterator<Item = &'a T>,
    wrap: impl Fn(Vec<T>) -> Message,
) -> Vec<Vec<u8>> {
    batches(items, 0)
        .into_iter()
        .map(|batch| encode(&wrap(batch)))
        .collect()
}

/// Splits `items` into lists whose message fits a datagram: the envelope, `header` bytes,
/// and the variant and the list's length in three more.
fn batches<'a, T: Serialize + Clone + 'a>(
    items: impl IntoIterator<Item = &'a T>,
    header: usize,
) -> Vec<Vec<T>> {
    let empty = ENVELOPE_LEN + header + 3;
    let mut out = Vec::new();
    let mut batch: Vec<T> = Vec::new();
    let mut size = empty;
    for item in items {
        let len = postcard::experimental::serialized_size(item).unwrap_or(usize::MAX);
        if !batch.is_empty() && size + len > MAX_DATAGRAM {
            out.push(std::mem::take(&mut batch));
            size = empty;
        }
        size += len;
        batch.push(item.clone());
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

/// Decodes a datagram's envelope (and an election message's payload).
pub fn decode(data: &[u8]) -> Result<Datagram<'_>, DropReason> {
    if data.len() > MAX_DATAGRAM {
        return Err(DropReason::Size);
    }
    if data.len() < ENVELOPE_LEN || data[..2] != MAGIC {
        return Err(DropReason::Decode);
    }
    if data[2] != VERSION {
        return Err(DropReason::Version);
    }
    let payload = &data[ENVELOPE_LEN..];
    match data[3] {
        k if k == Kind::Foca as u8 => Ok(Datagram::Foca(payload)),
        k if k == Kind::Election as u8 => postcard::from_bytes(payload)
            .map(Datagram::Election)
            .map_err(|_| DropReason::Decode),
        // Sealed with a key, and it reached the core unopened: this node has no keys.
        k if k == Kind::Sealed as u8 => Err(DropReason::Auth),
        _ => Err(DropReason::Decode),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_message_round_trips() {
        let msg = Message::RecordRequest(vec!["127.0.0.1:1".parse().unwrap()]);
        match decode(&encode(&msg)).unwrap() {
            Datagram::Election(got) => assert_eq!(got, msg),
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn foreign_version_and_garbage_are_refused() {
        let mut data = encode(&Message::Digest {
            buckets: vec![1, 2],
            view: 3,
            members: 4,
        });
        data[2] = VERSION + 1;
        assert_eq!(decode(&data).unwrap_err(), DropReason::Version);
        assert_eq!(decode(b"xx").unwrap_err(), DropReason::Decode);
        assert_eq!(decode(b"GE\x01\x09").unwrap_err(), DropReason::Decode);
        assert_eq!(
            decode(&[0u8; MAX_DATAGRAM + 1]).unwrap_err(),
            DropReason::Size
        );
        let mut truncated = encode(&Message::RecordRequest(vec![
            "127.0.0.1:1".parse().unwrap(),
        ]));
        truncated.truncate(truncated.len() - 2);
        assert_eq!(decode(&truncated).unwrap_err(), DropReason::Decode);
    }

    /// The rolling-upgrade path: a newer build appends message kinds within this wire
    /// version; an older build drops one of those as undecodable (and counts it) and goes
    /// on reading every message it knows.
    #[test]
    fn a_message_kind_appended_by_a_newer_build_is_dropped_alone() {
        // `Leaving` is the last kind this build knows; its index plus one is the next.
        let known = encode(&Message::Leaving);
        let mut newer = known.clone();
        *newer.last_mut().unwrap() += 1;
        newer.extend_from_slice(&[3, 1, 2, 3]);
        assert_eq!(decode(&newer).unwrap_err(), DropReason::Decode);
        assert!(matches!(
            decode(&known).unwrap(),
            Datagram::Election(Message::Leaving)
        ));
    }
}
