//! `gossip-election run`: a node, and a child process that runs while the node holds a
//! ticket.
//!
//! - acquired: the child starts (`GOSSIP_ELECTION_RESOURCE`, `..._NODE`, `..._LEASE`,
//!   `..._TERM` in its environment);
//! - lost: SIGTERM to the child's group, SIGKILL after `--grace`, then the lease is
//!   dropped: the node does not yield the ticket while the child's processes live (and
//!   the other workers wait the handoff timeout, longer than `--grace`);
//! - the child exits on its own: the lease is dropped and the worker stops competing for
//!   a back-off that doubles with each exit in a row, so a crash loop neither keeps the
//!   ticket nor takes it back from a healthy worker every few seconds;
//! - SIGTERM or SIGINT: the child is stopped first, then the node leaves the fleet.

use std::net::SocketAddr;
use std::time::Duration;

use gossip_election::{
    Candidacy, CommandError, Error, KeyFileError, Keyring, LostReason, Node, NodeState, Plaintext,
    Safety, Seed,
};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::child::{Child, describe};
use crate::{Exit, PlaintextArg, RunArgs};

/// The least time SIGKILL and reaping get between the end of the grace period and the
/// handoff timeout.
const KILL_MARGIN: Duration = Duration::from_millis(500);

/// How long resolving the `--advertise` name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the sidecar until a signal stops it or the node stops.
pub async fn run(args: RunArgs) -> Exit {
    if let Err(message) = check(&args) {
        eprintln!("gossip-election run: {message}");
        return Exit::Usage;
    }
    let mut signals = match Signals::new() {
        Ok(signals) => signals,
        Err(err) => {
            eprintln!("gossip-election run: cannot install the signal handlers: {err}");
            return Exit::Internal;
        }
    };
    crate::child::become_subreaper();
    let node = match start(&args).await {
        Ok(node) => node,
        Err(exit) => return exit,
    };
    let exit = Sidecar {
        args: &args,
        node: &node,
        backoff: Backoff::new(args.backoff, args.backoff_max),
    }
    .supervise(&mut signals)
    .await;
    if exit == Exit::Ok {
        info!("leaving the fleet");
        node.leave().await;
    }
    exit
}

/// What the flags cannot say on their own, checked before the node joins the fleet.
fn check(args: &RunArgs) -> Result<(), String> {
    if let Err(err) = gossip_election::record::validate_resource(&args.resource) {
        return Err(format!("--resource {:?}: {err}", args.resource));
    }
    if args.tickets == 0 {
        return Err("--tickets must be at least 1".to_string());
    }
    if args.grace.saturating_add(KILL_MARGIN) > args.handoff_timeout {
        return Err(format!(
            "--grace {} must be shorter than --handoff-timeout {} by at least {}: other workers \
             take a lost ticket after the handoff timeout (and one anti-entropy period) even while \
             the child runs, so it must be gone by then; lower --grace or raise --handoff-timeout",
            humantime::format_duration(args.grace),
            humantime::format_duration(args.handoff_timeout),
            humantime::format_duration(KILL_MARGIN),
        ));
    }
    if args.backoff.is_zero() || args.backoff > args.backoff_max {
        return Err(format!(
            "--backoff {} must be above zero and at most --backoff-max {}",
            humantime::format_duration(args.backoff),
            humantime::format_duration(args.backoff_max),
        ));
    }
    Ok(())
}

