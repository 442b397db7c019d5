//! Record repair: foca's broadcasts are best effort and late joiners never see old ones,
//! so the core also moves records with its own datagrams.
//!
//! - **Push**: a member seen coming up (`MemberUp` or `Rename`) gets this node's record
//!   directly (see `Core::member_up`); above [`PUSH_FANIN`] members only a sample of
//!   about that many members push.
//! - **Pull**: records this node lacks are asked for directly: a request names up to
//!   32 missing members and goes to one of them, which answers with every listed record
//!   it holds; at most [`PULL_BATCH`] requests per repair period.
//! - **Anti-entropy**: once per period, a digest of the live records (hashed into
//!   buckets) goes to one random member; where buckets differ, the two exchange
//!   `(addr, boot, version)` lists (up to four datagrams) and then the newer records.
//! - **Membership**: foca gossips only membership *changes*, so a node that becomes
//!   active asks one member for its live members (and again whenever a peer's digest
//!   says it knows more members); they are applied without re-gossip.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rand::RngExt;

use tracing::debug;

use super::Core;
use super::view::BUCKETS;
use crate::identity::NodeId;
use crate::record::Record;
use crate::wire::{MAX_DATAGRAM, Message};

/// Most record requests per repair period.
pub(crate) const PULL_BATCH: usize = 16;

/// Most addresses in one record request (the answer fits a few datagrams).
const PULL_ADDRS: usize = 32;

/// In fleets up to this size every member pushes its record to a member seen coming up;
/// above it, each does with probability `PUSH_FANIN / members`, so a newcomer gets about
/// this many datagrams at once and pulls the rest in bulk.
pub(crate) const PUSH_FANIN: usize = 32;

/// Most `(addr, boot, version)` entries in one `Versions` answer (fits a datagram).
const MAX_VERSION_ENTRIES: usize = (MAX_DATAGRAM - 64) / 30;

/// `(addr, boot, version)` of one record.
type VersionEntry = (SocketAddr, u64, u64);

/// The parts of a membership answer received so far.
#[derive(Debug)]
pub(crate) struct MembersAnswer {
    from: SocketAddr,
    answer: u32,
    parts: u16,
    got: std::collections::BTreeSet<u16>,
}

/// Most `Versions` datagrams answering one digest: in a large fleet many buckets differ
/// at once (after a heal, say), and one datagram lists only one or two of them.
const MAX_VERSION_DATAGRAMS: usize = 4;

/// How far this node has synced with the fleet: membership answers, digests, readiness.
pub(super) struct SyncState {
    pub(super) ready: bool,
    /// When the node became ready.
    pub(super) ready_at: Option<Duration>,
    /// A peer answered a digest with "same view": this node knows the live records it knows.
    pub(super) view_confirmed: bool,
    /// The member this node last sent a digest to: only its "same view" answer counts.
    pub(super) digest_sent_to: Option<SocketAddr>,
    /// A whole membership answer arrived since this node last became active.
    pub(super) members_synced: bool,
    /// The parts of the membership answer being received.
    pub(super) members_answer: Option<MembersAnswer>,
    /// Membership answers this node sent (names the next one).
    pub(super) members_answers_sent: u32,
    /// When the membership was last asked for.
    pub(super) members_asked: Option<Duration>,
    /// When each asker last got the membership.
    pub(super) members_answered: BTreeMap<SocketAddr, Duration>,
    /// The view digest each member last reported, and when.
    pub(super) reported: BTreeMap<SocketAddr, (u64, Duration)>,
}

impl Core {
    /// Asks for records this node lacks. Each request lists up to [`PULL_ADDRS`] missing
    /// members and goes to the first of them, which answers with its own record and any
    /// of the others it holds: after a heal or a restart, one member of the other side
    /// knows most of what is missing, so a few requests replace one per member.
    pub(super) fn pull_missing(&mut self, now: Duration) {
        if self.bug(|b| b.no_direct_repair) {
            return;
        }
        let retry = self.cfg.timing.anti_entropy_interval / 2;
        let first_wait = self.cfg.timing.repair_interval;
        let due: Vec<SocketAddr> = self
            .view
            .missing
            .iter()
            .filter(|(_, m)| match m.asked {
                None => now >= m.since + first_wait,
                Some(at) => now >= at + retry,
            })
            .map(|(a, _)| *a)
            .take(PULL_BATCH * PULL_ADDRS)
            .collect();
        for chunk in due.chunks(PULL_ADDRS) {
            for addr in chunk {
                if let Some(m) = self.view.missing.get_mut(addr) {
                    m.asked = Some(now);
                }
            }
            let request = if chunk.len() == 1 {
                Vec::new()
            } else {
                chunk.to_vec()
            };
            self.send_message(chunk[0], &Message::RecordRequest(request));
        }
    }

