//! The sans-IO core: foca, records, placement and the lease state machine.
//!
//! Inputs carry `now` (time since an arbitrary origin, from the caller's monotonic
//! clock): [`Core::handle_datagram`], [`Core::handle_timeout`] and the commands
//! ([`Core::obtain`], [`Core::withdraw`], [`Core::lease_dropped`], [`Core::leave`]).
//! Outputs are polled: [`Core::poll_transmit`] for datagrams, [`Core::poll_timeout`] for
//! the next deadline, [`Core::poll_event`] for what the application and operators see.
//! The core never reads a clock, never uses OS randomness and spawns nothing, so the tokio
//! driver and the simulator run the very same code.

mod identity;
mod lease;
mod repair;
mod timing;
mod view;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{
    AccumulatingRuntime, Codec, Foca, Member, Message as FocaMessage, OwnedNotification,
    PostcardCodec, Timer,
};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use tracing::{debug, info, warn};

pub use identity::NodeId;
pub use lease::{LeaseId, LostReason};
pub use timing::{
    CoreConfig, MAX_BOOT_AHEAD, MAX_INTERVAL, MIN_INTERVAL, PlantedBugs, Timing, TimingError,
};
pub use view::Placement;

use crate::record::{Claim, Record};
use crate::wire::{self, Datagram, DropReason, Message};
use lease::OwnClaim;
use view::{RecordHandler, Store, View};

type FocaInstance = Foca<NodeId, PostcardCodec, Xoshiro256PlusPlus, RecordHandler>;

/// What a node is doing, as it reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeState {
    /// Not connected to the fleet: started and not yet synced, or it lost every member
    /// but still hears from some (it reconnects, and does not run alone meanwhile).
    Joining,
    /// Synced with the fleet and competing.
    Active,
    /// Reached nobody within `sync_timeout` (or lost every member): runs on its own view.
    Alone,
    /// Leaving: leases are being handed over.
    Leaving,
    /// Left the fleet; the node does nothing more.
    Left,
    /// A newer process with the same name runs: this one holds nothing and competes no more.
    Superseded,
}

impl NodeState {
    /// The lowercase name used in logs and the debug endpoint.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Active => "active",
            NodeState::Alone => "alone",
            NodeState::Leaving => "leaving",
            NodeState::Left => "left",
            NodeState::Superseded => "superseded",
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One node as the owners of a resource name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerInfo {
    /// The node's name.
    pub name: String,
    /// The node's advertise address.
    pub addr: SocketAddr,
}

/// Who holds a resource and who should, in one node's view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owners {
    /// The effective tickets (0 when nobody competes).
    pub tickets: u16,
    /// Nodes whose records say they hold it, in rank order.
    pub holders: Vec<OwnerInfo>,
    /// The top-`tickets` candidates, in rank order. Holders converge to these.
    pub desired: Vec<OwnerInfo>,
}

/// Something the core reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The node's state changed.
    StateChanged(NodeState),
    /// This node acquired a ticket of `resource`.
    Acquired {
        /// The resource.
        resource: String,
        /// Identifies this tenure; quote it in [`Core::lease_dropped`].
        lease: LeaseId,
    },
    /// This node must stop running `resource`; it yields when the lease is dropped.
    Lost {
        /// The resource.
        resource: String,
        /// The tenure that ended.
        lease: LeaseId,
        /// Why.
        reason: LostReason,
    },
    /// This node no longer holds `resource`, and told the fleet.
    Yielded {
        /// The resource.
        resource: String,
        /// The tenure that ended.
        lease: LeaseId,
        /// True when `handoff_timeout` ran out before the application dropped the lease.
        forced: bool,
    },
    /// This node advertises other tickets for `resource` than most candidates do, and is
    /// not counted as a candidate until it agrees.
    TicketsMismatch {
        /// The resource.
        resource: String,
        /// What this node advertises.
        ours: u16,
        /// What most candidates advertise.
        effective: u16,
    },
    /// This node's tickets for `resource` agree with the fleet again.
    TicketsAgreed {
        /// The resource.
        resource: String,
    },
    /// The owners of a resource this node competes for or watches changed.
    OwnersChanged {
        /// The resource.
        resource: String,
        /// The new owners.
        owners: Owners,
    },
    /// A member became live in this node's view.
    MemberUp(NodeId),
    /// A member was declared down (or left) in this node's view.
    MemberDown(NodeId),
    /// A member stopped answering probes (with `report_suspicions`).
    MemberSuspect(NodeId),
    /// A suspected member refuted the suspicion (with `report_suspicions`).
    MemberAlive(NodeId),
    /// Another process with this node's name and a newer boot runs at `by`.
    Superseded {
        /// Where the newer process runs.
        by: SocketAddr,
    },
    /// A process with the same name and an older boot runs at `old`; it will stand down.
    SupersedesOther {
        /// Where the older process runs.
        old: SocketAddr,
    },
    /// The node left the fleet; nothing more will happen.
    Left,
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address.
    pub to: SocketAddr,
    /// The whole datagram, envelope included.
    pub data: Vec<u8>,
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The resource name is empty or too long.
    #[error("invalid resource name: {0}")]
    InvalidResource(#[from] crate::record::RecordError),
    /// Zero tickets.
    #[error("tickets must be at least 1")]
    ZeroTickets,
    /// The node already competes for this resource.
    #[error("this node already competes for {0:?}: keep the first Candidacy or withdraw it")]
    AlreadyCompeting(String),
    /// Adding the claim would push the record over its size cap.
    #[error(
        "claiming {resource:?} would make this node's record {size} bytes, over the cap of {cap}; compete for fewer or shorter resources"
    )]
    RecordFull {
        /// The resource.
        resource: String,
        /// The size the record would have.
        size: usize,
        /// The cap.
        cap: usize,
    },
    /// The node is leaving, has left, or was superseded.
    #[error("the node is {0} and takes no new candidacies")]
    NotRunning(NodeState),
}

/// Why a core could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The node name is empty or too long.
    #[error("invalid node name: {0}")]
    Name(#[from] crate::record::RecordError),
    /// A timing value is out of range.
    #[error("invalid timing: {0}")]
    Timing(#[from] TimingError),
    /// An IPv6 address with a scope (link-local): the scope does not travel in member
    /// identities, so peers could not answer.
    #[error(
        "{0} carries an IPv6 scope id: scoped (link-local) addresses cannot be members; use a global or unique-local address"
    )]
    ScopedAddress(SocketAddr),
}

/// Whether `addr` is an IPv6 address with a scope id.
fn is_scoped(addr: &SocketAddr) -> bool {
    matches!(addr, SocketAddr::V6(a) if a.scope_id() != 0)
}

impl CoreConfig {
    /// Checks what a core cannot start with: the name's length, the timing profile and
    /// timeouts ([`CoreConfig::validate_timing`]), and scoped addresses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() || self.name.len() > crate::record::MAX_NAME_LEN {
            return Err(crate::record::RecordError::BadName(self.name.len()).into());
        }
        self.validate_timing()?;
        match std::iter::once(&self.addr)
            .chain(&self.seeds)
            .find(|a| is_scoped(a))
        {
            Some(scoped) => Err(ConfigError::ScopedAddress(*scoped)),
            None => Ok(()),
        }
    }
}

