//! The invariant checkers. They run as events happen, on incremental state, so a
//! 1000-node run stays fast; `checks` counts every evaluation so a fast run cannot come
//! from skipped checks. The world tells them what happens through `Checks`' methods, and
//! they read the world through a `Fleet`: the node slots, the partition in effect, the plan,
//! and the ground `Truth` of who holds and who competes. `ownership` holds the bounds on
//! holders (checked as ownership changes), `liveness` the periodic checks.
//!
//! What each checker promises, with its id, is tabled once, in `docs/simulator.md`
//! ("What the checkers promise").

mod liveness;
mod ownership;

use std::collections::{BTreeMap, BTreeSet};

use gossip_election::proto::LostReason;
use serde::Serialize;

use crate::net::Partition;
use crate::scenario::{MS, Plan, S};
use crate::slots::Slots;

/// Settle time: how long the network must be free of faults before S2 and P1 apply.
pub const SETTLE: u64 = 20 * S;
/// L1's bound.
pub const CONVERGE_WITHIN: u64 = 30 * S;
/// Planned moves by different nodes closer than this are concurrent: each decides on a
/// view that may lack the other's news (no coordinator orders them), so the checkers
/// take the second as a fault.
pub const CONCURRENT_MOVES: u64 = S;
/// L2's bound: the LAN profile's suspicion (1 s) + probe period (200 ms) + 2 s. In quorum
/// mode the crashed holder's promises must run out first: `promise_for` more (and Q3's
/// bound is the same).
pub const FAILOVER_WITHIN: u64 = 3200 * MS;
/// How long L1's condition must hold before the fleet counts as converged (covers a
/// suspicion still running when the views first look equal).
pub const HOLD: u64 = 3 * S;
/// L4: most acquisitions of one resource by one node in [`CUT_WINDOW`] while a one-way
/// cut is in effect.
pub const CUT_ACQUISITIONS: usize = 2;
/// L4's window.
pub const CUT_WINDOW: u64 = 60 * S;
/// How long after a one-way cut heals a down of another member counts as stale.
pub const STALE_WINDOW: u64 = 5 * S;
/// H1's bound.
pub const ACTIVE_WITHIN: u64 = 15 * S;
/// How long after a paused node resumes a down declaration of it still counts as caused by
/// the pause: a suspicion raised while it was frozen turns into a down within the LAN
/// profile's suspicion (1 s) unless its refutation gets there first.
pub const PAUSE_DOWN_WINDOW: u64 = 2 * S;

/// Why a holder yielded the ticket a handoff measures from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffKind {
    /// The holder shut down gracefully.
    Leave,
    /// The holder's application withdrew.
    Withdraw,
    /// A higher-ranked candidate displaced the holder: a restarted node taking its ticket
    /// back once ready, or a node that obtained the resource again.
    TakeBack,
}

/// Handoff times by why the holder yielded, ns.
#[derive(Clone, Debug, Default)]
pub struct Handoffs {
    pub leave: Vec<u64>,
    pub withdraw: Vec<u64>,
    pub take_back: Vec<u64>,
}

/// A pause of a node: which process, until when, and whether anyone declared it down.
#[derive(Clone, Copy, Debug)]
struct PauseWindow {
    boot: u64,
    from: u64,
    until: u64,
    declared_down: bool,
}

/// What the fleet is converging after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Start-up.
    Boot,
    /// A heal of the network during the chaos phase (other faults may interfere).
    Heal,
    /// The final heal: nothing interferes any more.
    FinalHeal,
}

/// One invariant that failed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    pub invariant: String,
    pub at_ms: u64,
    pub detail: String,
}

/// Fault effects, summed over a batch for "sometimes" coverage.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Effects {
    /// Members declared down while a partition was active.
    pub partition_downs: u64,
    /// Crashes that hit a holder.
    pub owner_crashes: u64,
    /// Heals that found views or owners diverged.
    pub heals_diverged: u64,
    /// Acquisitions by a node with a drifting clock.
    pub drift_acquisitions: u64,
    /// Pauses that froze a holder.
    pub paused_holders: u64,
    /// Nodes that raised their boot: restarted with the clock stepped back, they were
    /// refused until they did.
    pub boot_raises: u64,
    /// Graceful leaves of a node that held a lease.
    pub leaving_holders: u64,
    /// Holders cut off and replaced by a process with their name at another address.
    pub rescheduled_holders: u64,
    /// Processes that stood down because a newer one with their name appeared.
    pub superseded: u64,
}

/// The ground truth of ownership the checkers judge against, kept by the world's
/// application model.
pub(crate) struct Truth {
    /// Holders per resource: from acquisition until the application dropped the lease
    /// (or the forced yield, or a crash).
    pub holders: Vec<BTreeSet<u32>>,
    /// Holders that were told to stop (lost) and have not dropped yet.
    pub told: Vec<BTreeSet<u32>>,
    /// Whether the workload wants node i to compete for resource r.
    pub competing: Vec<Vec<bool>>,
}

