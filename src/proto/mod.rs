//! The sans-IO core: foca, records, placement and the lease state machine.
//!
//! [`Core`] never reads a clock, never uses OS randomness and spawns nothing, so the tokio
//! driver and the simulator run the very same code. Every input carries `now` (time since
//! an arbitrary origin, from the caller's monotonic clock). Its methods come in four kinds:
//!
//! 1. **Inputs**: [`Core::handle_datagram`] for every datagram that arrives,
//!    [`Core::handle_timeout`] when the deadline of [`Core::poll_timeout`] has passed.
//! 2. **Commands** from the application: [`Core::obtain`], [`Core::withdraw`],
//!    [`Core::lease_dropped`], [`Core::leave`] and [`Core::watch`].
//! 3. **Outputs**, to drain after every input and command, in this order:
//!    [`Core::poll_transmit`] until it returns `None` (send each datagram),
//!    [`Core::poll_event`] until it returns `None` (events for the application and
//!    operators), then [`Core::poll_timeout`] (when to call `handle_timeout` next).
//! 4. **Accessors**, read-only and callable at any time ([`Core::owners`],
//!    [`Core::members`], [`Core::stats`], ...): what this node believes.
//!
//! The rooms of this module, in the order an input flows through them:
//!
//! | module | what it owns |
//! |---|---|
//! | `mod.rs` | `Core`, its inputs and outputs, and `after_input`, which every input ends in |
//! | `membership` | the foca instance, members up and gone, suspicions, rebuilding foca |
//! | `connection` | announcing, losing and regaining the fleet, boot raises, running alone, readiness |
//! | `store` | the latest record per address, fed by foca's broadcast handler |
//! | `view` | live members and the per-resource index over their valid records |
//! | `repair` | pulling missing records, digests, membership answers |
//! | `publish` | this node's own record |
//! | `lease` | the resources it competes for: claims, acquisitions, yields, leave |
//! | `quorum` | quorum mode: promises asked for, made, renewed and released; self-fencing |
//! | `successor` | the next candidate in rank probing a resource's holders every probe period |
//! | `timers` | the timer queue and what each timer does |
//! | `inspect` | the read-only accessors |
//! | `events`, `timing`, `identity` | the public types: events, configuration, identities |

mod connection;
mod events;
mod inspect;
mod lease;
mod membership;
mod publish;
mod quorum;
mod repair;
mod store;
mod successor;
mod timers;
mod timing;
mod view;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{AccumulatingRuntime, Codec, Foca, Message as FocaMessage, PostcardCodec};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use tracing::{debug, warn};

pub use crate::identity::NodeId;
pub use events::{CommandError, Event, NodeState, OwnerInfo, Owners, Stats, Transmit};
pub use inspect::{MemberInfo, MemberState, NodeInfo};
pub use lease::{LeaseId, LostReason};
pub use timing::{
    Alone, ConfigError, CoreConfig, MAX_BOOT_AHEAD, MAX_DRIFT, MAX_INTERVAL, MIN_INTERVAL,
    PlantedBugs, QuorumMargins, Safety, Timing, TimingError,
};
pub use view::Placement;

use crate::record::Record;
use crate::wire::{self, Datagram, DropReason, Message};
use store::{RecordHandler, Store};
use timers::CoreTimer;
use view::View;

type FocaInstance = Foca<NodeId, PostcardCodec, Xoshiro256PlusPlus, RecordHandler>;

/// How far back losses of every member count towards the candidacy bar.
pub(super) const REJOIN_WINDOW: Duration = Duration::from_secs(120);
/// The longest candidacy bar.
const REJOIN_BAR_MAX: Duration = Duration::from_secs(120);

/// Members of its view a node announces to, besides the seeds, when it must reconnect.
const ANNOUNCE_TO_MEMBERS: usize = 3;

