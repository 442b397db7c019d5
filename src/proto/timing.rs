//! Timing profile and core configuration.

use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::time::Duration;

use crate::wire::{ENVELOPE_LEN, MAX_DATAGRAM};

/// How fast the fleet probes, suspects, gossips and repairs.
///
/// Failure detection speed and tolerance of process stalls are one knob: a node that
/// stalls longer than about `suspect_to_down + probe_period / 2` is declared down.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Timing {
    /// SWIM probe period: each node probes one member this often.
    pub probe_period: Duration,
    /// How long a direct probe waits for its ack before indirect probes go out.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a suspected member has to refute before it is declared down.
    pub suspect_to_down: Duration,
    /// Period of foca's piggyback gossip.
    pub gossip_interval: Duration,
    /// Members gossiped to each period.
    pub gossip_fanout: usize,
    /// Re-announce to the join list this often while not connected.
    pub announce_interval: Duration,
    /// Announce to members held as down this often (how partitions heal).
    pub announce_to_down_interval: Duration,
    /// Period of record anti-entropy (one digest exchange with a random member).
    pub anti_entropy_interval: Duration,
    /// Period of the pull of records a node lacks.
    pub repair_interval: Duration,
    /// The next candidate in rank of a resource probes its holders itself, every
    /// `probe_period`, and suspects a holder (through foca, which lets it refute) after one
    /// period without an answer: a crashed holder is suspected within about one probe
    /// period instead of whenever foca's round-robin reaches it, so failover no longer
    /// waits for a random prober. Costs two small datagrams a probe period per watched
    /// holder.
    pub successor_probes: bool,
}

impl Timing {
    /// The LAN default: a crash fails over in about 1.3 s, and stalls up to about 1 s are
    /// tolerated.
    pub fn lan() -> Self {
        Timing {
            probe_period: Duration::from_millis(200),
            probe_rtt: Duration::from_millis(50),
            indirect_probes: 5,
            suspect_to_down: Duration::from_millis(1000),
            gossip_interval: Duration::from_millis(50),
            gossip_fanout: 4,
            announce_interval: Duration::from_millis(500),
            announce_to_down_interval: Duration::from_secs(2),
            anti_entropy_interval: Duration::from_secs(1),
            repair_interval: Duration::from_millis(100),
            successor_probes: true,
        }
    }

    /// foca's configuration for a cluster of about `cluster_size` members.
    pub(crate) fn foca_config(&self, cluster_size: usize) -> foca::Config {
        let size = u32::try_from(cluster_size.max(1)).unwrap_or(u32::MAX);
        let mut config = foca::Config::new_lan(NonZeroU32::new(size).unwrap_or(NonZeroU32::MIN));
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        config.num_indirect_probes = nonzero(self.indirect_probes);
        config.suspect_to_down_after = self.suspect_to_down;
        config.max_transmissions = max_transmissions(cluster_size);
        // Down members are kept as long as their records (`DORMANT_FOR`), then forgotten:
        // fleets whose workers get fresh addresses must not leak. Seeds are put back as
        // placeholders (`Core::seed_placeholders`), so partitions still heal through them.
        config.remove_down_after = Some(super::DORMANT_FOR);
        config.max_packet_size = nonzero(MAX_DATAGRAM - ENVELOPE_LEN);
        config.notify_down_members = true;
        config.periodic_announce = Some(foca::PeriodicParams {
            frequency: self.announce_interval.max(Duration::from_secs(5)),
            num_members: NonZeroUsize::MIN,
        });
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.announce_to_down_interval,
            num_members: nonzero(2),
        });
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_interval,
            num_members: nonzero(self.gossip_fanout),
        });
        config
    }
}

/// A timing value outside its allowed range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {value}, outside the allowed range {range}")]
pub struct TimingError {
    /// The field, as named in [`Timing`] or [`CoreConfig`].
    pub field: &'static str,
    /// The value given, formatted.
    pub value: String,
    /// The allowed range, formatted.
    pub range: String,
}

/// Shortest interval or timeout a profile may use: shorter would wake the node for
/// nothing (and zero would make it loop forever).
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Longest interval or timeout a profile may use: longer is a mistake, and far longer
/// would overflow the clock arithmetic.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

