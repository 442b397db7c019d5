//! The foca glue: building (and rebuilding) the foca instance, turning its notifications
//! into members up and gone, suspicions, and forgetting members that stayed down.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use foca::{Codec, Message as FocaMessage, OwnedNotification, Timer};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use tracing::{debug, info, warn};

use std::sync::{Arc, Mutex};

use foca::{AccumulatingRuntime, Foca, PostcardCodec};

use super::store::{RecordHandler, Store};
use super::{
    Core, CoreConfig, CoreTimer, DORMANT_FOR, Event, FocaInstance, NodeId, UNATTACHED_FOR, timing,
};
use crate::wire;

/// The most downs `Membership::downs` keeps (it is scanned on packets from non-members).
const MAX_DOWNS_KEPT: usize = 1024;

/// How many members a node must have declared down itself, while it heard nobody, to
/// conclude it was the one cut off (see `Core::cut_off`).
const CUT_OFF_DOWNS: usize = 3;

/// Foca membership and what this node remembers of members.
pub(super) struct Membership {
    pub(super) foca: FocaInstance,
    pub(super) foca_instance: u32,
    /// foca's periodic gossip timer, held while foca has nothing to gossip (it would only
    /// re-arm itself) and released as soon as it has: an idle node does not wake every
    /// gossip interval.
    pub(super) parked_gossip: Option<(u32, Timer<NodeId>)>,
    pub(super) foca_cluster_size: usize,
    pub(super) runtime: AccumulatingRuntime<NodeId>,
    /// The last name seen at each address, so a member that went down keeps its name.
    pub(super) known_names: BTreeMap<SocketAddr, String>,
    /// Older processes with this node's name already reported.
    pub(super) namesakes_reported: BTreeSet<SocketAddr>,
    /// Live members that said they are leaving gracefully.
    pub(super) leavers: BTreeSet<SocketAddr>,
    /// Whether the member that went last had said it was leaving.
    pub(super) last_gone_left: bool,
    /// Suspected members, when suspicions are reported.
    pub(super) suspects: BTreeSet<SocketAddr>,
    pub(super) suspects_scanned: Duration,
    /// When each live member was first suspected (or declared down), for failover times.
    pub(super) lost_since: BTreeMap<SocketAddr, Duration>,
    /// When foca last renewed this node's identity because it was declared down.
    pub(super) last_rejoin: Option<Duration>,
    /// Members that went down, oldest first: `(when, address, boot of its record)`. What
    /// is kept of each is forgotten [`DORMANT_FOR`] after it went down, unless the member
    /// came back.
    pub(super) dormant: VecDeque<(Duration, SocketAddr, Option<u64>)>,
    /// How much the next boot raise adds (doubles with every raise).
    pub(super) boot_step: u64,
    /// The timer token of the current foca instance, read off the timers it schedules: a
    /// successor probe's suspicion schedules foca's own suspicion timer with it.
    pub(super) timer_token: Option<foca::TimerToken>,
    /// This node's foca incarnation, read off the packets it sends.
    pub(super) own_incarnation: u16,
    /// When members that did not say they were leaving went down within the last
    /// [`REJOIN_WINDOW`](super::REJOIN_WINDOW), oldest first, and whether this node
    /// declared each itself (its own suspicion ran out) while it heard nobody at all.
    pub(super) downs: VecDeque<(Duration, SocketAddr, bool)>,
    /// Set while one of this node's own suspicion timers runs in foca.
    pub(super) declaring: bool,
    /// When this node last received a datagram that decoded, from anyone.
    pub(super) last_datagram: Duration,
}