/// How far back losses of every member count towards the candidacy bar.
const REJOIN_WINDOW: Duration = Duration::from_secs(120);
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

/// Counters, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handed to the core.
    pub datagrams_in: u64,
    /// Bytes handed to the core.
    pub bytes_in: u64,
    /// Datagrams the core produced.
    pub datagrams_out: u64,
    /// Bytes the core produced.
    pub bytes_out: u64,
    /// Dropped incoming datagrams by reason.
    pub dropped: BTreeMap<DropReason, u64>,
    /// Record broadcasts that did not validate.
    pub invalid_records: u64,
    /// Outgoing foca `TurnUndead` messages suppressed because the target is live here.
    pub suppressed_turn_undead: u64,
    /// foca instances rebuilt after going idle.
    pub rebuilds: u64,
    /// Times this node raised its boot because the fleet refused its identity.
    pub boot_raises: u64,
    /// Acquisitions.
    pub acquisitions: u64,
    /// Losses.
    pub losses: u64,
    /// Yields.
    pub yields: u64,
    /// Acquisitions that went ahead past an unresponsive blocker.
    pub escapes: u64,
    /// Times this node became ready while records it could not get were still missing.
    pub ready_escapes: u64,
    /// Times this node stayed out of the candidates after it lost every member and
    /// connected again (its packets may not get out).
    pub rejoin_bars: u64,
    /// Changes of this node's view (members or their records).
    pub view_changes: u64,
    /// Members seen turning suspect (with `report_suspicions`).
    pub suspicions_raised: u64,
    /// Suspected members seen alive again (with `report_suspicions`).
    pub suspicions_refuted: u64,
    /// The last failover this node took part in: from when it first saw the previous
    /// holder suspected (or down) until it acquired.
    pub last_failover: Option<Duration>,
}

/// A timer of the core: foca's (tagged with the foca instance) or the election's own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum CoreTimer {
    Foca {
        instance: u32,
        timer: Timer<NodeId>,
    },
    Announce,
    SyncTimeout,
    Repair,
    AntiEntropy,
    Handoff {
        resource: String,
        lease: LeaseId,
    },
    Backoff {
        resource: String,
    },
    Escape {
        resource: String,
    },
    /// A disconnected node may run alone if it has heard nobody since.
    AloneCheck,
    /// The bar on candidacy after repeated losses of every member ends.
    RejoinBar,
    LeaveDeadline,
}