fn check_duration(field: &'static str, value: Duration) -> Result<(), TimingError> {
    if (MIN_INTERVAL..=MAX_INTERVAL).contains(&value) {
        Ok(())
    } else {
        Err(TimingError {
            field,
            value: format!("{value:?}"),
            range: format!("{MIN_INTERVAL:?}..={MAX_INTERVAL:?}"),
        })
    }
}

fn check_count(field: &'static str, value: usize, max: usize) -> Result<(), TimingError> {
    if (1..=max).contains(&value) {
        Ok(())
    } else {
        Err(TimingError {
            field,
            value: value.to_string(),
            range: format!("1..={max}"),
        })
    }
}

impl Timing {
    /// Checks every field against its allowed range: each interval and timeout within
    /// [`MIN_INTERVAL`]`..=`[`MAX_INTERVAL`], `probe_rtt` shorter than `probe_period`,
    /// `indirect_probes` in `1..=16` and `gossip_fanout` in `1..=64`.
    pub fn validate(&self) -> Result<(), TimingError> {
        check_duration("probe_period", self.probe_period)?;
        check_duration("probe_rtt", self.probe_rtt)?;
        check_duration("suspect_to_down", self.suspect_to_down)?;
        check_duration("gossip_interval", self.gossip_interval)?;
        check_duration("announce_interval", self.announce_interval)?;
        check_duration("announce_to_down_interval", self.announce_to_down_interval)?;
        check_duration("anti_entropy_interval", self.anti_entropy_interval)?;
        check_duration("repair_interval", self.repair_interval)?;
        check_count("indirect_probes", self.indirect_probes, 16)?;
        check_count("gossip_fanout", self.gossip_fanout, 64)?;
        if self.probe_rtt >= self.probe_period {
            return Err(TimingError {
                field: "probe_rtt",
                value: format!("{:?}", self.probe_rtt),
                range: format!("below probe_period ({:?})", self.probe_period),
            });
        }
        Ok(())
    }
}

impl Default for Timing {
    fn default() -> Self {
        Timing::lan()
    }
}

fn nonzero(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

/// Above this many members a fleet is large: updates are forwarded foca's LAN number of
/// times, and records are relayed by a sample of the members that hear them (see
/// `super::store::relay_probability`): both cost every member work per update, n² in all.
pub(crate) const LARGE_FLEET: usize = 256;

/// Fewest transmissions of an update in a fleet of up to [`LARGE_FLEET`] members.
///
/// A suspicion must reach the suspect, which refutes it, within the suspicion time. In a
/// fleet of three, foca's value (4) sends it to the suspect about twice, once by each other
/// member; at 5 % loss both copies are lost once in 400 suspicions, and with probes every
/// 200 ms a small fleet suspects someone every few seconds. Eight sends it about four
/// times from each member.
const MIN_SMALL_FLEET_TRANSMISSIONS: f64 = 8.0;

/// foca's `floor(4·log10(n+1))`, plus up to four more in fleets of up to
/// [`LARGE_FLEET`] members, and at least [`MIN_SMALL_FLEET_TRANSMISSIONS`] there: foca's
/// own value leaves stragglers that learn of a crash only through their own probe and
/// truncates suspicions before the suspect hears. Larger fleets use foca's (and
/// memberlist's) value: it already reaches everyone, and every extra retransmission is
/// paid by every member for every update (n² work per fleet-wide change).
pub(crate) fn max_transmissions(cluster_size: usize) -> NonZeroU8 {
    let base = (4.0 * ((cluster_size as f64) + 1.0).log10())
        .floor()
        .max(1.0);
    let tx = if cluster_size <= LARGE_FLEET {
        (2.0 * base)
            .min(base + 4.0)
            .max(MIN_SMALL_FLEET_TRANSMISSIONS)
    } else {
        base
    };
    NonZeroU8::new(tx.min(255.0) as u8).unwrap_or(NonZeroU8::MIN)
}

/// How far ahead of a node's wall clock (or its own boot, if that is later) a boot may be.
pub const MAX_BOOT_AHEAD: Duration = Duration::from_secs(24 * 3600);

/// When a node that reaches nobody may run alone: take, on its own view, every ticket it
/// ranks for.
///
/// A node that cannot reach its fleet (a typo in the join list, a firewall) and runs
/// alone takes every resource it competes for while the fleet runs them too. `Never`
/// makes that impossible: such a node holds nothing and stays `joining` until it
/// connects, and a node that loses every member gives its tickets up
/// ([`LostReason::Isolated`](super::LostReason::Isolated)). `After(d)` (the default,
/// with the node's `sync_timeout`) runs alone after `d` without reaching anybody, and says
/// so at WARN.
///
/// Parses from `never` or a duration with its unit (`3s`, `500ms`, `2m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Alone {
    /// Never run alone.
    Never,
    /// Run alone after this long without reaching anybody at start.
    After(Duration),
}