impl Truth {
    pub fn new(plan: &Plan) -> Self {
        let resources = plan.tickets.len();
        Truth {
            holders: vec![BTreeSet::new(); resources],
            told: vec![BTreeSet::new(); resources],
            competing: plan.competes.clone(),
        }
    }
}

/// What the checkers read of the world at one instant (between windows, in `(time, node)`
/// order): the node slots, the network's partition, the plan and the [`Truth`].
pub(crate) struct Fleet<'a> {
    pub now: u64,
    pub nodes: &'a Slots,
    pub partition: &'a Partition,
    pub plan: &'a Plan,
    pub truth: &'a Truth,
}

/// Checker state.
#[derive(Debug)]
pub struct Checks {
    tickets: Vec<u16>,
    /// Holders per (view fingerprint, resource).
    fp_holders: BTreeMap<(u64, usize), u32>,
    pub violations: Vec<Violation>,
    pub checks: u64,
    boot_end: u64,
    last_disturbance: u64,
    /// When a live member was last declared down outside a partition.
    last_false_down: u64,
    /// When a node that ran alone last joined others: two memberships merged.
    last_alone_join: u64,
    /// The last planned move (obtain, withdraw, leave): when, and by which node.
    last_move: Option<(u64, u32)>,
    last_partition_change: u64,
    lossless: bool,
    /// Converging since, and after what.
    converge_from: Option<(u64, Phase)>,
    /// Whether L1 has been evaluated since `converge_from` was set.
    evaluated: bool,
    heal_convergences: Vec<u64>,
    /// Whether the heal L1 is converging after removed a partition.
    healing_partition: bool,
    /// Every convergence after a heal that removed a partition, ms.
    pub partition_heals: Vec<u64>,
    pub heal_convergence_ms: Option<u64>,
    pub boot_convergence_ms: Option<u64>,
    converged_once: bool,
    converged_since: Option<u64>,
    stable_after: Option<u64>,
    pending_failover: Vec<Option<u64>>,
    pub failovers: Vec<u64>,
    /// When `r`'s ticket was last yielded, and why.
    last_yield: Vec<Option<(u64, Option<HandoffKind>)>>,
    pub handoffs: Vec<u64>,
    /// Why each holder was told to stop, until it yields: `(node, resource)`.
    lost_reasons: BTreeMap<(u32, usize), LostReason>,
    /// `handoffs`, by why the holder yielded (handoffs of other kinds are in neither).
    pub handoffs_by_kind: Handoffs,
    /// The last pause of each node.
    pauses_by_node: BTreeMap<u32, PauseWindow>,
    /// Pauses that froze a node.
    pub pauses: u64,
    /// Pauses whose node was declared down by any node while frozen or within
    /// [`PAUSE_DOWN_WINDOW`] after it resumed.
    pub paused_declared_down: u64,
    pub ownership_changes: u64,
    pub false_downs: u64,
    pub effects: Effects,
    stable_loss: bool,
    /// The workload withdraws and obtains resources: acquisitions follow it, not faults.
    workload_churn: bool,
    ongoing: bool,
    /// Acquisitions per node and resource during one-node one-way cuts, within the last
    /// [`CUT_WINDOW`] of the cut in effect.
    cut_acquisitions: BTreeMap<(u32, usize), std::collections::VecDeque<u64>>,
    /// The cut `cut_acquisitions` counts for.
    cut_counted: Option<crate::net::Partition>,
    /// The most acquisitions of one resource by one node within [`CUT_WINDOW`] of a
    /// one-way cut.
    pub cut_acquisitions_max: u64,
    /// When each retired address was retired, oldest first (see [`Checks::address_retired`]).
    retired: std::collections::VecDeque<u64>,
    retired_total: u64,
    /// When a (re)started node last became ready.
    last_ready: Option<u64>,
    /// When two (re)started nodes last became ready together (see
    /// [`Checks::newcomer_ready`]).
    concurrent_ready: u64,
    /// The node whose outgoing packets are cut now, if any.
    pub cut_node: Option<u32>,
    /// When the last one-way cut of a node healed, and which node it was.
    pub cut_healed: Option<(u64, u32)>,
    /// Live members other than the cut node declared down by other nodes within
    /// [`STALE_WINDOW`] after a one-way cut healed: stale suspicions of the cut node
    /// reaching the fleet.
    pub downs_after_cut: u64,
    /// Quorum mode's margins, in quorum mode.
    quorum: Option<gossip_election::proto::QuorumMargins>,
    /// Q2: the highest fencing term acquired per resource.
    max_term: Vec<u64>,
    /// Q3: per resource, since when a partition left its holder outside the majority
    /// group, and that group.
    pending_majority: Vec<Option<(u64, u8)>>,
    /// Q3: how long the majority side took to acquire, per partition that cut a holder off.
    pub majority_failovers: Vec<u64>,
}