/// The sans-IO election node.
pub struct Core {
    cfg: CoreConfig,
    id: NodeId,
    foca: FocaInstance,
    foca_instance: u32,
    /// foca's periodic gossip timer, held while foca has nothing to gossip (it would only
    /// re-arm itself) and released as soon as it has: an idle node does not wake every
    /// gossip interval.
    parked_gossip: Option<(u32, Timer<NodeId>)>,
    foca_cluster_size: usize,
    runtime: AccumulatingRuntime<NodeId>,
    store: Arc<Mutex<Store>>,
    view: View,
    rng: Xoshiro256PlusPlus,
    timers: BinaryHeap<Reverse<(Duration, CoreTimer, u64)>>,
    timer_seq: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    claims: BTreeMap<String, OwnClaim>,
    watched: BTreeSet<String>,
    owners_seen: BTreeMap<String, Owners>,
    /// Resources whose index changed: evaluate them and report their owners.
    dirty: BTreeSet<String>,
    /// Membership changed: evaluate every claim (its owners change only with its index).
    evaluate_claims: bool,
    state: NodeState,
    active: bool,
    ready: bool,
    /// When the node became ready.
    ready_at: Option<Duration>,
    /// A peer answered a digest with "same view": this node knows the live records it knows.
    view_confirmed: bool,
    /// The member this node last sent a digest to: only its "same view" answer counts.
    digest_sent_to: Option<SocketAddr>,
    /// A whole membership answer arrived since this node last became active.
    members_synced: bool,
    /// The parts of the membership answer being received.
    members_answer: Option<repair::MembersAnswer>,
    /// Membership answers this node sent (names the next one).
    members_answers_sent: u32,
    /// When the membership was last asked for.
    members_asked: Option<Duration>,
    /// When each asker last got the membership.
    members_answered: BTreeMap<SocketAddr, Duration>,
    active_since: Option<Duration>,
    /// When the node last stopped being connected (its start, before it ever was).
    inactive_since: Duration,
    leaving: bool,
    /// The view digest each member last reported, and when.
    reported: BTreeMap<SocketAddr, (u64, Duration)>,
    /// Older processes with this node's name already reported.
    namesakes_reported: BTreeSet<SocketAddr>,
    /// The last name seen at each address, so a member that went down keeps its name.
    known_names: BTreeMap<SocketAddr, String>,
    /// When a datagram last arrived from a member, a former member or a seed.
    last_heard: Option<Duration>,
    /// When the pending [`CoreTimer::AloneCheck`] fires, if one is scheduled.
    alone_check_at: Option<Duration>,
    /// When the node lost every member (not by their leaving), within the last
    /// [`REJOIN_WINDOW`].
    idles: VecDeque<Duration>,
    /// Out of the candidates until then, or until a member answers (see
    /// [`Core::rejoined_after_idle`]).
    rejoin_bar_until: Option<Duration>,
    /// Live members that said they are leaving gracefully.
    leavers: BTreeSet<SocketAddr>,
    /// Whether the member that went last had said it was leaving.
    last_gone_left: bool,
    /// Suspected members, when suspicions are reported.
    suspects: BTreeSet<SocketAddr>,
    suspects_scanned: Duration,
    last_fingerprint: u64,
    /// When each live member was first suspected (or declared down), for failover times.
    lost_since: BTreeMap<SocketAddr, Duration>,
    /// When the repair timer fires next.
    repair_at: Duration,
    /// How much the next boot raise adds (doubles with every raise).
    boot_step: u64,
    /// When foca last renewed this node's identity because it was declared down.
    last_rejoin: Option<Duration>,
    /// Members that went down, oldest first: `(when, address, boot of its record)`. What
    /// is kept of each is forgotten [`DORMANT_FOR`] after it went down, unless the member
    /// came back.
    dormant: VecDeque<(Duration, SocketAddr, Option<u64>)>,
    next_lease: u64,
    started: Duration,
    stats: Stats,
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
            foca,
            foca_instance: 0,
            parked_gossip: None,
            foca_cluster_size: 1,
            runtime: AccumulatingRuntime::new(),
            view: View::new(cfg.addr, cfg.boot),
            store,
            rng,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            claims: BTreeMap::new(),
            watched: BTreeSet::new(),
            owners_seen: BTreeMap::new(),
            dirty: BTreeSet::new(),
            evaluate_claims: false,
            state: NodeState::Joining,
            active: false,
            ready: false,
            ready_at: None,
            view_confirmed: false,
            digest_sent_to: None,
            members_synced: false,
            members_answer: None,
            members_answers_sent: 0,
            members_asked: None,
            members_answered: BTreeMap::new(),
            active_since: None,
            inactive_since: now,
            leaving: false,
            reported: BTreeMap::new(),
            known_names: BTreeMap::new(),
            namesakes_reported: BTreeSet::new(),
            last_heard: None,
            alone_check_at: None,
            idles: VecDeque::new(),
            rejoin_bar_until: None,
            leavers: BTreeSet::new(),
            last_gone_left: false,
            suspects: BTreeSet::new(),
            suspects_scanned: Duration::ZERO,
            last_fingerprint: 0,
            lost_since: BTreeMap::new(),
            repair_at: Duration::ZERO,
            boot_step: 1,
            dormant: VecDeque::new(),
            last_rejoin: None,
            next_lease: 1,
            started: now,
            stats: Stats::default(),
            cfg,
        };
        core.publish_record(now);
        core.seed_placeholders(now);
        core.announce(now);
        core.schedule(now + core.cfg.timing.announce_interval, CoreTimer::Announce);
        core.schedule(now + core.cfg.sync_timeout, CoreTimer::SyncTimeout);
        core.repair_at = now + core.cfg.timing.repair_interval;
        core.schedule(core.repair_at, CoreTimer::Repair);
        core.schedule(
            now + core.cfg.timing.anti_entropy_interval,
            CoreTimer::AntiEntropy,
        );
        core.after_input(now);
        Ok(core)
    }

    fn build_foca(
        id: NodeId,
        cfg: &CoreConfig,
        store: &Arc<Mutex<Store>>,
        rng: &mut Xoshiro256PlusPlus,
        cluster_size: usize,
    ) -> FocaInstance {
        let foca_rng = Xoshiro256PlusPlus::seed_from_u64(RngExt::random(rng));
        let relay_rng = Xoshiro256PlusPlus::seed_from_u64(RngExt::random(rng));
        Foca::with_custom_broadcast(
            id,
            cfg.timing.foca_config(cluster_size),
            foca_rng,
            PostcardCodec,
            RecordHandler {
                store: Arc::clone(store),
                rng: relay_rng,
            },
        )
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

    // ---------------------------------------------------------------- accessors

    /// This node's current foca identity.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The configuration the core runs with.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// What the node is doing.
    pub fn state(&self) -> NodeState {
        self.state
    }

    /// True once the node is synced (its record says `ready`).
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Time since the core started.
    pub fn uptime(&self, now: Duration) -> Duration {
        now.saturating_sub(self.started)
    }

    /// Live members (alive or suspect), excluding this node, in no particular order.
    pub fn members(&self) -> impl Iterator<Item = &NodeId> {
        self.view.members.values()
    }

    /// A digest of what this node believes — live members and their records' readiness,
    /// interests and held lists — equal on nodes with equal views. Unlike
    /// [`Core::view_fingerprint`] it ignores record versions.
    pub fn view_digest(&self) -> u64 {
        self.view.content_digest()
    }

    /// The view digest each member last reported, and when (this node's `now`).
    pub fn reported_digests(&self) -> &BTreeMap<SocketAddr, (u64, Duration)> {
        &self.reported
    }

    /// The name at `addr`: from its current record, else the last one seen there.
    pub fn name_at(&self, addr: &SocketAddr) -> Option<&str> {
        self.view
            .name_of(addr)
            .or_else(|| self.known_names.get(addr).map(String::as_str))
    }

    /// Since when (this node's `now`) it holds `resource`, if it does.
    pub fn held_since(&self, resource: &str) -> Option<Duration> {
        self.claims.get(resource).and_then(|c| match c.lease {
            lease::LeaseState::Held { since, .. } => Some(since),
            _ => None,
        })
    }

    /// How many live members (alive or suspect) this node sees, itself excluded.
    pub fn live_members(&self) -> usize {
        self.view.members.len()
    }

    /// foca's membership, including members held as down, with their states.
    pub fn membership(&self) -> impl Iterator<Item = &Member<NodeId>> {
        self.foca.iter_membership_state()
    }

    /// The current record of a live member (or this node's own).
    pub fn record(&self, addr: &SocketAddr) -> Option<Record> {
        let store = view::lock(&self.store);
        store
            .records
            .get(addr)
            .filter(|r| self.view.is_valid(r))
            .cloned()
    }

    /// This node's own record.
    pub fn own_record(&self) -> Record {
        view::lock(&self.store).records[&self.cfg.addr].clone()
    }

    /// A hash of this node's view (live members and their record versions): equal on
    /// nodes that believe the same.
    pub fn view_fingerprint(&self) -> u64 {
        self.view.fingerprint()
    }

    /// Entries and approximate bytes of every table this node keeps per address, by
    /// table name: what must level off in a fleet whose workers get fresh addresses.
    pub fn address_tables(&self) -> Vec<(&'static str, usize, usize)> {
        use std::mem::size_of;
        let store = view::lock(&self.store);
        let record_bytes: usize = store
            .records
            .values()
            .map(|r| {
                size_of::<(SocketAddr, Record)>()
                    + r.name.len()
                    + r.claims
                        .iter()
                        .map(|c| size_of::<Claim>() + c.resource.len())
                        .sum::<usize>()
            })
            .sum();
        let names: usize = self
            .known_names
            .values()
            .map(|n| size_of::<(SocketAddr, String)>() + n.len())
            .sum();
        let foca = self.foca.iter_membership_state().count();
        let sized = |n: usize, each: usize| (n, n * each);
        let rows = [
            ("records", (store.records.len(), record_bytes)),
            (
                "records_unattached",
                sized(store.unattached(), size_of::<(Duration, SocketAddr)>()),
            ),
            ("foca_members", sized(foca, size_of::<Member<NodeId>>())),
            ("known_names", (self.known_names.len(), names)),
            (
                "lost_since",
                sized(self.lost_since.len(), size_of::<(SocketAddr, Duration)>()),
            ),
            (
                "reported",
                sized(
                    self.reported.len(),
                    size_of::<(SocketAddr, (u64, Duration))>(),
                ),
            ),
            (
                "members_answered",
                sized(
                    self.members_answered.len(),
                    size_of::<(SocketAddr, Duration)>(),
                ),
            ),
            (
                "namesakes_reported",
                sized(self.namesakes_reported.len(), size_of::<SocketAddr>()),
            ),
            (
                "leavers",
                sized(self.leavers.len(), size_of::<SocketAddr>()),
            ),
            (
                "dormant",
                sized(
                    self.dormant.len(),
                    size_of::<(Duration, SocketAddr, Option<u64>)>(),
                ),
            ),
        ];
        rows.into_iter().map(|(n, (e, b))| (n, e, b)).collect()
    }

    /// Entries of the tables this node keeps per address (as [`Core::address_tables`],
    /// without counting bytes or foca's members): cheap enough to check often.
    pub fn address_table_entries(&self) -> [(&'static str, usize); 5] {
        [
            ("records", view::lock(&self.store).records.len()),
            ("known_names", self.known_names.len()),
            ("lost_since", self.lost_since.len()),
            ("reported", self.reported.len()),
            ("namesakes_reported", self.namesakes_reported.len()),
        ]
    }

    /// Live members whose current record this node lacks.
    pub fn missing_records(&self) -> usize {
        self.view.missing.len()
    }

    /// The owners of `resource` in this node's view.
    pub fn owners(&self, resource: &str) -> Owners {
        let placement = self.view.placement(resource);
        let info = |addr: &SocketAddr| OwnerInfo {
            name: self.view.name_of(addr).unwrap_or_default().to_string(),
            addr: *addr,
        };
        let mut holders: Vec<SocketAddr> = placement.holders.iter().copied().collect();
        let rank_of = |a: &SocketAddr| {
            let name = self.view.name_of(a).unwrap_or_default();
            (
                Reverse(crate::placement::score(resource, name)),
                name.to_string(),
            )
        };
        holders.sort_by_key(rank_of);
        Owners {
            tickets: placement.tickets,
            holders: holders.iter().map(info).collect(),
            desired: placement.desired.iter().map(info).collect(),
        }
    }

    /// Candidates of `resource` in rank order.
    pub fn candidates(&self, resource: &str) -> Vec<OwnerInfo> {
        self.view
            .candidates(resource)
            .iter()
            .map(|addr| OwnerInfo {
                name: self.view.name_of(addr).unwrap_or_default().to_string(),
                addr: *addr,
            })
            .collect()
    }

    /// Every resource some live record claims.
    pub fn resources(&self) -> Vec<String> {
        self.view.resources().map(str::to_string).collect()
    }

    /// Reports [`Event::OwnersChanged`] for `resource` from now on (even if this node does
    /// not compete for it).
    pub fn watch(&mut self, resource: &str) {
        if self.watched.insert(resource.to_string()) {
            self.dirty.insert(resource.to_string());
        }
    }

    // ---------------------------------------------------------------- outputs

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
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    // ---------------------------------------------------------------- inputs

    /// Handles one datagram from `from`.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, data: &[u8]) {
        if self.state == NodeState::Left {
            return;
        }
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        view::lock(&self.store).now = now;
        let decoded = wire::decode(data);
        // Only a disconnected node asks when it last heard the fleet (it was hearing it
        // until it disconnected): connected, skip the lookups.
        if !self.active
            && decoded.is_ok()
            && (self.view.members.contains_key(&from)
                || self.known_names.contains_key(&from)
                || self.cfg.seeds.contains(&from))
        {
            self.last_heard = Some(now);
        }
        match decoded {
            Err(reason) => self.drop_datagram(from, reason),
            Ok(Datagram::Foca(packet)) => {
                if self.leaving && !self.active {
                    return;
                }
                if self.names_absurd_boot(now, packet) {
                    self.drop_datagram(from, DropReason::Identity);
                    return;
                }
                if let Err(err) = self.foca.handle_data(packet, &mut self.runtime) {
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

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        while let Some(Reverse((at, _, _))) = self.timers.peek() {
            if *at > now || self.state == NodeState::Left {
                break;
            }
            let Reverse((_, timer, _)) = self.timers.pop().expect("peeked");
            self.fire(now, timer);
        }
        self.after_input(now);
    }

    fn fire(&mut self, now: Duration, timer: CoreTimer) {
        match timer {
            CoreTimer::Foca { instance, timer } => {
                if instance == self.foca_instance
                    && matches!(timer, Timer::PeriodicGossip(_))
                    && self.foca.updates_backlog() == 0
                    && self.foca.custom_broadcast_backlog() == 0
                {
                    self.parked_gossip = Some((instance, timer));
                    return;
                }
                if instance == self.foca_instance && (self.active || !self.leaving) {
                    // foca forgets down members after `DORMANT_FOR`, seeds too: put a
                    // seed's placeholder back, so announces to down members keep trying it.
                    let forgot_seed = matches!(&timer, Timer::RemoveDown(id) if self.cfg.seeds.contains(&id.addr()));
                    if let Err(err) = self.foca.handle_timer(timer, &mut self.runtime) {
                        debug!(%err, "foca timer failed");
                    }
                    if forgot_seed {
                        self.seed_placeholders(now);
                    }
                    self.drain_runtime(now);
                }
            }
            CoreTimer::Announce => {
                // Re-announce until connected; `Idle` and `reconnect` schedule this again.
                if !self.active && !self.leaving {
                    self.announce(now);
                    self.schedule(now + self.cfg.timing.announce_interval, CoreTimer::Announce);
                }
            }
            CoreTimer::SyncTimeout => {
                // Re-armed until the node is ready: one that connected, never synced and
                // then lost every member runs alone `sync_timeout` after it lost them.
                if self.ready || self.leaving {
                    return;
                }
                let due = self.inactive_since + self.cfg.sync_timeout;
                if self.active {
                    self.schedule(now + self.cfg.sync_timeout, CoreTimer::SyncTimeout);
                } else if now >= due {
                    info!(after = ?self.cfg.sync_timeout, "reached nobody: running alone");
                    self.set_ready(now);
                } else {
                    self.schedule(due, CoreTimer::SyncTimeout);
                }
            }
            CoreTimer::Repair => {
                if now < self.repair_at {
                    return; // superseded by an earlier one
                }
                self.pull_missing(now);
                if self.active && !self.members_synced {
                    self.request_members(now, None);
                }
                if self.active && !self.ready {
                    // Confirm the view with a peer before taking anything over.
                    self.send_digest(now);
                }
                // Fast while something is missing or unconfirmed, else at the
                // anti-entropy pace (a member seen coming up also brings it forward).
                let busy = !self.view.missing.is_empty() || !self.ready;
                let timing = &self.cfg.timing;
                let next = if busy {
                    timing.repair_interval
                } else {
                    timing.anti_entropy_interval
                };
                self.repair_at = now + next;
                self.schedule(self.repair_at, CoreTimer::Repair);
            }
            CoreTimer::AntiEntropy => {
                self.forget_dormant(now);
                self.send_digest(now);
                self.schedule(
                    now + self.cfg.timing.anti_entropy_interval,
                    CoreTimer::AntiEntropy,
                );
            }
            CoreTimer::Handoff { resource, lease } => self.handoff_expired(now, &resource, lease),
            CoreTimer::Backoff { resource } => self.backoff_expired(now, &resource),
            CoreTimer::Escape { resource } => {
                self.dirty.insert(resource);
            }
            CoreTimer::RejoinBar => {
                if self.rejoin_bar_until.is_some_and(|t| t <= now) {
                    self.end_rejoin_bar(now);
                }
            }
            CoreTimer::AloneCheck => {
                self.alone_check_at = None;
                self.evaluate_claims = true;
            }
            CoreTimer::LeaveDeadline => self.finish_leave(now, true),
        }
    }

    fn handle_message(&mut self, now: Duration, from: SocketAddr, message: Message) {
        match message {
            Message::Records(records) => {
                let mut store = view::lock(&self.store);
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
                self.reported.insert(from, (view, now));
                if usize::try_from(members).is_ok_and(|m| m > self.view.members.len()) {
                    self.request_members(now, Some(from));
                }
                self.answer_digest(now, from, &buckets)
            }
            Message::MembersRequest => self.answer_members_request(now, from),
            Message::Leaving => {
                if self.view.members.contains_key(&from) {
                    self.leavers.insert(from);
                }
            }
            Message::Members(members) => self.apply_members(now, from, members),
            Message::MembersPart {
                answer,
                part,
                parts,
                members,
            } => self.apply_members_part(now, from, (answer, part, parts), members),
            Message::Versions {
                buckets,
                entries,
                view,
            } => {
                self.reported.insert(from, (view, now));
                self.answer_versions(now, from, buckets, &entries)
            }
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

    // ---------------------------------------------------------------- foca glue

    fn schedule(&mut self, at: Duration, timer: CoreTimer) {
        self.timer_seq += 1;
        self.timers.push(Reverse((at, timer, self.timer_seq)));
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

    fn seed_placeholders(&mut self, now: Duration) {
        // Seeds as down placeholders (boot 0 loses to any real identity): foca's announce
        // to down members then keeps trying them, which merges islands.
        let placeholders: Vec<Member<NodeId>> = self
            .cfg
            .seeds
            .iter()
            .map(|addr| Member::down(NodeId::new(*addr, 0, 0)))
            .collect();
        if let Err(err) = self
            .foca
            .apply_many(placeholders.into_iter(), false, &mut self.runtime)
        {
            debug!(%err, "seed placeholders refused");
        }
        self.drain_runtime(now);
    }

    /// Announces to the seeds and to a few members of the view (foca accepts an announce
    /// by address, whatever identity it names).
    fn announce(&mut self, now: Duration) {
        let mut to = self.cfg.seeds.clone();
        for _ in 0..ANNOUNCE_TO_MEMBERS {
            if let Some(addr) = self.view.random_member(&mut self.rng)
                && !to.contains(&addr)
            {
                to.push(addr);
            }
        }
        for addr in to {
            let placeholder = NodeId::new(addr, 0, 0);
            if let Err(err) = self.foca.announce(placeholder, &mut self.runtime) {
                debug!(%err, "announce failed");
            }
        }
        self.drain_runtime(now);
    }

    fn drain_runtime(&mut self, now: Duration) {
        loop {
            let mut progressed = false;
            while let Some((to, data)) = self.runtime.to_send() {
                progressed = true;
                if self.is_turn_undead_to_live(&to, &data) {
                    self.stats.suppressed_turn_undead += 1;
                    continue;
                }
                self.send(to.addr(), wire::encode_foca(&data));
            }
            while let Some((after, timer)) = self.runtime.to_schedule() {
                progressed = true;
                let instance = self.foca_instance;
                self.schedule(now + after, CoreTimer::Foca { instance, timer });
            }
            while let Some(notification) = self.runtime.to_notify() {
                progressed = true;
                self.handle_notification(now, notification);
            }
            if !progressed {
                break;
            }
        }
        // foca fills a packet with membership updates first and then tries every queued
        // record against the room left, popping the whole queue; while the updates alone
        // fill a packet, let it skip the records.
        view::lock(&self.store).updates_fill_packets =
            self.foca.updates_backlog() >= view::UPDATES_PER_PACKET;
        if self.parked_gossip.is_some()
            && (self.foca.updates_backlog() > 0 || self.foca.custom_broadcast_backlog() > 0)
            && let Some((instance, timer)) = self.parked_gossip.take()
            && instance == self.foca_instance
        {
            self.schedule(now, CoreTimer::Foca { instance, timer });
        }
    }

    /// foca sends `TurnUndead` when a suspicion expires even if the suspect refuted it;
    /// a live node then renews its identity for nothing. Suppress it for live members.
    fn is_turn_undead_to_live(&self, to: &NodeId, data: &[u8]) -> bool {
        // The header first: a lookup in the member map costs more, and almost no packet
        // is a `TurnUndead`.
        let mut codec = PostcardCodec;
        matches!(
            Codec::<NodeId>::decode_header(&mut codec, data),
            Ok(header) if matches!(header.message, FocaMessage::TurnUndead)
        ) && self.view.members.get(&to.addr()) == Some(to)
    }

    fn handle_notification(&mut self, now: Duration, notification: OwnedNotification<NodeId>) {
        match notification {
            OwnedNotification::MemberUp(id) => {
                debug!(member = %id.addr(), boot = id.boot(), "member up");
                self.member_up(now, id);
            }
            OwnedNotification::MemberDown(id) => {
                debug!(member = %id.addr(), boot = id.boot(), "member down");
                if self.view.members.get(&id.addr()) == Some(&id) {
                    self.member_gone(now, id);
                    // A node whose packets may not get out has no standing to declare
                    // anyone down: its failed probes prove nothing of the member. The
                    // instance is rebuilt, so the down is never gossiped (it would reach
                    // the fleet when the cut heals and make a live member rejoin).
                    if self.rejoin_bar_until.is_some() && !self.last_gone_left && !self.leaving {
                        info!(member = %id.addr(), "declared a member down while this node's packets may not get out: rebuilding the membership instance");
                        self.rebuild_foca(now);
                    }
                }
            }
            OwnedNotification::Rename(old, new) => {
                debug!(member = %new.addr(), old_boot = old.boot(), new_boot = new.boot(), "member renamed");
                let was_live = self.view.members.contains_key(&old.addr());
                if was_live {
                    view::lock(&self.store).forget_other_boot(&new);
                    self.insert_member(new);
                    self.reindex(now, new.addr());
                    if old.boot() != new.boot() {
                        self.events.push_back(Event::MemberDown(old));
                        self.events.push_back(Event::MemberUp(new));
                    }
                    self.push_own_record(new.addr());
                    self.membership_changed();
                    self.repair_soon(now);
                }
            }
            OwnedNotification::Active => {
                debug!("connected to the fleet");
                self.active = true;
                self.active_since.get_or_insert(now);
                self.members_synced = false;
                self.members_answer = None;
                self.members_asked = None;
                self.request_members(now, None);
                self.rejoined_after_idle(now);
            }
            OwnedNotification::Idle => {
                if !self.leaving {
                    if !self.last_gone_left {
                        self.idles.push_back(now);
                    }
                    if self.last_gone_left {
                        info!("the last member left the fleet: rebuilding the membership instance");
                    } else {
                        warn!("lost every member: rebuilding the membership instance");
                    }
                    self.rebuild_foca(now);
                }
            }
            OwnedNotification::Defunct => self.disconnected(now),
            OwnedNotification::Rejoin(id) => {
                self.id = id;
                // A second mistaken suspicion takes a whole suspicion time; a refusal
                // comes back within a round trip of the announce that follows a renewal.
                let again = self
                    .last_rejoin
                    .is_some_and(|t| now < t + self.cfg.timing.suspect_to_down);
                self.last_rejoin = Some(now);
                if self.leaving {
                    info!(bump = id.bump(), "declared down while leaving");
                    return;
                }
                if self.ready_at.is_none() {
                    // What a node heard before it was declared down does not count
                    // towards being synced.
                    self.view_confirmed = false;
                    self.active_since = None;
                }
                if again {
                    // Declared down again at once: the fleet refuses this identity (it
                    // knows a newer boot at this address, from before the clock stepped
                    // back), and renewals cannot win against a newer boot.
                    self.raise_boot(
                        now,
                        "the fleet refuses this identity (it knows a newer process at this \
                         address; did the clock step back?)",
                    );
                } else {
                    // The record is unchanged: members that kept it as it was need nothing,
                    // the others pull it when they see this node come back.
                    info!(bump = id.bump(), "declared down while running: rejoined");
                }
                self.reconnect(now);
            }
        }
    }

    /// The node connected again after it lost every member: it was not alone after all.
    /// Hearing the fleet while the fleet does not hear it (its packets do not get out, a
    /// one-way cut) looks just like this, and each time it would take tickets and give
    /// them back. So it stays out of the candidates (for what it does not hold) until a
    /// member answers one of its requests (proof that its packets get out, usually within one anti-entropy period),
    /// or [`REJOIN_BAR_MAX`] at most.
    fn rejoined_after_idle(&mut self, now: Duration) {
        while self
            .idles
            .front()
            .is_some_and(|t| *t + REJOIN_WINDOW <= now)
        {
            self.idles.pop_front();
        }
        if self.idles.is_empty() {
            return;
        }
        let until = now + REJOIN_BAR_MAX;
        if self.rejoin_bar_until.is_some() {
            return;
        }
        info!(
            losses = self.idles.len(),
            "lost every member yet connected again: out of the candidates until a member \
             answers (this node's packets may not get out)"
        );
        self.stats.rejoin_bars += 1;
        self.rejoin_bar_until = Some(until);
        self.schedule(until, CoreTimer::RejoinBar);
        self.bump_record(now);
        self.evaluate_claims = true;
    }

    /// A member answered this node: its packets get out. It competes again once the
    /// suspicions it raised while they did not have run out (one suspicion time and one
    /// probe period): a member it declares down meanwhile is not gossiped (see the
    /// `MemberDown` notification).
    pub(super) fn lift_rejoin_bar(&mut self, now: Duration) {
        if self.rejoin_bar_until.is_none() || self.idles.is_empty() {
            return;
        }
        debug!("a member answered: competing again after the suspicions run out");
        self.idles.clear();
        let until = now + self.cfg.timing.suspect_to_down + self.cfg.timing.probe_period;
        self.rejoin_bar_until = Some(until);
        self.schedule(until, CoreTimer::RejoinBar);
    }

    /// The candidacy bar ends.
    fn end_rejoin_bar(&mut self, now: Duration) {
        if self.rejoin_bar_until.take().is_some() {
            self.idles.clear();
            self.bump_record(now);
            self.evaluate_claims = true;
        }
    }

    /// Raises this node's boot by a step that doubles with every raise, until the fleet
    /// accepts the identity.
    fn raise_boot(&mut self, now: Duration, why: &str) {
        let boot = self.cfg.boot.saturating_add(self.boot_step);
        self.boot_step = self.boot_step.saturating_mul(2).min(1 << 32);
        let id = NodeId::new(self.cfg.addr, boot, 0);
        if let Err(err) = self.foca.change_identity(id, &mut self.runtime) {
            debug!(%err, "cannot raise the boot");
            return;
        }
        warn!(from = self.cfg.boot, to = boot, "{why}: raising the boot");
        self.stats.boot_raises += 1;
        self.view.set_own_boot(self.cfg.boot, boot);
        self.cfg.boot = boot;
        self.id = id;
        self.bump_record(now);
    }

    /// After a change of identity foca is disconnected and deaf until a packet addressed
    /// to the new identity arrives, and its timers are gone; members may still know only
    /// the old one (two that renewed at once address each other by the old identities and
    /// would never talk again). Announce by address until foca connects again.
    fn reconnect(&mut self, now: Duration) {
        self.disconnected(now);
        self.announce(now);
        let announcing = self
            .timers
            .iter()
            .any(|Reverse((_, timer, _))| *timer == CoreTimer::Announce);
        if !announcing {
            self.schedule(now + self.cfg.timing.announce_interval, CoreTimer::Announce);
        }
    }

    /// The node is no longer connected to the fleet.
    fn disconnected(&mut self, now: Duration) {
        if self.active {
            self.inactive_since = now;
            self.last_heard = Some(now);
        }
        self.active = false;
    }

    /// A live member is gone (declared down, or this node lost every member).
    fn member_gone(&mut self, now: Duration, id: NodeId) {
        let addr = id.addr();
        self.last_gone_left = self.leavers.remove(&addr);
        if self.last_gone_left {
            info!(member = %addr, "member left the fleet");
        }
        if let Some(name) = self.view.name_of(&addr) {
            self.known_names.insert(addr, name.to_string());
        }
        self.lost_since.entry(addr).or_insert(now);
        self.reported.remove(&addr);
        self.suspects.remove(&addr);
        self.remove_member(&addr);
        // The record stays, out of the view, in case the member comes back with the same
        // boot (a healed partition, a false suspicion): the fleet then need not send it
        // again.
        let boot = view::lock(&self.store).records.get(&addr).map(|r| r.boot);
        self.dormant.push_back((now, addr, boot));
        self.reindex(now, addr);
        self.events.push_back(Event::MemberDown(id));
        self.membership_changed();
    }

    /// Forgets the records of members down for [`DORMANT_FOR`].
    ///
    /// Everything else kept per address of a member that went down (its last name, when it
    /// was lost, whether it was reported as an older namesake) goes with it, and records of
    /// addresses that were never members expire after [`UNATTACHED_FOR`]: fleets whose
    /// workers get fresh addresses must not leak.
    fn forget_dormant(&mut self, now: Duration) {
        while let Some(&(since, addr, boot)) = self.dormant.front() {
            if now < since + DORMANT_FOR {
                break;
            }
            self.dormant.pop_front();
            if self.view.members.contains_key(&addr) {
                continue;
            }
            let mut store = view::lock(&self.store);
            if boot.is_some() && store.records.get(&addr).map(|r| r.boot) == boot {
                store.records.remove(&addr);
            }
            self.known_names.remove(&addr);
            self.lost_since.remove(&addr);
            self.namesakes_reported.remove(&addr);
            self.leavers.remove(&addr);
        }
        let members = &self.view.members;
        view::lock(&self.store).expire_unattached(now, UNATTACHED_FOR, |a| members.contains_key(a));
    }

    /// Adds a live member to the view (and to what the store checks records against).
    fn insert_member(&mut self, id: NodeId) {
        if self.view.members.get(&id.addr()) != Some(&id) {
            self.leavers.remove(&id.addr());
        }
        self.view.insert_member(id);
        view::lock(&self.store).live.insert(id.addr(), id.boot());
    }

    fn remove_member(&mut self, addr: &SocketAddr) {
        self.view.remove_member(addr);
        view::lock(&self.store).live.remove(addr);
    }

    fn member_up(&mut self, now: Duration, id: NodeId) {
        self.insert_member(id);
        view::lock(&self.store).forget_other_boot(&id);
        self.reindex(now, id.addr());
        self.events.push_back(Event::MemberUp(id));
        self.push_own_record(id.addr());
        self.membership_changed();
        self.repair_soon(now);
    }

    /// Brings the repair timer forward when a record went missing.
    fn repair_soon(&mut self, now: Duration) {
        let soon = now + self.cfg.timing.repair_interval;
        if !self.view.missing.is_empty() && self.repair_at > soon {
            self.repair_at = soon;
            self.schedule(soon, CoreTimer::Repair);
        }
    }

    fn push_own_record(&mut self, to: SocketAddr) {
        if self.bug(|b| b.no_direct_repair) {
            return;
        }
        // In a large fleet a member coming up would get one datagram from every member at
        // once: a sample pushes, the newcomer pulls the rest in bulk.
        let members = self.view.members.len();
        if members > repair::PUSH_FANIN
            && !self
                .rng
                .random_bool(repair::PUSH_FANIN as f64 / members as f64)
        {
            return;
        }
        let own = self.own_record();
        self.send_records(to, &[own]);
    }

    fn membership_changed(&mut self) {
        // Anything blocked on an unknown member may change; grow foca's retransmissions
        // with the cluster.
        self.evaluate_claims = true;
        let size = self.view.members.len() + 1;
        let wanted = timing::max_transmissions(size);
        view::lock(&self.store).relay_probability = view::relay_probability(size, wanted.get());
        if wanted != timing::max_transmissions(self.foca_cluster_size) {
            self.foca_cluster_size = size;
            if let Err(err) = self.foca.set_config(self.cfg.timing.foca_config(size)) {
                debug!(%err, "foca refused the new config");
            }
        }
    }

    fn rebuild_foca(&mut self, now: Duration) {
        self.stats.rebuilds += 1;
        let renewed = self.id.renewed();
        self.id = renewed;
        self.foca_instance = self.foca_instance.wrapping_add(1);
        self.foca = Self::build_foca(
            renewed,
            &self.cfg,
            &self.store,
            &mut self.rng,
            self.foca_cluster_size,
        );
        self.runtime = AccumulatingRuntime::new();
        self.disconnected(now);
        self.active_since = None;
        self.view_confirmed = false;
        let mut gone: Vec<NodeId> = self.view.members.values().copied().collect();
        gone.sort_unstable();
        for id in gone {
            self.member_gone(now, id);
        }
        self.seed_placeholders(now);
        self.bump_record(now);
        self.reconnect(now);
    }

    fn reindex(&mut self, now: Duration, addr: SocketAddr) {
        let missing = self.view.missing.len();
        let touched = {
            let store = view::lock(&self.store);
            self.view.reindex(addr, &store, now)
        };
        // A claim may wait on a missing record only: the record that arrives may say
        // nothing of its resource, so every claim is looked at again.
        if self.view.missing.len() < missing {
            self.evaluate_claims = true;
        }
        self.dirty.extend(touched);
    }

    // ---------------------------------------------------------------- own record

    fn set_ready(&mut self, now: Duration) {
        if !self.ready {
            self.ready = true;
            self.ready_at = Some(now);
            info!(
                members = self.view.members.len(),
                "synced: ready to take over"
            );
            self.bump_record(now);
            self.dirty.extend(self.claims.keys().cloned());
        }
    }

    /// Rebuilds the own record from the claims, bumps its version and spreads it.
    ///
    /// The version rises past both the stored one and any higher version of this boot's
    /// record seen from peers (they would keep preferring that copy). When it cannot rise
    /// any more, the node raises its boot, which starts versions again.
    pub(crate) fn bump_record(&mut self, now: Duration) {
        let boot = self.cfg.boot;
        let floor = {
            let store = view::lock(&self.store);
            let stored = store
                .records
                .get(&self.cfg.addr)
                .filter(|r| r.boot == boot)
                .map(|r| r.version);
            let seen = store.own_seen.filter(|s| s.0 == boot).map(|s| s.1);
            stored.max(seen)
        };
        let Some(version) = floor.map_or(Some(0), |v| v.checked_add(1)) else {
            self.raise_boot(
                now,
                "this node's record version is at its maximum (a forged copy?)",
            );
            self.reconnect(now);
            return;
        };
        let record = self.build_record(version);
        self.install_record(now, record);
    }

    fn build_record(&self, version: u64) -> Record {
        Record {
            addr: self.cfg.addr,
            name: self.cfg.name.clone(),
            boot: self.cfg.boot,
            version,
            ready: self.ready,
            claims: self
                .claims
                .iter()
                .filter(|(_, c)| c.candidate() || c.held())
                .map(|(resource, c)| Claim {
                    resource: resource.clone(),
                    tickets: c.tickets,
                    // Barred after reconnecting, the node keeps competing only for what it
                    // holds: it takes nothing new, and a holder that comes back from a
                    // cut keeps its lease where its rank says so.
                    candidate: c.candidate()
                        && self.state != NodeState::Superseded
                        && (self.rejoin_bar_until.is_none() || c.held()),
                    held: c.held(),
                })
                .collect(),
        }
    }

    fn publish_record(&mut self, now: Duration) {
        let record = self.build_record(0);
        self.install_record(now, record);
    }

    fn install_record(&mut self, now: Duration, record: Record) {
        let encoded = record.encode();
        // The handler stores it and queues it for gossip.
        match self.foca.add_broadcast(&encoded) {
            Ok(_) => {}
            Err(err) => warn!(%err, "own record not queued for gossip"),
        }
        view::lock(&self.store).offer_own(record);
        if let Err(err) = self.foca.broadcast(&mut self.runtime) {
            debug!(%err, "broadcast failed");
        }
        self.drain_runtime(now);
    }

    // ---------------------------------------------------------------- after each input

    fn after_input(&mut self, now: Duration) {
        if self.bug(|b| b.suspect_is_gone) {
            self.drop_suspects(now);
        }
        // Records that arrived by any path.
        let changed = std::mem::take(&mut view::lock(&self.store).changed);
        self.stats.invalid_records = view::lock(&self.store).invalid;
        for addr in changed {
            self.reindex(now, addr);
        }
        if !self.ready
            && (self.synced(now) || (self.active && self.bug(|b| b.acquire_before_synced)))
        {
            self.set_ready(now);
        } else if !self.ready && self.ready_escape_due(now) {
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
        self.update_state(now);
        if self.cfg.report_suspicions {
            self.scan_suspects(now);
        }
        let fingerprint = self.view.fingerprint();
        if fingerprint != self.last_fingerprint {
            self.last_fingerprint = fingerprint;
            self.stats.view_changes += 1;
        }
        // Lease rules, then the owner reports, until nothing changes.
        for _ in 0..4 {
            if self.dirty.is_empty() && !self.evaluate_claims {
                break;
            }
            let dirty = std::mem::take(&mut self.dirty);
            let evaluate: Vec<String> = if std::mem::take(&mut self.evaluate_claims) {
                self.claims.keys().cloned().collect()
            } else {
                dirty.iter().cloned().collect()
            };
            for resource in &evaluate {
                if self.claims.contains_key(resource) {
                    self.evaluate(now, resource);
                }
            }
            for resource in dirty {
                if self.claims.contains_key(&resource) || self.watched.contains(&resource) {
                    self.report_owners(resource);
                }
            }
            let changed = std::mem::take(&mut view::lock(&self.store).changed);
            for addr in changed {
                self.reindex(now, addr);
            }
        }
    }

    /// foca reports no suspicions: derive them from member states, at most every 10 ms.
    fn scan_suspects(&mut self, now: Duration) {
        if now < self.suspects_scanned + Duration::from_millis(10)
            && self.suspects_scanned != Duration::ZERO
        {
            return;
        }
        self.suspects_scanned = now;
        let mut suspect_now = BTreeSet::new();
        let mut raised = Vec::new();
        for member in self.foca.iter_members() {
            if member.state() == foca::State::Suspect {
                let id = *member.id();
                suspect_now.insert(id.addr());
                if !self.suspects.contains(&id.addr()) {
                    raised.push(id);
                }
            }
        }
        for id in raised {
            self.stats.suspicions_raised += 1;
            self.lost_since.entry(id.addr()).or_insert(now);
            self.events.push_back(Event::MemberSuspect(id));
        }
        let cleared: Vec<SocketAddr> = self.suspects.difference(&suspect_now).copied().collect();
        for addr in cleared {
            if let Some(id) = self.view.members.get(&addr).copied() {
                self.stats.suspicions_refuted += 1;
                self.lost_since.remove(&addr);
                self.events.push_back(Event::MemberAlive(id));
            }
        }
        self.suspects = suspect_now;
    }

    /// Planted bug: the live set follows foca's *alive* members only.
    fn drop_suspects(&mut self, now: Duration) {
        let alive: BTreeMap<SocketAddr, NodeId> = self
            .foca
            .iter_members()
            .filter(|m| m.state() == foca::State::Alive)
            .map(|m| (m.id().addr(), *m.id()))
            .collect();
        let gone: Vec<SocketAddr> = self
            .view
            .members
            .keys()
            .filter(|a| !alive.contains_key(a))
            .copied()
            .collect();
        let back: Vec<NodeId> = alive
            .values()
            .filter(|id| !self.view.members.contains_key(&id.addr()))
            .copied()
            .collect();
        for addr in gone {
            self.remove_member(&addr);
            self.reindex(now, addr);
        }
        for id in back {
            self.insert_member(id);
            self.reindex(now, id.addr());
        }
    }

    /// Synced: connected, holding a whole membership answer and the record of every live
    /// member, and either a peer confirmed the same view (equal digests) or the node has
    /// been connected for `sync_timeout`. The confirmation matters: a newcomer may have
    /// heard of only some members when it first connects.
    fn synced(&self, now: Duration) -> bool {
        self.active
            && self.members_synced
            && self.view.missing.is_empty()
            && (self.view_confirmed
                || self
                    .active_since
                    .is_some_and(|t| now >= t + self.cfg.sync_timeout))
    }

    /// The readiness escape: connected with a whole membership answer for `sync_timeout`,
    /// and a record has been missing for the claim escape's patience (`handoff_timeout`
    /// plus one anti-entropy period) despite repair: a member whose record does not
    /// decode here (a newer build) or a phantom must not keep the node from ever being
    /// ready.
    fn ready_escape_due(&self, now: Duration) -> bool {
        let patience = self.cfg.handoff_timeout + self.cfg.timing.anti_entropy_interval;
        self.active
            && self.members_synced
            && self
                .active_since
                .is_some_and(|t| now >= t + self.cfg.sync_timeout)
            && self
                .view
                .missing
                .values()
                .map(|m| m.since)
                .min()
                .is_some_and(|since| now >= since + patience)
    }

    fn report_owners(&mut self, resource: String) {
        let owners = self.owners(&resource);
        if self.owners_seen.get(&resource) != Some(&owners) {
            self.owners_seen.insert(resource.clone(), owners.clone());
            self.events
                .push_back(Event::OwnersChanged { resource, owners });
        }
    }

    fn check_superseded(&mut self, now: Duration) {
        if self.state == NodeState::Superseded {
            return;
        }
        for old in self.view.older_namesakes(&self.cfg.addr) {
            if self.namesakes_reported.insert(old) {
                warn!(%old, "an older process with this name still runs; it will stand down");
                self.events.push_back(Event::SupersedesOther { old });
            }
        }
        if let Some(by) = self.view.superseded(&self.cfg.addr) {
            warn!(%by, "a newer process with this name runs: standing down");
            self.state = NodeState::Superseded;
            self.events
                .push_back(Event::StateChanged(NodeState::Superseded));
            self.events.push_back(Event::Superseded { by });
            self.lose_all(now, LostReason::Superseded);
            self.bump_record(now);
        }
    }

    /// How long a disconnected node must hear nobody before it runs alone: one suspicion
    /// and one announce-to-down period, in which a fleet that still runs would have
    /// probed or announced to it.
    fn alone_quiet(&self) -> Duration {
        self.cfg.timing.suspect_to_down + self.cfg.timing.announce_to_down_interval
    }

    /// Whether a disconnected node may run alone: it has heard from no member, former
    /// member or seed for [`Core::alone_quiet`]. A node that hears a fleet it cannot
    /// reach (its outgoing packets are lost) is not alone: running alone it would take
    /// tickets, rejoin at the next announce, yield, and again.
    fn may_run_alone(&self, now: Duration) -> bool {
        self.last_heard
            .is_none_or(|t| now >= t + self.alone_quiet())
    }

    /// Schedules a look at whether the node may run alone, when its quiet time ends.
    fn check_alone_later(&mut self) {
        if let Some(heard) = self.last_heard {
            let at = heard + self.alone_quiet();
            if self.alone_check_at.is_none_or(|t| t < at) {
                self.alone_check_at = Some(at);
                self.schedule(at, CoreTimer::AloneCheck);
            }
        }
    }

    fn update_state(&mut self, now: Duration) {
        if matches!(
            self.state,
            NodeState::Superseded | NodeState::Left | NodeState::Leaving
        ) {
            return;
        }
        let state = if self.leaving {
            NodeState::Leaving
        } else if !self.ready {
            NodeState::Joining
        } else if self.active {
            NodeState::Active
        } else if self.may_run_alone(now) {
            NodeState::Alone
        } else {
            self.check_alone_later();
            NodeState::Joining
        };
        if state != self.state {
            info!(from = %self.state, to = %state, "state changed");
            self.state = state;
            self.events.push_back(Event::StateChanged(state));
        }
    }
}
#[cfg(test)]
mod tests;