impl Default for Alone {
    fn default() -> Alone {
        Alone::After(Duration::from_secs(3))
    }
}

impl std::str::FromStr for Alone {
    type Err = String;

    fn from_str(text: &str) -> Result<Alone, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("never") {
            return Ok(Alone::Never);
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{text:?}: write `never` or a duration such as 3s or 500ms"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            _ => return Err(format!("{text:?}: the unit is ms, s or m (e.g. 3s)")),
        };
        Ok(Alone::After(d))
    }
}

impl std::fmt::Display for Alone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Alone::Never => f.write_str("never"),
            Alone::After(d) => write!(f, "after {d:?}"),
        }
    }
}

/// What a partition may cost: availability, or a job running twice.
///
/// See `docs/design.md` ("Safety modes") for what each promises and the margins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Safety {
    /// Each side of a partition elects its own owners once the other side is declared
    /// down; after the heal the ranking merges back to `tickets` holders.
    #[default]
    Available,
    /// At most `tickets` holders fleet-wide, under partitions, pauses and clock-rate drift
    /// within [`QuorumMargins`]: a node holds a ticket only while a strict majority of
    /// `members` nodes (itself included) promise it that ticket, each for a bounded time
    /// on its own clock, and it gives the ticket up before those promises can run out.
    /// A fleet must not run more than `members` names.
    Quorum {
        /// How many nodes the fleet has (M): a majority is more than M/2 of them.
        members: u16,
    },
}

impl Safety {
    /// The fleet size of quorum mode, if it is on.
    pub fn quorum(self) -> Option<u16> {
        match self {
            Safety::Available => None,
            Safety::Quorum { members } => Some(members),
        }
    }
}

impl std::fmt::Display for Safety {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Safety::Available => f.write_str("available"),
            Safety::Quorum { members } => write!(f, "quorum of {members}"),
        }
    }
}

/// The clock-rate drift quorum mode tolerates between any two nodes' monotonic clocks:
/// 1 % (crystal oscillators drift by parts per million; this leaves room for virtual
/// machines whose clocks are steered).
pub const MAX_DRIFT: f64 = 0.01;

/// The timing of quorum mode, derived from the profile by [`CoreConfig::quorum_margins`].
///
/// A holder asks every member to renew its promise each `renew_every`. An acceptor's
/// promise lasts `promise_for` from when the request reached it, on its own clock. The
/// holder counts its tenure from when it *sent* the round a majority answered, and tells
/// its application to stop `fence_after` later unless a newer round was answered. So,
/// with clock rates within `1 ± ρ` (ρ = [`MAX_DRIFT`]), a pause of the holder's process of
/// at most `max_pause`, and an application that stops within `drop_within` of being told:
///
/// ```text
/// fence_after / (1 - ρ) + max_pause + drop_within  <  promise_for / (1 + ρ)
/// ```
///
/// and the holder has stopped before any acceptor's promise ends. A node that starts
/// promises nothing for `start_wait`, after which every promise of its previous process
/// has ended.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct QuorumMargins {
    /// How often a holder renews its promises (the probe period).
    pub renew_every: Duration,
    /// How long after sending a round a majority answered the holder may keep its ticket
    /// (eight renewals: loss rarely costs a tenure).
    pub fence_after: Duration,
    /// The longest stall of a holder's process the promise covers (the suspicion time,
    /// the profile's stall tolerance).
    pub max_pause: Duration,
    /// How soon the application stops after it was told its lease is lost (the
    /// `handoff_timeout`).
    pub drop_within: Duration,
    /// How long an acceptor's promise lasts, from when the request reached it.
    pub promise_for: Duration,
    /// How long a node promises nothing after it starts.
    pub start_wait: Duration,
}