async fn start(args: &RunArgs) -> Result<Node, Exit> {
    let mut builder = Node::builder(&args.name)
        .bind(args.bind)
        .join(&args.join)
        .handoff_timeout(args.handoff_timeout)
        // The node's own step-down back-off is the sidecar's first one.
        .step_down_backoff(args.backoff)
        .alone(args.alone);
    if let Some(members) = args.quorum {
        builder = builder.safety(Safety::Quorum { members });
    }
    if let Some(advertise) = &args.advertise {
        builder = builder.advertise(resolve_advertise(advertise, args.bind).await?);
    }
    if let Some(path) = &args.key_file {
        let keys = Keyring::load(path).map_err(|err| {
            eprintln!("gossip-election run: {}", report(&err));
            match err {
                KeyFileError::Read { .. } => Exit::StartFailed,
                _ => Exit::Usage,
            }
        })?;
        builder = builder.keys(keys).plaintext(match args.plaintext {
            PlaintextArg::Send => Plaintext::SendAndAccept,
            PlaintextArg::Accept => Plaintext::Accept,
            PlaintextArg::Refuse => Plaintext::Refuse,
        });
    }
    if let Some(addr) = args.debug_addr {
        builder = builder.debug_addr(addr);
    }
    builder.start().await.map_err(|err| {
        eprintln!("gossip-election run: {}", report(&err));
        match err {
            Error::Bind { .. } | Error::DebugBind { .. } | Error::Spawn(_) => Exit::StartFailed,
            _ => Exit::Usage,
        }
    })
}

/// The advertise address, or the first address its name resolves to (IPv4 first).
async fn resolve_advertise(advertise: &Seed, bind: SocketAddr) -> Result<SocketAddr, Exit> {
    if let Some(addr) = advertise.addr() {
        return Ok(addr);
    }
    let text = advertise.to_string();
    let resolved =
        tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(text.as_str())).await;
    let mut addrs: Vec<SocketAddr> = match resolved {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(err)) => {
            eprintln!("gossip-election run: cannot resolve --advertise {text}: {err}");
            return Err(Exit::StartFailed);
        }
        Err(_) => {
            eprintln!(
                "gossip-election run: --advertise {text} did not resolve within {RESOLVE_TIMEOUT:?}"
            );
            return Err(Exit::StartFailed);
        }
    };
    // Peers cannot reach a loopback address (Debian maps the host name to 127.0.1.1).
    addrs.sort_by_key(|a| (a.ip().is_loopback(), !a.is_ipv4()));
    let addr = addrs.first().copied().ok_or_else(|| {
        eprintln!("gossip-election run: --advertise {text} resolves to no address");
        Exit::StartFailed
    })?;
    if addr.ip().is_loopback() && !bind.ip().is_loopback() {
        warn!(%addr, "--advertise {text} resolves to a loopback address only: peers on other hosts cannot reach this node");
    }
    Ok(addr)
}

/// An error and its sources, on one line.
fn report(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

struct Sidecar<'a> {
    args: &'a RunArgs,
    node: &'a Node,
    backoff: Backoff,
}

/// How one tenure ended.
enum Tenure {
    /// The lease was lost (the child is stopped); compete on.
    Lost,
    /// The child exited on its own (or could not start): step down, back off.
    ChildExited,
    /// A signal: the child is stopped; leave.
    Signalled,
    /// The node stopped or was superseded: the child is stopped; nothing will come.
    Ended,
}