/// How long the record of a member that went down is kept, out of the view, for the case
/// it comes back with the same boot; foca forgets down members after as long.
pub const DORMANT_FOR: Duration = Duration::from_secs(600);

/// How long a record of an address that is not a member is kept (it may be a member this
/// node has not heard of yet).
pub const UNATTACHED_FOR: Duration = Duration::from_secs(60);

/// The sans-IO election node.
pub struct Core {
    cfg: CoreConfig,
    id: NodeId,
    store: Arc<Mutex<Store>>,
    view: View,
    rng: Xoshiro256PlusPlus,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    state: NodeState,
    leaving: bool,
    last_fingerprint: u64,
    started: Duration,
    stats: Stats,
    /// Foca membership and what this node remembers of members.
    membership: membership::Membership,
    /// Whether this node is connected to a fleet, and since when.
    conn: connection::Connection,
    /// How far this node has synced with the fleet: membership answers, digests, readiness.
    sync: repair::SyncState,
    /// The resources this node competes for or watches.
    leases: lease::Leases,
    /// The pending timers.
    timers: timers::Timers,
    /// Quorum mode: the promises this node made.
    quorum: quorum::Acceptor,
    /// The holders this node probes as the next candidate in rank.
    successor: successor::SuccessorProbes,
}

// A core moves between threads (the simulator runs nodes on worker threads).
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Core>();
};

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("id", &self.id)
            .field("name", &self.cfg.name)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Starts a node at `now`: announces to the seeds and schedules its timers.
    pub fn new(mut cfg: CoreConfig, now: Duration) -> Result<Core, ConfigError> {
        cfg.validate()?;
        let own_record = Record {
            addr: cfg.addr,
            name: cfg.name.clone(),
            boot: cfg.boot,
            version: 0,
            ready: false,
            claims: Vec::new(),
        };
        own_record.validate()?;
        cfg.seeds.retain(|s| *s != cfg.addr);
        cfg.seeds.sort();
        cfg.seeds.dedup();
        let id = NodeId::new(cfg.addr, cfg.boot, 0);
        let store = Arc::new(Mutex::new(Store::new(cfg.addr)));
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.rng_seed);
        let foca = Self::build_foca(id, &cfg, &store, &mut rng, 1);
        let mut core = Core {
            id,
            view: View::new(cfg.addr, cfg.boot),
            store,
            rng,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            state: NodeState::Joining,
            leaving: false,
            last_fingerprint: 0,
            started: now,
            stats: Stats::default(),
            membership: membership::Membership {
                foca,
                foca_instance: 0,
                parked_gossip: None,
                foca_cluster_size: 1,
                runtime: AccumulatingRuntime::new(),
                known_names: BTreeMap::new(),
                namesakes_reported: BTreeSet::new(),
                leavers: BTreeSet::new(),
                last_gone_left: false,
                suspects: BTreeSet::new(),
                suspects_scanned: Duration::ZERO,
                lost_since: BTreeMap::new(),
                last_rejoin: None,
                dormant: VecDeque::new(),
                boot_step: 1,
                timer_token: None,
                own_incarnation: 0,
                downs: VecDeque::new(),
                declaring: false,
                last_datagram: now,
            },
            conn: connection::Connection {
                active: false,
                active_since: None,
                inactive_since: now,
                last_heard: None,
                idles: VecDeque::new(),
                rejoin_bar_until: None,
            },
            sync: repair::SyncState {
                ready: false,
                ready_at: None,
                view_confirmed: false,
                digest_sent_to: None,
                members_synced: false,
                members_answer: None,
                members_answers_sent: 0,
                members_asked: None,
                members_answered: BTreeMap::new(),
                reported: BTreeMap::new(),
            },
            leases: lease::Leases {
                claims: BTreeMap::new(),
                watched: BTreeSet::new(),
                owners_seen: BTreeMap::new(),
                dirty: BTreeSet::new(),
                evaluate_claims: false,
                next_lease: LeaseId::FIRST,
            },
            timers: timers::Timers {
                heap: BinaryHeap::new(),
                seq: 0,
                repair_at: Duration::ZERO,
                alone_check_at: None,
            },
            quorum: quorum::Acceptor::default(),
            successor: successor::SuccessorProbes::default(),
            cfg,
        };
        core.publish_record(now);
        core.seed_placeholders(now);
        core.announce(now);
        core.schedule(now + core.cfg.timing.announce_interval, CoreTimer::Announce);
        core.schedule(now + core.alone_after(), CoreTimer::SyncTimeout);
        core.timers.repair_at = now + core.cfg.timing.repair_interval;
        core.schedule(core.timers.repair_at, CoreTimer::Repair);
        core.schedule(
            now + core.cfg.timing.anti_entropy_interval,
            CoreTimer::AntiEntropy,
        );
        core.after_input(now);
        Ok(core)
    }

    /// Whether a planted bug is on (always false without the `planted-bugs` feature).
    #[cfg(feature = "planted-bugs")]
    pub(crate) fn bug(&self, which: fn(&PlantedBugs) -> bool) -> bool {
        which(&self.cfg.bugs)
    }

    #[cfg(not(feature = "planted-bugs"))]
    #[inline(always)]
    pub(crate) fn bug(&self, _which: fn(&PlantedBugs) -> bool) -> bool {
        false
    }

    /// Reports [`Event::OwnersChanged`] for `resource` from now on (even if this node does
    /// not compete for it).
    pub fn watch(&mut self, resource: &str) {
        if self.leases.watched.insert(resource.to_string()) {
            self.leases.dirty.insert(resource.to_string());
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Core::handle_timeout`] must be called next (None after leaving).
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.state == NodeState::Left {
            return None;
        }
        self.timers.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Handles one datagram from `from`.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, data: &[u8]) {
        if self.state == NodeState::Left {
            return;
        }
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        store::lock(&self.store).now = now;
        let decoded = wire::decode(data);
        if decoded.is_ok() {
            self.membership.last_datagram = now;
            if !self.successor.is_empty() {
                self.heard_from_holder(from);
            }
        }
        // Only a disconnected node asks when it last heard the fleet (it was hearing it
        // until it disconnected): connected, skip the lookups.
        if !self.conn.active
            && decoded.is_ok()
            && (self.view.members.contains_key(&from)
                || self.membership.known_names.contains_key(&from)
                || self.cfg.seeds.contains(&from))
        {
            self.conn.last_heard = Some(now);
        }
        match decoded {
            Err(reason) => self.drop_datagram(from, reason),
            Ok(Datagram::Foca(packet)) => {
                if self.leaving && !self.conn.active {
                    return;
                }
                if self.names_absurd_boot(now, packet) {
                    self.drop_datagram(from, DropReason::Identity);
                    return;
                }
                if !self.view.members.contains_key(&from) && !self.membership.downs.is_empty() {
                    self.heard_from_the_declared_down(now, from);
                }
                if let Err(err) = self
                    .membership
                    .foca
                    .handle_data(packet, &mut self.membership.runtime)
                {
                    debug!(%from, %err, "foca refused a packet");
                    let reason = match err {
                        foca::Error::DataTooBig => DropReason::Size,
                        // foca decodes the header and every membership update before it
                        // applies any: nothing of such a packet took effect.
                        foca::Error::Decode(_) => DropReason::Decode,
                        // Found later (a malformed or invalid record after the updates,
                        // which foca has applied by then): only that part was refused.
                        _ => DropReason::Invalid,
                    };
                    if !matches!(err, foca::Error::DataFromOurselves) {
                        *self.stats.dropped.entry(reason).or_default() += 1;
                    }
                }
                self.drain_runtime(now);
            }
            Ok(Datagram::Election(message)) => self.handle_message(now, from, message),
        }
        self.after_input(now);
    }

    /// Counts a datagram of `len` bytes from `from` that the caller dropped before it
    /// reached the core (it failed authentication, or it was a replay): it shows in
    /// [`Stats::dropped`] like the core's own drops.
    pub fn handle_dropped(&mut self, from: SocketAddr, len: usize, reason: DropReason) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += len as u64;
        self.drop_datagram(from, reason);
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        while let Some(Reverse((at, _, _))) = self.timers.heap.peek() {
            if *at > now || self.state == NodeState::Left {
                break;
            }
            let Reverse((_, timer, _)) = self.timers.heap.pop().expect("peeked");
            self.fire(now, timer);
        }
        self.after_input(now);
    }

    fn handle_message(&mut self, now: Duration, from: SocketAddr, message: Message) {
        match message {
            Message::Records(records) => {
                let mut store = store::lock(&self.store);
                for record in records {
                    if record.addr == self.cfg.addr {
                        continue;
                    }
                    let before = store.invalid;
                    store.offer(record);
                    if store.invalid > before {
                        *self.stats.dropped.entry(DropReason::Invalid).or_default() += 1;
                    }
                }
            }
            Message::RecordRequest(addrs) => self.answer_request(from, &addrs),
            // Digests and versions from strangers are neither answered nor remembered.
            Message::Digest { .. } | Message::Versions { .. }
                if !self.view.members.contains_key(&from) => {}
            Message::Digest {
                buckets,
                view,
                members,
            } => {
                self.sync.reported.insert(from, (view, now));
                if usize::try_from(members).is_ok_and(|m| m > self.view.members.len()) {
                    self.request_members(now, Some(from));
                }
                self.answer_digest(now, from, &buckets)
            }
            Message::MembersRequest => self.answer_members_request(now, from),
            Message::Leaving => {
                if self.view.members.contains_key(&from) {
                    self.membership.leavers.insert(from);
                }
            }
            Message::Members(members) => self.apply_members(now, from, members),
            Message::MembersPart {
                answer,
                part,
                parts,
                members,
            } => self.apply_members_part(now, from, (answer, part, parts), members),
            Message::Promise {
                resource,
                slot,
                round,
                term,
                boot,
                renew,
            } => self.handle_promise(now, from, (resource, slot, round, term, boot), renew),
            Message::Promised {
                resource,
                slot,
                round,
                boot,
                granted,
                term,
                taken_by,
            } => self.handle_promised(
                now,
                from,
                (resource, slot, round, boot, granted, term),
                taken_by,
            ),
            Message::Unpromise {
                resource,
                slot,
                boot,
                term,
                round,
            } => self.handle_unpromise(from, (resource, slot, boot, term, round)),
            Message::Versions {
                buckets,
                entries,
                view,
            } => {
                self.sync.reported.insert(from, (view, now));
                self.answer_versions(now, from, buckets, &entries)
            }
            Message::HolderProbe { target, suspected } => {
                self.handle_holder_probe(now, from, target, suspected)
            }
            Message::HolderAck { incarnation } => self.handle_holder_ack(now, from, incarnation),
        }
    }

    /// Whether a foca packet names (as sender or in an update) an identity whose boot is
    /// more than [`MAX_BOOT_AHEAD`] past this node's wall clock: it would win every
    /// address conflict for good. Checked only when the caller passed a wall clock.
    fn names_absurd_boot(&self, now: Duration, mut packet: &[u8]) -> bool {
        use bytes::Buf;
        let Some(wall) = self.cfg.wall_clock else {
            return false;
        };
        let wall_ms = (wall + now.saturating_sub(self.started)).as_millis();
        let limit = wall_ms
            .max(u128::from(self.cfg.boot))
            .saturating_add(MAX_BOOT_AHEAD.as_millis());
        let absurd = |id: &NodeId| u128::from(id.boot()) > limit;
        let mut codec = PostcardCodec;
        // What does not decode is left to foca, which refuses it and says why.
        let Ok(header) = Codec::<NodeId>::decode_header(&mut codec, &mut packet) else {
            return false;
        };
        if absurd(&header.src) {
            return true;
        }
        if packet.remaining() >= 2 && header.message != FocaMessage::Broadcast {
            let updates = packet.get_u16();
            for _ in 0..updates {
                match Codec::<NodeId>::decode_member(&mut codec, &mut packet) {
                    Ok(member) if absurd(member.id()) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        }
        false
    }

    fn drop_datagram(&mut self, from: SocketAddr, reason: DropReason) {
        debug!(%from, reason = reason.as_str(), "dropped a datagram");
        *self.stats.dropped.entry(reason).or_default() += 1;
    }

    fn send(&mut self, to: SocketAddr, data: Vec<u8>) {
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += data.len() as u64;
        self.transmits.push_back(Transmit { to, data });
    }

    fn send_message(&mut self, to: SocketAddr, message: &Message) {
        self.send(to, wire::encode(message));
    }

    fn send_records(&mut self, to: SocketAddr, records: &[Record]) {
        for datagram in wire::encode_records(records) {
            self.send(to, datagram);
        }
    }

    fn after_input(&mut self, now: Duration) {
        if self.bug(|b| b.suspect_is_gone) {
            self.drop_suspects(now);
        }
        // Records that arrived by any path.
        let changed = std::mem::take(&mut store::lock(&self.store).changed);
        self.stats.invalid_records = store::lock(&self.store).invalid;
        for addr in changed {
            self.reindex(now, addr);
        }
        if !self.sync.ready
            && (self.synced(now) || (self.conn.active && self.bug(|b| b.acquire_before_synced)))
        {
            self.set_ready(now);
        } else if !self.sync.ready && self.ready_escape_due(now) {
            let missing: Vec<SocketAddr> = self.view.missing.keys().copied().collect();
            warn!(
                ?missing,
                "records of these members could not be had: ready anyway (they count as \
                 possible holders until the claim escape)"
            );
            self.stats.ready_escapes += 1;
            self.set_ready(now);
        }
        self.check_superseded(now);
        self.check_fences(now);
        self.update_state(now);
        if self.cfg.report_suspicions {
            self.scan_suspects(now);
        }
        let fingerprint = self.view.fingerprint();
        let view_changed = fingerprint != self.last_fingerprint;
        if view_changed {
            self.last_fingerprint = fingerprint;
            self.stats.view_changes += 1;
        }
        let claims_touched =
            view_changed || !self.leases.dirty.is_empty() || self.leases.evaluate_claims;
        // Lease rules, then the owner reports, until nothing changes.
        for _ in 0..4 {
            if self.leases.dirty.is_empty() && !self.leases.evaluate_claims {
                break;
            }
            let dirty = std::mem::take(&mut self.leases.dirty);
            let evaluate: Vec<String> = if std::mem::take(&mut self.leases.evaluate_claims) {
                self.leases.claims.keys().cloned().collect()
            } else {
                dirty.iter().cloned().collect()
            };
            for resource in &evaluate {
                if self.leases.claims.contains_key(resource) {
                    self.evaluate(now, resource);
                }
            }
            for resource in dirty {
                if self.leases.claims.contains_key(&resource)
                    || self.leases.watched.contains(&resource)
                {
                    self.report_owners(resource);
                }
            }
            let changed = std::mem::take(&mut store::lock(&self.store).changed);
            for addr in changed {
                self.reindex(now, addr);
            }
        }
        if claims_touched {
            self.update_successor_targets(now);
        }
    }

    fn report_owners(&mut self, resource: String) {
        let owners = self.owners(&resource);
        if self.leases.owners_seen.get(&resource) != Some(&owners) {
            self.leases
                .owners_seen
                .insert(resource.clone(), owners.clone());
            self.events
                .push_back(Event::OwnersChanged { resource, owners });
        }
    }
}
#[cfg(test)]
mod tests;