/// Everything the sans-IO core needs to start.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CoreConfig {
    /// Stable, fleet-unique name (ranking uses it).
    pub name: String,
    /// Where peers send to.
    pub addr: SocketAddr,
    /// Rises on every process start.
    pub boot: u64,
    /// Addresses to join through (the own address is ignored).
    pub seeds: Vec<SocketAddr>,
    /// The timing profile.
    pub timing: Timing,
    /// How long a connected node waits for the records it lacks before it is ready
    /// anyway (the readiness escape).
    pub sync_timeout: Duration,
    /// Whether and when a node that reaches nobody runs alone.
    pub alone: Alone,
    /// How long a displaced holder may take to drop its lease before it is yielded anyway.
    pub handoff_timeout: Duration,
    /// How long a node that stepped down stays out of the candidates.
    pub step_down_backoff: Duration,
    /// Seed of the core's random choices (foca's and its own).
    pub rng_seed: u64,
    /// The wall clock (time since the unix epoch) when the core starts, if the caller
    /// has one. Boots are unix milliseconds; with a wall clock the core refuses foca
    /// packets naming an identity whose boot is more than [`MAX_BOOT_AHEAD`] ahead of it
    /// (such an identity would win every address conflict for good).
    pub wall_clock: Option<Duration>,
    /// Available (the default) or quorum mode.
    pub safety: Safety,
    /// Report suspicions ([`crate::proto::Event::MemberSuspect`]); costs a scan of the
    /// membership at most every 10 ms, so it is off unless someone watches.
    pub report_suspicions: bool,
    /// Deliberate bugs, for the simulator's own tests (see [`CoreConfig::plant`]).
    pub(crate) bugs: PlantedBugs,
}

/// Deliberate bugs the simulator plants to prove its checkers catch them. They take
/// effect only in builds with the `planted-bugs` feature.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Acquire without waiting to be synced.
    pub acquire_before_synced: bool,
    /// Keep holding when displaced.
    pub never_yield_when_displaced: bool,
    /// Treat suspected members as gone.
    pub suspect_is_gone: bool,
    /// No direct record repair: records move only by foca broadcast.
    pub no_direct_repair: bool,
    /// Acquire as soon as ready, without the one-probe-round-trip hold-off that lets an
    /// acquisition made just before this node was ready reach it.
    pub no_ready_hold_off: bool,
    /// Quorum mode: keep holding when the promises of a majority run out (no self-fencing).
    pub no_self_fencing: bool,
}

impl CoreConfig {
    /// A configuration with the documented defaults.
    pub fn new(name: impl Into<String>, addr: SocketAddr, boot: u64) -> Self {
        CoreConfig {
            name: name.into(),
            addr,
            boot,
            seeds: Vec::new(),
            timing: Timing::lan(),
            sync_timeout: Duration::from_secs(3),
            alone: Alone::default(),
            handoff_timeout: Duration::from_secs(5),
            step_down_backoff: Duration::from_secs(5),
            rng_seed: boot ^ 0x9e37_79b9_7f4a_7c15,
            wall_clock: None,
            safety: Safety::Available,
            report_suspicions: false,
            bugs: PlantedBugs::default(),
        }
    }
}

impl CoreConfig {
    /// Plants deliberate bugs, for the simulator's own tests: they take effect only in
    /// builds with the `planted-bugs` feature, and are ignored otherwise.
    #[doc(hidden)]
    pub fn plant(&mut self, bugs: PlantedBugs) {
        self.bugs = bugs;
    }

    /// Checks the timing profile and the timeouts (each within
    /// [`MIN_INTERVAL`]`..=`[`MAX_INTERVAL`]).
    pub fn validate_timing(&self) -> Result<(), TimingError> {
        self.timing.validate()?;
        check_duration("sync_timeout", self.sync_timeout)?;
        if let Alone::After(wait) = self.alone {
            check_duration("alone", wait)?;
        }
        check_duration("handoff_timeout", self.handoff_timeout)?;
        check_duration("step_down_backoff", self.step_down_backoff)
    }