impl Checks {
    pub fn new(plan: &Plan) -> Self {
        let resources = plan.tickets.len();
        Checks {
            tickets: plan.tickets.clone(),
            fp_holders: BTreeMap::new(),
            violations: Vec::new(),
            checks: 0,
            boot_end: plan.boot_end,
            last_disturbance: 0,
            last_false_down: 0,
            last_alone_join: 0,
            last_move: None,
            last_partition_change: 0,
            lossless: plan.loss == 0.0 && plan.duplicate == 0.0 && plan.burst.is_none(),
            converge_from: Some((0, Phase::Boot)),
            evaluated: false,
            heal_convergences: Vec::new(),
            healing_partition: false,
            partition_heals: Vec::new(),
            heal_convergence_ms: None,
            boot_convergence_ms: None,
            converged_once: false,
            converged_since: None,
            stable_after: None,
            pending_failover: vec![None; resources],
            failovers: Vec::new(),
            last_yield: vec![None; resources],
            handoffs: Vec::new(),
            lost_reasons: BTreeMap::new(),
            handoffs_by_kind: Handoffs::default(),
            pauses_by_node: BTreeMap::new(),
            pauses: 0,
            paused_declared_down: 0,
            ownership_changes: 0,
            false_downs: 0,
            effects: Effects::default(),
            stable_loss: plan.loss <= 0.05 && plan.burst.is_none(),
            workload_churn: plan.kinds.contains(&"churn"),
            ongoing: false,
            cut_acquisitions: BTreeMap::new(),
            cut_counted: None,
            cut_acquisitions_max: 0,
            retired: std::collections::VecDeque::new(),
            retired_total: 0,
            last_ready: None,
            concurrent_ready: 0,
            cut_node: None,
            cut_healed: None,
            downs_after_cut: 0,
            quorum: plan.quorum,
            max_term: vec![0; resources],
            pending_majority: vec![None; resources],
            majority_failovers: Vec::new(),
        }
    }

    pub fn converging(&self) -> bool {
        self.converge_from.is_some()
    }

    /// An ongoing fault (a loss burst) keeps the fleet disturbed until it ends.
    pub fn disturbing(&mut self, on: bool, at: u64) {
        self.ongoing = on;
        self.disturbed(at, false);
    }

    fn last_disturbance(&self, now: u64) -> u64 {
        if self.ongoing {
            now
        } else {
            self.last_disturbance
        }
    }

    pub fn disturbed(&mut self, at: u64, partition: bool) {
        self.last_disturbance = self.last_disturbance.max(at);
        // A fault while converging mid-run (or at boot) makes the bound meaningless.
        if self
            .converge_from
            .is_some_and(|(from, p)| p != Phase::FinalHeal && at > from)
        {
            self.converge_from = None;
            self.converged_since = None;
        }
        if partition {
            self.last_partition_change = self.last_partition_change.max(at);
        }
        // A fault cancels pending failover bounds: the network is no longer healthy.
        if at > 0 {
            for p in &mut self.pending_failover {
                if p.is_some_and(|t| t < at) {
                    *p = None;
                }
            }
            for p in &mut self.pending_majority {
                if p.is_some_and(|(t, _)| t < at) {
                    *p = None;
                }
            }
        }
    }

    /// The network healed; `last` for the final heal of the run, `partition` when a
    /// partition was in effect until now.
    pub fn heal(&mut self, at: u64, last: bool, partition: bool) {
        // Q3 is a bound for a partition in effect.
        self.pending_majority.iter_mut().for_each(|p| *p = None);
        if !last
            && self
                .converge_from
                .is_some_and(|(_, p)| p == Phase::FinalHeal)
        {
            return;
        }
        // A partition healed during a loss burst leaves a network still faulty: no bound,
        // as a fault that starts after the heal cancels it. (The final heal ends bursts.)
        if !last && self.ongoing {
            return;
        }
        // The final heal may come at the instant a partition's heal did.
        let same_instant = self.converge_from.is_some_and(|(from, _)| from == at);
        self.healing_partition = partition || (same_instant && self.healing_partition);
        self.converge_from = Some((at, if last { Phase::FinalHeal } else { Phase::Heal }));
        self.converged_since = None;
        self.evaluated = false;
        self.stable_after = None;
    }

    pub fn owner_crashed(&mut self, r: usize, at: u64, partitioned: bool) {
        self.effects.owner_crashes += 1;
        let healthy = !partitioned && at >= self.last_disturbance(at).max(self.boot_end) + SETTLE;
        if healthy && self.stable_loss {
            self.pending_failover[r] = Some(at);
        }
    }