    /// Answers live members only, with each listed record at most once and at most
    /// [`PULL_ADDRS`] of them: a request must not be a way to make this node send a
    /// stranger (or a spoofed victim) more than it was sent.
    pub(super) fn answer_request(&mut self, from: SocketAddr, addrs: &[SocketAddr]) {
        if !self.view.members.contains_key(&from) {
            return;
        }
        let records: Vec<Record> = if addrs.is_empty() {
            vec![self.own_record()]
        } else {
            let mut listed: Vec<SocketAddr> = Vec::with_capacity(PULL_ADDRS);
            for addr in addrs {
                if listed.len() == PULL_ADDRS {
                    break;
                }
                if !listed.contains(addr) {
                    listed.push(*addr);
                }
            }
            listed.iter().filter_map(|a| self.record(a)).collect()
        };
        if !records.is_empty() {
            self.send_records(from, &records);
        }
    }

    pub(super) fn send_digest(&mut self, _now: Duration) {
        if self.leaving || self.bug(|b| b.no_direct_repair) {
            return;
        }
        let Some(to) = self.view.random_member(&mut self.rng) else {
            return;
        };
        let digest = self.view.digest().to_vec();
        let view = self.view.content_digest();
        self.sync.digest_sent_to = Some(to);
        self.send_message(
            to,
            &Message::Digest {
                buckets: digest,
                view,
                members: u32::try_from(self.view.members.len()).unwrap_or(u32::MAX),
            },
        );
    }

    pub(super) fn answer_digest(&mut self, _now: Duration, from: SocketAddr, theirs: &[u64]) {
        if theirs.len() != BUCKETS || !self.view.members.contains_key(&from) {
            return;
        }
        let ours = self.view.digest();
        let differing: Vec<usize> = (0..BUCKETS).filter(|&i| ours[i] != theirs[i]).collect();
        if differing.is_empty() {
            // "Same view": lets a newcomer know it has heard of everyone.
            self.send_message(
                from,
                &Message::Versions {
                    buckets: 0,
                    entries: Vec::new(),
                    view: self.view.content_digest(),
                },
            );
            return;
        }
        // Start at a random differing bucket so large views still make progress everywhere;
        // list whole buckets in up to MAX_VERSION_DATAGRAMS answers.
        let start = self.rng.random_range(0..differing.len());
        let mut answers: Vec<(u32, Vec<VersionEntry>)> = vec![(0, Vec::new())];
        for k in 0..differing.len() {
            let bucket = differing[(start + k) % differing.len()];
            let more = {
                let store = super::store::lock(&self.store);
                self.view.entries_in(1 << bucket, &store)
            };
            let last = &answers.last().expect("never empty").1;
            if !last.is_empty() && last.len() + more.len() > MAX_VERSION_ENTRIES {
                if answers.len() == MAX_VERSION_DATAGRAMS {
                    break;
                }
                answers.push((0, Vec::new()));
            }
            let (mask, entries) = answers.last_mut().expect("never empty");
            if entries.len() + more.len() <= MAX_VERSION_ENTRIES {
                *mask |= 1 << bucket;
                entries.extend(more);
            } else {
                // A bucket larger than one answer: list a window of it from a random
                // entry, and leave it out of the mask so that the peer does not take
                // the records left out as missing here.
                let skip = self.rng.random_range(0..more.len());
                entries.extend(
                    more.iter()
                        .cycle()
                        .skip(skip)
                        .take(MAX_VERSION_ENTRIES)
                        .copied(),
                );
            }
        }
        let view = self.view.content_digest();
        // An empty answer would mean "same view": never send one here.
        answers.retain(|(mask, entries)| *mask != 0 || !entries.is_empty());
        for (buckets, entries) in answers {
            self.send_message(
                from,
                &Message::Versions {
                    buckets,
                    entries,
                    view,
                },
            );
        }
    }

    pub(super) fn answer_versions(
        &mut self,
        now: Duration,
        from: SocketAddr,
        buckets: u32,
        entries: &[(SocketAddr, u64, u64)],
    ) {
        if !self.view.members.contains_key(&from) {
            return;
        }
        if buckets == 0 && entries.is_empty() {
            // "Same view" counts only from the member this node last sent a digest to.
            if self.sync.digest_sent_to == Some(from) {
                self.sync.view_confirmed = true;
                self.lift_rejoin_bar(now);
            }
            return;
        }
        if self.sync.digest_sent_to == Some(from) {
            self.lift_rejoin_bar(now);
        }
        let mut push: Vec<Record> = Vec::new();
        let mut request: Vec<SocketAddr> = Vec::new();
        {
            // Versions are compared in place: only records that go out are copied.
            let store = super::store::lock(&self.store);
            for &(addr, boot, version) in entries {
                let mine = store.records.get(&addr).filter(|r| self.view.is_valid(r));
                match mine.map(|r| ((r.boot, r.version), r)) {
                    Some((mine, record)) if mine > (boot, version) => push.push(record.clone()),
                    Some((mine, _)) if mine == (boot, version) => {}
                    _ if addr != self.cfg.addr && self.view.is_live(&addr) => request.push(addr),
                    _ => {}
                }
            }
        }
        // Our live records in the listed buckets that the peer did not list.
        let listed: std::collections::BTreeSet<SocketAddr> = entries.iter().map(|e| e.0).collect();
        let ours = {
            let store = super::store::lock(&self.store);
            self.view.entries_in(buckets, &store)
        };
        for (addr, _, _) in ours {
            if !listed.contains(&addr)
                && let Some(record) = self.record(&addr)
            {
                push.push(record);
            }
        }
        if !push.is_empty() {
            self.send_records(from, &push);
        }
        if !request.is_empty() {
            for chunk in request.chunks(32) {
                self.send_message(from, &Message::RecordRequest(chunk.to_vec()));
            }
        }
    }