    /// Quorum mode's renewal period, fencing window and promise length, derived from the
    /// timing profile and `handoff_timeout` (see [`QuorumMargins`] for the formula).
    pub fn quorum_margins(&self) -> QuorumMargins {
        let renew_every = self.timing.probe_period;
        let fence_after = renew_every * 8;
        let max_pause = self.timing.suspect_to_down;
        let drop_within = self.handoff_timeout;
        // A round trip of slack on top of the bound.
        let slack = self.timing.probe_rtt;
        let promise_for = (fence_after.div_f64(1.0 - MAX_DRIFT) + max_pause + drop_within)
            .mul_f64(1.0 + MAX_DRIFT)
            + slack;
        let start_wait = promise_for.mul_f64((1.0 + MAX_DRIFT) / (1.0 - MAX_DRIFT)) + slack;
        QuorumMargins {
            renew_every,
            fence_after,
            max_pause,
            drop_within,
            promise_for,
            start_wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_absurd_timings_are_refused_with_the_field_named() {
        assert_eq!(Timing::lan().validate(), Ok(()));
        let zero = Timing {
            repair_interval: Duration::ZERO,
            ..Timing::lan()
        };
        let err = zero.validate().unwrap_err();
        assert_eq!(err.field, "repair_interval");
        assert!(err.to_string().contains("repair_interval is 0ns"), "{err}");
        let forever = Timing {
            suspect_to_down: Duration::MAX,
            ..Timing::lan()
        };
        assert_eq!(forever.validate().unwrap_err().field, "suspect_to_down");
        let rtt = Timing {
            probe_rtt: Duration::from_millis(300),
            ..Timing::lan()
        };
        assert_eq!(rtt.validate().unwrap_err().field, "probe_rtt");
        let fanout = Timing {
            gossip_fanout: 0,
            ..Timing::lan()
        };
        assert_eq!(fanout.validate().unwrap_err().field, "gossip_fanout");
        let mut cfg = CoreConfig::new("w0", "127.0.0.1:7000".parse().unwrap(), 1);
        cfg.handoff_timeout = Duration::MAX;
        assert_eq!(cfg.validate_timing().unwrap_err().field, "handoff_timeout");
    }

    #[test]
    fn max_transmissions_adds_to_foca_lan_in_small_fleets_only() {
        assert_eq!(max_transmissions(1).get(), 8);
        assert_eq!(max_transmissions(3).get(), 8);
        assert_eq!(max_transmissions(7).get(), 8);
        assert_eq!(max_transmissions(10).get(), 8);
        assert_eq!(max_transmissions(100).get(), 12);
        assert_eq!(max_transmissions(256).get(), 13);
        assert_eq!(max_transmissions(257).get(), 9);
        assert_eq!(max_transmissions(1000).get(), 12);
    }
}

/// Why a core could not start.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The node name is empty or too long.
    #[error("invalid node name: {0}")]
    Name(#[from] crate::record::RecordError),
    /// A timing value is out of range.
    #[error("invalid timing: {0}")]
    Timing(#[from] TimingError),
    /// Quorum mode with a fleet of zero members.
    #[error("quorum mode needs the fleet's size: members must be at least 1")]
    QuorumMembers,
    /// An IPv6 address with a scope (link-local): the scope does not travel in member
    /// identities, so peers could not answer.
    #[error(
        "{0} carries an IPv6 scope id: scoped (link-local) addresses cannot be members; use a global or unique-local address"
    )]
    ScopedAddress(SocketAddr),
}

/// Whether `addr` is an IPv6 address with a scope id.
pub(super) fn is_scoped(addr: &SocketAddr) -> bool {
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
        if self.safety == (Safety::Quorum { members: 0 }) {
            return Err(ConfigError::QuorumMembers);
        }
        match std::iter::once(&self.addr)
            .chain(&self.seeds)
            .find(|a| is_scoped(a))
        {
            Some(scoped) => Err(ConfigError::ScopedAddress(*scoped)),
            None => Ok(()),
        }
    }
}