impl Core {
    pub(super) fn build_foca(
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

    pub(super) fn drain_runtime(&mut self, now: Duration) {
        loop {
            let mut progressed = false;
            while let Some((to, data)) = self.membership.runtime.to_send() {
                progressed = true;
                let mut codec = PostcardCodec;
                if let Ok(header) = Codec::<NodeId>::decode_header(&mut codec, &data[..]) {
                    if header.src == *self.membership.foca.identity() {
                        self.membership.own_incarnation = header.src_incarnation;
                    }
                    if self.is_turn_undead_to_live(&to, &header.message) {
                        self.stats.suppressed_turn_undead += 1;
                        continue;
                    }
                }
                self.send(to.addr(), wire::encode_foca(&data));
            }
            while let Some((after, timer)) = self.membership.runtime.to_schedule() {
                progressed = true;
                if let Some(token) = timer_token(&timer) {
                    self.membership.timer_token = Some(token);
                }
                let instance = self.membership.foca_instance;
                self.schedule(now + after, CoreTimer::Foca { instance, timer });
            }
            while let Some(notification) = self.membership.runtime.to_notify() {
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
        super::store::lock(&self.store).updates_fill_packets =
            self.membership.foca.updates_backlog() >= super::store::UPDATES_PER_PACKET;
        if self.membership.parked_gossip.is_some()
            && (self.membership.foca.updates_backlog() > 0
                || self.membership.foca.custom_broadcast_backlog() > 0)
            && let Some((instance, timer)) = self.membership.parked_gossip.take()
            && instance == self.membership.foca_instance
        {
            self.schedule(now, CoreTimer::Foca { instance, timer });
        }
    }

    /// foca sends `TurnUndead` when a suspicion expires even if the suspect refuted it;
    /// a live node then renews its identity for nothing. Suppress it for live members.
    pub(super) fn is_turn_undead_to_live(
        &self,
        to: &NodeId,
        message: &FocaMessage<NodeId>,
    ) -> bool {
        // The message first: a lookup in the member map costs more, and almost no packet
        // is a `TurnUndead`.
        matches!(message, FocaMessage::TurnUndead) && self.view.members.get(&to.addr()) == Some(to)
    }

    pub(super) fn handle_notification(
        &mut self,
        now: Duration,
        notification: OwnedNotification<NodeId>,
    ) {
        match notification {
            OwnedNotification::MemberUp(id) => {
                debug!(member = %id.addr(), boot = id.boot(), "member up");
                self.member_up(now, id);
            }
            OwnedNotification::MemberDown(id) => {
                debug!(member = %id.addr(), boot = id.boot(), "member down");
                if self.view.members.get(&id.addr()) == Some(&id) {
                    self.member_gone(now, id);
                    if !self.membership.last_gone_left {
                        // Declared by this node's own suspicion, and after hearing nothing
                        // from anyone for a suspicion time: it may be the one cut off.
                        let deaf = self.membership.declaring
                            && now
                                >= self.membership.last_datagram + self.cfg.timing.suspect_to_down;
                        let downs = &mut self.membership.downs;
                        downs.push_back((now, id.addr(), deaf));
                        while downs.len() > MAX_DOWNS_KEPT
                            || downs
                                .front()
                                .is_some_and(|(t, _, _)| *t + super::REJOIN_WINDOW < now)
                        {
                            downs.pop_front();
                        }
                    }
                    // A node whose packets may not get out has no standing to declare
                    // anyone down: its failed probes prove nothing of the member. The
                    // instance is rebuilt, so the down is never gossiped (it would reach
                    // the fleet when the cut heals and make a live member rejoin).
                    if self.conn.rejoin_bar_until.is_some()
                        && !self.membership.last_gone_left
                        && !self.leaving
                    {
                        info!(member = %id.addr(), "declared a member down while this node's packets may not get out: rebuilding the membership instance");
                        self.rebuild_foca(now);
                    }
                }
            }
            OwnedNotification::Rename(old, new) => {
                debug!(member = %new.addr(), old_boot = old.boot(), new_boot = new.boot(), "member renamed");
                let was_live = self.view.members.contains_key(&old.addr());
                if was_live {
                    super::store::lock(&self.store).forget_other_boot(&new);
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
                self.conn.active = true;
                self.conn.active_since.get_or_insert(now);
                self.sync.members_synced = false;
                self.sync.members_answer = None;
                self.sync.members_asked = None;
                self.request_members(now, None);
                self.rejoined_after_idle(now);
            }
            OwnedNotification::Idle => {
                if !self.leaving {
                    if !self.membership.last_gone_left {
                        self.conn.idles.push_back(now);
                    }
                    if self.membership.last_gone_left {
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
                    .membership
                    .last_rejoin
                    .is_some_and(|t| now < t + self.cfg.timing.suspect_to_down);
                self.membership.last_rejoin = Some(now);
                if self.leaving {
                    info!(bump = id.bump(), "declared down while leaving");
                    return;
                }
                if self.sync.ready_at.is_none() {
                    // What a node heard before it was declared down does not count
                    // towards being synced.
                    self.sync.view_confirmed = false;
                    self.conn.active_since = None;
                }
                if !again && self.cut_off(now) {
                    info!(
                        "declared down after declaring members down that nobody else did: this \
                         node was cut off; rebuilding the membership instance"
                    );
                    self.rebuild_cut_off(now);
                    return;
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

    /// A live member is gone (declared down, or this node lost every member).
    pub(super) fn member_gone(&mut self, now: Duration, id: NodeId) {
        let addr = id.addr();
        self.membership.last_gone_left = self.membership.leavers.remove(&addr);
        if self.membership.last_gone_left {
            info!(member = %addr, "member left the fleet");
        }
        if let Some(name) = self.view.name_of(&addr) {
            self.membership.known_names.insert(addr, name.to_string());
        }
        self.membership.lost_since.entry(addr).or_insert(now);
        self.sync.reported.remove(&addr);
        self.membership.suspects.remove(&addr);
        self.remove_member(&addr);
        // The record stays, out of the view, in case the member comes back with the same
        // boot (a healed partition, a false suspicion): the fleet then need not send it
        // again.
        let boot = super::store::lock(&self.store)
            .records
            .get(&addr)
            .map(|r| r.boot);
        self.membership.dormant.push_back((now, addr, boot));
        self.reindex(now, addr);
        self.events.push_back(Event::MemberDown(id));
        self.membership_changed();
    }

    /// Applies what this node learnt of one member (or of itself) to foca, gossiped on like
    /// foca's own news, and handles what foca does in answer.
    pub(super) fn apply_to_foca(&mut self, now: Duration, member: foca::Member<NodeId>) {
        if let Err(err) = self.membership.foca.apply_many(
            std::iter::once(member),
            true,
            &mut self.membership.runtime,
        ) {
            debug!(%err, "foca refused a membership update");
        }
        self.drain_runtime(now);
    }

    /// Whether this node was most likely the one cut off: within the last
    /// [`REJOIN_WINDOW`](super::REJOIN_WINDOW) it declared at least [`CUT_OFF_DOWNS`]
    /// members down itself after hearing nothing at all, from anyone, for a suspicion
    /// time. (In a partition between groups a node hears its own group; a node cut off
    /// one way hears everyone; both are left to the other rules.)
    ///
    /// The downs such a node declared are false, and still queued in its membership
    /// instance; gossiped once the cut heals, or answered with `TurnUndead` when those
    /// members speak to it, they would make every live member they name rejoin. It starts
    /// a clean instance instead (see [`Core::rebuild_foca`]), which forgets them.
    pub(super) fn cut_off(&mut self, now: Duration) -> bool {
        let window = super::REJOIN_WINDOW;
        let downs = &mut self.membership.downs;
        while downs.front().is_some_and(|(t, _, _)| *t + window < now) {
            downs.pop_front();
        }
        downs.iter().filter(|(_, _, deaf)| *deaf).count() >= CUT_OFF_DOWNS
    }

    /// A foca packet from `from`, which is not a live member here: if this node declared
    /// it down itself and was most likely the one cut off, it rebuilds its membership
    /// instance before the packet is handled (see [`Core::cut_off`]).
    pub(super) fn heard_from_the_declared_down(&mut self, now: Duration, from: SocketAddr) {
        let declared = self
            .membership
            .downs
            .iter()
            .any(|(_, addr, deaf)| *deaf && *addr == from);
        if declared && !self.leaving && self.cut_off(now) {
            info!(
                member = %from,
                "a member this node declared down speaks to it, and nobody else declared \
                 members down: this node was cut off; rebuilding the membership instance"
            );
            self.rebuild_cut_off(now);
        }
    }

    /// Rebuilds the membership instance of a node that was cut off. It counts as losing
    /// every member: the cut may have been one way (it heard the fleet, nobody heard it),
    /// so once connected again it competes for nothing new until a member answers it
    /// (see `Core::rejoined_after_idle`).
    fn rebuild_cut_off(&mut self, now: Duration) {
        self.conn.idles.push_back(now);
        self.rebuild_foca(now);
    }

    /// Forgets the records of members down for [`DORMANT_FOR`].
    ///
    /// Everything else kept per address of a member that went down (its last name, when it
    /// was lost, whether it was reported as an older namesake) goes with it, and records of
    /// addresses that were never members expire after [`UNATTACHED_FOR`]: fleets whose
    /// workers get fresh addresses must not leak.
    pub(super) fn forget_dormant(&mut self, now: Duration) {
        while let Some(&(since, addr, boot)) = self.membership.dormant.front() {
            if now < since + DORMANT_FOR {
                break;
            }
            self.membership.dormant.pop_front();
            if self.view.members.contains_key(&addr) {
                continue;
            }
            let mut store = super::store::lock(&self.store);
            if boot.is_some() && store.records.get(&addr).map(|r| r.boot) == boot {
                store.records.remove(&addr);
            }
            self.membership.known_names.remove(&addr);
            self.membership.lost_since.remove(&addr);
            self.membership.namesakes_reported.remove(&addr);
            self.membership.leavers.remove(&addr);
        }
        let members = &self.view.members;
        super::store::lock(&self.store)
            .expire_unattached(now, UNATTACHED_FOR, |a| members.contains_key(a));
    }

    /// Adds a live member to the view (and to what the store checks records against).
    pub(super) fn insert_member(&mut self, id: NodeId) {
        if self.view.members.get(&id.addr()) != Some(&id) {
            self.membership.leavers.remove(&id.addr());
        }
        self.view.insert_member(id);
        super::store::lock(&self.store)
            .live
            .insert(id.addr(), id.boot());
    }

    pub(super) fn remove_member(&mut self, addr: &SocketAddr) {
        self.view.remove_member(addr);
        super::store::lock(&self.store).live.remove(addr);
    }

    pub(super) fn member_up(&mut self, now: Duration, id: NodeId) {
        self.insert_member(id);
        super::store::lock(&self.store).forget_other_boot(&id);
        self.reindex(now, id.addr());
        self.events.push_back(Event::MemberUp(id));
        self.push_own_record(id.addr());
        self.membership_changed();
        self.repair_soon(now);
    }

    pub(super) fn membership_changed(&mut self) {
        // Anything blocked on an unknown member may change; grow foca's retransmissions
        // with the cluster.
        self.leases.evaluate_claims = true;
        let size = self.view.members.len() + 1;
        let wanted = timing::max_transmissions(size);
        super::store::lock(&self.store).relay_probability =
            super::store::relay_probability(size, wanted.get());
        if wanted != timing::max_transmissions(self.membership.foca_cluster_size) {
            self.membership.foca_cluster_size = size;
            if let Err(err) = self
                .membership
                .foca
                .set_config(self.cfg.timing.foca_config(size))
            {
                debug!(%err, "foca refused the new config");
            }
        }
    }

    pub(super) fn rebuild_foca(&mut self, now: Duration) {
        self.stats.rebuilds += 1;
        self.membership.downs.clear();
        let renewed = self.id.renewed();
        self.id = renewed;
        self.membership.foca_instance = self.membership.foca_instance.wrapping_add(1);
        self.membership.foca = Self::build_foca(
            renewed,
            &self.cfg,
            &self.store,
            &mut self.rng,
            self.membership.foca_cluster_size,
        );
        self.membership.runtime = AccumulatingRuntime::new();
        self.membership.timer_token = None;
        self.membership.own_incarnation = 0;
        self.disconnected(now);
        self.conn.active_since = None;
        self.sync.view_confirmed = false;
        let mut gone: Vec<NodeId> = self.view.members.values().copied().collect();
        gone.sort_unstable();
        for id in gone {
            self.member_gone(now, id);
        }
        self.seed_placeholders(now);
        self.bump_record(now);
        self.reconnect(now);
    }

    pub(super) fn reindex(&mut self, now: Duration, addr: SocketAddr) {
        let missing = self.view.missing.len();
        let touched = {
            let store = super::store::lock(&self.store);
            self.view.reindex(addr, &store, now)
        };
        // A claim may wait on a missing record only: the record that arrives may say
        // nothing of its resource, so every claim is looked at again.
        if self.view.missing.len() < missing {
            self.leases.evaluate_claims = true;
        }
        self.leases.dirty.extend(touched);
    }

    /// foca reports no suspicions: derive them from member states, at most every 10 ms.
    pub(super) fn scan_suspects(&mut self, now: Duration) {
        if now < self.membership.suspects_scanned + Duration::from_millis(10)
            && self.membership.suspects_scanned != Duration::ZERO
        {
            return;
        }
        self.membership.suspects_scanned = now;
        let mut suspect_now = BTreeSet::new();
        let mut raised = Vec::new();
        for member in self.membership.foca.iter_members() {
            if member.state() == foca::State::Suspect {
                let id = *member.id();
                suspect_now.insert(id.addr());
                if !self.membership.suspects.contains(&id.addr()) {
                    raised.push(id);
                }
            }
        }
        for id in raised {
            self.stats.suspicions_raised += 1;
            self.membership.lost_since.entry(id.addr()).or_insert(now);
            self.events.push_back(Event::MemberSuspect(id));
        }
        let cleared: Vec<SocketAddr> = self
            .membership
            .suspects
            .difference(&suspect_now)
            .copied()
            .collect();
        for addr in cleared {
            if let Some(id) = self.view.members.get(&addr).copied() {
                self.stats.suspicions_refuted += 1;
                self.membership.lost_since.remove(&addr);
                self.events.push_back(Event::MemberAlive(id));
            }
        }
        self.membership.suspects = suspect_now;
    }

    /// Planted bug: the live set follows foca's *alive* members only.
    pub(super) fn drop_suspects(&mut self, now: Duration) {
        let alive: BTreeMap<SocketAddr, NodeId> = self
            .membership
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
}

/// The token a foca timer carries, if it carries one.
fn timer_token(timer: &Timer<NodeId>) -> Option<foca::TimerToken> {
    match timer {
        Timer::SendIndirectProbe { token, .. } | Timer::ChangeSuspectToDown { token, .. } => {
            Some(*token)
        }
        Timer::ProbeRandomMember(token)
        | Timer::PeriodicAnnounce(token)
        | Timer::PeriodicGossip(token)
        | Timer::PeriodicAnnounceDown(token) => Some(*token),
        Timer::RemoveDown(_) => None,
    }
}