    /// Asks a random live member for its membership: foca gossips only changes, so a node
    /// that joined a large stable fleet, or missed updates, would otherwise learn members
    /// only as they happen to probe it.
    pub(super) fn request_members(&mut self, now: Duration, from: Option<SocketAddr>) {
        if self.leaving || self.bug(|b| b.no_direct_repair) {
            return;
        }
        let retry = self.cfg.timing.anti_entropy_interval;
        if self.sync.members_asked.is_some_and(|at| now < at + retry) {
            return;
        }
        // A seed that is live answered this node's announce, so it knows this node and
        // will answer; otherwise a random member (it may not know this node yet, and then
        // the repair timer asks another).
        let seeds: Vec<SocketAddr> = self
            .cfg
            .seeds
            .iter()
            .filter(|s| self.view.members.contains_key(s))
            .copied()
            .collect();
        let to = match from {
            Some(addr) => addr,
            None if !seeds.is_empty() && self.sync.members_asked.is_none() => {
                seeds[self.rng.random_range(0..seeds.len())]
            }
            None => match self.view.random_member(&mut self.rng) {
                Some(addr) => addr,
                None => return,
            },
        };
        self.sync.members_asked = Some(now);
        self.send_message(to, &Message::MembersRequest);
    }

    /// Answers live members only, each at most once per half anti-entropy period: the
    /// answer is many datagrams, and must not be a way to flood an address.
    pub(super) fn answer_members_request(&mut self, now: Duration, from: SocketAddr) {
        if !self.view.members.contains_key(&from) {
            return;
        }
        let spacing = self.cfg.timing.anti_entropy_interval / 2;
        if self
            .sync
            .members_answered
            .get(&from)
            .is_some_and(|at| now < *at + spacing)
        {
            return;
        }
        self.sync
            .members_answered
            .retain(|_, at| now < *at + spacing);
        self.sync.members_answered.insert(from, now);
        let live: Vec<foca::Member<NodeId>> = self
            .membership
            .foca
            .iter_membership_state()
            .filter(|m| m.state() != foca::State::Down && m.id().addr() != from)
            .map(|m| foca::Member::new(*m.id(), m.incarnation(), foca::State::Alive))
            .collect();
        self.sync.members_answers_sent = self.sync.members_answers_sent.wrapping_add(1);
        for datagram in crate::wire::encode_members(self.sync.members_answers_sent, &live) {
            self.send(from, datagram);
        }
    }

    /// One part of a membership answer: applied at once; the membership counts as synced
    /// once every part of one answer arrived (a lost part is asked for again with the
    /// whole answer, by the repair timer).
    pub(super) fn apply_members_part(
        &mut self,
        now: Duration,
        from: SocketAddr,
        (answer, part, parts): (u32, u16, u16),
        members: Vec<foca::Member<NodeId>>,
    ) {
        if !self.view.members.contains_key(&from) {
            return;
        }
        if part >= parts {
            *self
                .stats
                .dropped
                .entry(crate::wire::DropReason::Invalid)
                .or_default() += 1;
            return;
        }
        let got = match &mut self.sync.members_answer {
            Some(pending) if pending.from == from && pending.answer == answer => pending,
            pending => pending.insert(MembersAnswer {
                from,
                answer,
                parts,
                got: std::collections::BTreeSet::new(),
            }),
        };
        got.got.insert(part);
        if got.got.len() >= usize::from(got.parts) {
            self.sync.members_answer = None;
            self.sync.members_synced = true;
        }
        // An answer to this node's request: its packets get out.
        self.lift_rejoin_bar(now);
        self.apply_members(now, from, members);
    }

    pub(super) fn apply_members(
        &mut self,
        now: Duration,
        from: SocketAddr,
        members: Vec<foca::Member<NodeId>>,
    ) {
        if !self.view.members.contains_key(&from) {
            return;
        }
        let own = self.cfg.addr;
        let updates = members
            .into_iter()
            .filter(|m| m.id().addr() != own && m.state() == foca::State::Alive);
        if let Err(err) =
            self.membership
                .foca
                .apply_many(updates, false, &mut self.membership.runtime)
        {
            debug!(%err, "foca refused a membership answer");
        }
        self.drain_runtime(now);
    }
}