impl Sidecar<'_> {
    async fn supervise(&mut self, signals: &mut Signals) -> Exit {
        let args = self.args;
        loop {
            // The ticket stays here until the child is gone, lease dropped.
            let obtained = self
                .node
                .obtain_until_dropped(&args.resource, args.tickets)
                .await;
            let mut candidacy = match obtained {
                Ok(candidacy) => candidacy,
                Err(err) => {
                    eprintln!("gossip-election run: {}", report(&err));
                    return match err {
                        Error::Stopped | Error::Command(CommandError::NotRunning(_)) => {
                            Exit::NodeStopped
                        }
                        _ => Exit::Usage,
                    };
                }
            };
            info!(resource = %args.resource, tickets = args.tickets, "competing");
            loop {
                let lease = tokio::select! {
                    biased;
                    name = signals.recv() => {
                        info!(signal = name, "stopping");
                        return Exit::Ok;
                    }
                    lease = candidacy.acquired() => match lease {
                        Ok(lease) => lease,
                        Err(_) => {
                            error!("the node stopped");
                            return Exit::NodeStopped;
                        }
                    },
                };
                match self.tenure(lease, signals).await {
                    Tenure::Lost => continue,
                    Tenure::Signalled => return Exit::Ok,
                    Tenure::ChildExited => break,
                    Tenure::Ended => {
                        error!("a newer process of this name runs, or the node stopped");
                        return Exit::NodeStopped;
                    }
                }
            }
            if let Err(exit) = self.back_off(candidacy, signals).await {
                return exit;
            }
        }
    }

    /// Runs the child for one lease, and drops the lease once the child is gone.
    async fn tenure(&mut self, lease: gossip_election::Lease, signals: &mut Signals) -> Tenure {
        let args = self.args;
        let env = [
            ("GOSSIP_ELECTION_RESOURCE", args.resource.clone()),
            ("GOSSIP_ELECTION_NODE", args.name.clone()),
            ("GOSSIP_ELECTION_LEASE", lease.id().get().to_string()),
            ("GOSSIP_ELECTION_TERM", lease.term().to_string()),
        ];
        let mut child = match Child::spawn(&args.command, &env) {
            Ok(child) => child,
            Err(err) => {
                error!(%err, "cannot start the child");
                return Tenure::ChildExited;
            }
        };
        let started = Instant::now();
        info!(
            pid = child.pid(),
            lease = lease.id().get(),
            "acquired: the child started"
        );
        let ended = tokio::select! {
            biased;
            name = signals.recv() => {
                info!(signal = name, pid = child.pid(), "stopping the child, then leaving");
                Tenure::Signalled
            }
            reason = lease.lost() => {
                info!(reason = reason.as_str(), pid = child.pid(), "lost: stopping the child");
                match reason {
                    LostReason::Superseded | LostReason::Stopped => Tenure::Ended,
                    _ => Tenure::Lost,
                }
            }
            status = child.exited() => {
                let status = status.map_or_else(|err| err.to_string(), describe);
                warn!(pid = child.pid(), %status, ran = ?started.elapsed(), "the child exited on its own: stepping down");
                Tenure::ChildExited
            }
        };
        self.backoff.ran(started.elapsed());
        if let Err(err) = child.stop(args.grace).await {
            error!(%err, "cannot wait for the child");
        }
        drop(lease);
        ended
    }

    /// Stops competing for the back-off; `Err` with the exit if a signal came or the
    /// node stopped meanwhile.
    async fn back_off(&mut self, candidacy: Candidacy, signals: &mut Signals) -> Result<(), Exit> {
        let wait = self.backoff.next();
        warn!(backoff = %humantime::format_duration(wait), "not competing until the back-off ends");
        // The lease is dropped already: this only waits for the yield to go out.
        candidacy.withdraw().await;
        let mut state = self.node.watch_state();
        let ended = async move {
            while !matches!(
                *state.borrow_and_update(),
                NodeState::Left | NodeState::Superseded
            ) {
                if state.changed().await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            biased;
            name = signals.recv() => {
                info!(signal = name, "stopping");
                Err(Exit::Ok)
            }
            () = ended => {
                error!("a newer process of this name runs, or the node stopped");
                Err(Exit::NodeStopped)
            }
            () = tokio::time::sleep(wait) => Ok(()),
        }
    }
}

/// The back-off after the child exits on its own: `initial`, doubled with each exit in a
/// row up to `max`; a child that ran for `max` resets it.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// A child ran this long before it exited.
    fn ran(&mut self, ran: Duration) {
        if ran >= self.max {
            self.next = self.initial;
        }
    }

    fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }
}

/// SIGTERM and SIGINT.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            biased;
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max_and_a_long_run_resets_it() {
        let s = Duration::from_secs;
        let mut backoff = Backoff::new(s(10), s(60));
        let waits: Vec<_> = (0..5).map(|_| backoff.next()).collect();
        assert_eq!(waits, [s(10), s(20), s(40), s(60), s(60)]);
        backoff.ran(s(59));
        assert_eq!(backoff.next(), s(60));
        backoff.ran(s(60));
        assert_eq!(backoff.next(), s(10));
    }
}