    /// Node `node` (process `boot`) is frozen from `at` until `until`.
    pub fn paused(&mut self, node: u32, boot: u64, at: u64, until: u64) {
        self.pauses += 1;
        let window = PauseWindow {
            boot,
            from: at,
            until,
            declared_down: false,
        };
        self.pauses_by_node.insert(node, window);
    }

    /// A node declared the live node `node` (process `boot`) down: counted once per pause
    /// if it falls in that pause's window.
    pub fn declared_down(&mut self, at: u64, node: u32, boot: u64) {
        if let Some(p) = self.pauses_by_node.get_mut(&node)
            && p.boot == boot
            && !p.declared_down
            && (p.from..=p.until + PAUSE_DOWN_WINDOW).contains(&at)
        {
            p.declared_down = true;
            self.paused_declared_down += 1;
        }
    }

    /// Node `i`'s process ended: what it was told to stop holding ends with it.
    pub fn process_ended(&mut self, i: u32) {
        self.lost_reasons.retain(|(node, _), _| *node != i);
    }

    /// Node `i` was told to stop holding `r`, for `reason`.
    pub fn lost(&mut self, i: u32, r: usize, reason: LostReason) {
        self.lost_reasons.insert((i, r), reason);
    }

    pub fn false_down(&mut self, at: u64, during_partition: bool) {
        self.false_downs += 1;
        if during_partition {
            self.effects.partition_downs += 1;
        } else {
            // The failure detector erred (loss): available mode then elects on both sides.
            self.last_false_down = self.last_false_down.max(at);
        }
    }

    /// A node that (re)started became ready. Two that do within `window` (a few one-way
    /// latencies) of each other each acquire before hearing of the other's acquisition: a
    /// documented limit of concurrent start-up, so the second counts as a fault. Further
    /// apart, the hold-off after becoming ready must keep them within tickets.
    /// (This bears on P1 alone: it does not delay convergence bounds.)
    pub fn newcomer_ready(&mut self, at: u64, window: u64) {
        if self.last_ready.is_some_and(|t| at < t + window) {
            self.concurrent_ready = at;
        }
        self.last_ready = Some(at);
    }

    /// A process moved to a fresh address: its old one may stay in memberships (as down)
    /// for as long as the library keeps down members.
    pub fn address_retired(&mut self, at: u64) {
        self.retired.push_back(at);
        self.retired_total += 1;
    }

    /// Addresses retired so far.
    pub fn addresses_retired(&self) -> u64 {
        self.retired_total
    }

    /// Addresses a membership may hold beyond the slots: those retired recently enough to
    /// be kept as down members.
    fn retired_recently(&mut self, now: u64) -> usize {
        let keep = gossip_election::proto::DORMANT_FOR.as_nanos() as u64 + 60 * S;
        while self.retired.front().is_some_and(|t| *t + keep <= now) {
            self.retired.pop_front();
        }
        self.retired.len()
    }

    /// Node `i` declared live member `j` down on a whole network. (The cut node itself
    /// drops its own view when it rebuilds its membership: not counted.)
    pub fn down_after_cut(&mut self, at: u64, i: u32, j: u32) {
        if self
            .cut_healed
            .is_some_and(|(healed, cut)| i != cut && j != cut && at < healed + STALE_WINDOW)
        {
            self.downs_after_cut += 1;
            self.violate(
                "no-stale-downs-after-cut",
                at,
                format!("n{i} declared the live n{j} down just after a one-way cut healed"),
            );
        }
    }

    /// A planned move by `node`: one close after another node's is a fault (see
    /// [`CONCURRENT_MOVES`]).
    pub fn planned_move(&mut self, at: u64, node: u32) {
        // Q3 counts on the nodes up at the partition.
        self.pending_majority.iter_mut().for_each(|p| *p = None);
        if self
            .last_move
            .is_some_and(|(t, other)| other != node && at < t + CONCURRENT_MOVES)
        {
            self.disturbed(at, false);
        }
        self.last_move = Some((at, node));
    }

    /// A node that ran alone joined others: S2 waits the settle time, as after a heal.
    pub fn alone_joined(&mut self, at: u64) {
        self.last_alone_join = self.last_alone_join.max(at);
    }

    pub(crate) fn violate(&mut self, invariant: &str, at: u64, detail: String) {
        // One report per invariant and resource-second is plenty.
        if self
            .violations
            .iter()
            .any(|v| v.invariant == invariant && v.at_ms / 1000 == at / S && v.detail == detail)
        {
            return;
        }
        self.violations.push(Violation {
            invariant: invariant.to_string(),
            at_ms: at / MS,
            detail,
        });
    }
}
