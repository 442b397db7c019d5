//! The tokio driver: one UDP socket, the core's one timer heap, a command channel.
//!
//! It runs on a dedicated thread with its own current-thread runtime, so a busy
//! application runtime cannot delay probes. Everything it does is: feed the core
//! datagrams, deadlines and commands (with `now` from tokio's clock), send what the core
//! wants sent, and publish the core's events to the API's channels. The socket sits
//! behind [`Socket`] so the driver can also run over a simulated network.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::debug;

use crate::error::Error;
use crate::proto::{Core, Event, LeaseId, LostReason, NodeState, Owners};
use crate::seal::{SEAL_OVERHEAD, Sealer};
use crate::seed::SeedNames;
use crate::wire::MAX_DATAGRAM;

/// The datagram socket the driver runs over: tokio's `UdpSocket`, or a simulated one.
pub trait Socket {
    /// Receives one datagram (must be cancel-safe).
    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>>;
    /// Sends one datagram.
    fn send_to(&self, buf: &[u8], target: SocketAddr) -> impl Future<Output = io::Result<usize>>;
}

impl Socket for tokio::net::UdpSocket {
    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> {
        tokio::net::UdpSocket::recv_from(self, buf)
    }

    fn send_to(&self, buf: &[u8], target: SocketAddr) -> impl Future<Output = io::Result<usize>> {
        tokio::net::UdpSocket::send_to(self, buf, target)
    }
}

/// The state of one lease as the API sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClaimStatus {
    /// The latest tenure and, once lost, why.
    pub lease: Option<(LeaseId, Option<LostReason>)>,
    /// The latest tenure's fencing term.
    pub term: u64,
    /// `(ours, effective)` while tickets disagree.
    pub mismatch: Option<(u16, u16)>,
    /// The node stopped: nothing will change any more.
    pub closed: bool,
}

/// Shared between a `Candidacy` and the driver.
#[derive(Debug)]
pub(crate) struct ClaimShared {
    pub candidacy: u64,
    pub status: watch::Sender<ClaimStatus>,
    /// The newest lease handed to the application (0: none).
    pub handed_out: Mutex<LeaseId>,
}

/// A read-only look at the core, run on the protocol thread (it replies through a channel
/// it captured).
pub(crate) type Inspection = Box<dyn FnOnce(&Core, Duration) + Send>;

/// Sees every event the core reports, with the core as it was then (the debug endpoint's
/// event stream).
pub(crate) type Observer = Box<dyn FnMut(&Core, Duration, &Event) + Send>;

/// Requests from the API to the protocol thread.
pub(crate) enum Command {
    Obtain {
        resource: String,
        tickets: u16,
        /// The lease is dropped only once a crate-run job has ended (no forced yield).
        keep_until_dropped: bool,
        reply: oneshot::Sender<Result<Arc<ClaimShared>, Error>>,
    },
    Withdraw {
        resource: String,
        candidacy: u64,
        reply: Option<oneshot::Sender<()>>,
    },
    LeaseDropped {
        resource: String,
        lease: LeaseId,
    },
    Owners {
        resource: String,
        reply: oneshot::Sender<(Owners, Vec<crate::proto::OwnerInfo>)>,
    },
    WatchOwners {
        resource: String,
        reply: oneshot::Sender<watch::Receiver<Owners>>,
    },
    /// Runs a look at the core (at the driver's current time) on the protocol thread.
    Inspect(Inspection),
    Leave {
        reply: oneshot::Sender<()>,
    },
    Crash,
}

/// The protocol loop.
pub(crate) struct Driver<S> {
    pub socket: S,
    pub core: Core,
    pub origin: Instant,
    pub commands: mpsc::UnboundedReceiver<Command>,
    pub state: watch::Sender<NodeState>,
    pub claims: BTreeMap<String, Arc<ClaimShared>>,
    pub owner_watches: BTreeMap<String, watch::Sender<Owners>>,
    pub next_candidacy: u64,
    pub leave_waiters: Vec<oneshot::Sender<()>>,
    pub withdraw_waiters: Vec<(String, oneshot::Sender<()>)>,
    pub observer: Option<Observer>,
    /// Seals and opens datagrams, when the node has keys.
    pub sealer: Option<Sealer>,
    /// Seed names and what they resolved to.
    pub seeds: SeedNames,
    /// Resolutions of seed names under way, one task a name.
    resolving: tokio::task::JoinSet<(String, io::Result<Vec<SocketAddr>>)>,
    /// The core's announce count when the names were last resolved.
    resolved_at_announce: Option<u64>,
}

/// How long one seed name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

impl<S: Socket> Driver<S> {
    pub fn new(
        socket: S,
        core: Core,
        origin: Instant,
        commands: mpsc::UnboundedReceiver<Command>,
        state: watch::Sender<NodeState>,
    ) -> Self {
        Driver {
            socket,
            core,
            origin,
            commands,
            state,
            claims: BTreeMap::new(),
            owner_watches: BTreeMap::new(),
            next_candidacy: 0,
            leave_waiters: Vec::new(),
            withdraw_waiters: Vec::new(),
            observer: None,
            sealer: None,
            seeds: SeedNames::default(),
            resolving: tokio::task::JoinSet::new(),
            resolved_at_announce: None,
        }
    }

    fn now(&self) -> std::time::Duration {
        self.origin.elapsed()
    }

    pub async fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM + SEAL_OVERHEAD + 512];
        loop {
            self.flush().await;
            if self.core.state() == NodeState::Left {
                break;
            }
            self.resolve_seeds();
            let deadline = self.core.poll_timeout().map(|d| self.origin + d);
            let resolving = &mut self.resolving;
            tokio::select! {
                biased;
                _ = sleep_until(deadline) => {
                    let now = self.now();
                    self.core.handle_timeout(now);
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        let now = self.now();
                        let data = &buf[..len];
                        match self.sealer.as_mut().map(|s| s.open(data)) {
                            None => self.core.handle_datagram(now, from, data),
                            Some(Ok(plain)) => self.core.handle_datagram(now, from, &plain),
                            Some(Err(reason)) => self.core.handle_dropped(from, len, reason),
                        }
                    }
                    Err(err) => debug!(%err, "receive failed"),
                },
                command = self.commands.recv() => match command {
                    Some(Command::Crash) => break,
                    Some(command) => self.command(command),
                    None => {
                        // Every handle is gone: leave as if asked to.
                        let now = self.now();
                        self.core.leave(now);
                    }
                },
                Some(joined) = resolving.join_next(), if !resolving.is_empty() => {
                    // Each name as soon as it resolves: a slow one holds up no other.
                    if let Ok(result) = joined
                        && let Some(seeds) = self.seeds.update(vec![result])
                    {
                        let now = self.now();
                        self.core.set_seeds(now, seeds);
                    }
                }
            }
        }
        self.close();
    }

    /// Resolves the seed names when the node starts and again after each announce (the
    /// core announces only while it is not connected), one round at a time.
    fn resolve_seeds(&mut self) {
        let announces = self.core.stats().announces;
        if self.seeds.is_empty()
            || !self.resolving.is_empty()
            || self.resolved_at_announce == Some(announces)
            || self.core.state() == NodeState::Left
        {
            return;
        }
        self.resolved_at_announce = Some(announces);
        for name in self.seeds.names() {
            self.resolving
                .spawn(crate::seed::resolve(name, RESOLVE_TIMEOUT));
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Obtain {
                resource,
                tickets,
                keep_until_dropped,
                reply,
            } => {
                let result = self.core.obtain(now, &resource, tickets);
                if result.is_ok() && keep_until_dropped {
                    self.core.keep_until_dropped(&resource);
                }
                let _ = reply.send(result.map_err(Error::from).map(|()| {
                    self.next_candidacy += 1;
                    let shared = Arc::new(ClaimShared {
                        candidacy: self.next_candidacy,
                        status: watch::Sender::new(ClaimStatus::default()),
                        handed_out: Mutex::new(LeaseId::default()),
                    });
                    // A re-obtain while the old lease is still being yielded keeps its state.
                    if let Some(old) = self.claims.insert(resource.clone(), Arc::clone(&shared)) {
                        shared.status.send_replace(*old.status.borrow());
                        *shared.handed_out.lock().expect("not poisoned") =
                            *old.handed_out.lock().expect("not poisoned");
                    }
                    shared
                }));
            }
            Command::Withdraw {
                resource,
                candidacy,
                reply,
            } => {
                if self
                    .claims
                    .get(&resource)
                    .is_some_and(|c| c.candidacy == candidacy)
                {
                    self.core.withdraw(now, &resource);
                    if let Some(reply) = reply {
                        self.withdraw_waiters.push((resource, reply));
                    }
                } else if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            Command::LeaseDropped { resource, lease } => {
                self.core.lease_dropped(now, &resource, lease);
            }
            Command::Owners { resource, reply } => {
                let _ = reply.send((self.core.owners(&resource), self.core.candidates(&resource)));
            }
            Command::WatchOwners { resource, reply } => {
                self.core.watch(&resource);
                let owners = self.core.owners(&resource);
                let sender = self
                    .owner_watches
                    .entry(resource)
                    .or_insert_with(|| watch::Sender::new(owners));
                let _ = reply.send(sender.subscribe());
            }
            Command::Inspect(look) => look(&self.core, now),
            Command::Leave { reply } => {
                self.leave_waiters.push(reply);
                self.core.leave(now);
            }
            Command::Crash => {}
        }
    }

    /// Sends what the core wants sent and publishes its events, until both are done:
    /// publishing can queue more of either (a lost lease nobody picked up is dropped at
    /// once, which yields it, and may complete a leave).
    async fn flush(&mut self) {
        // A raised boot names a newer process: receivers' replay guards take it as one.
        if let Some(sealer) = self.sealer.as_mut() {
            sealer.set_boot(self.core.id().boot());
        }
        loop {
            let mut progressed = false;
            while let Some(transmit) = self.core.poll_transmit() {
                progressed = true;
                let data = match self.sealer.as_mut() {
                    Some(sealer) => sealer.seal(&transmit.data),
                    None => std::borrow::Cow::Borrowed(transmit.data.as_slice()),
                };
                if let Err(err) = self.socket.send_to(&data, transmit.to).await {
                    debug!(to = %transmit.to, %err, "send failed");
                }
            }
            while let Some(event) = self.core.poll_event() {
                progressed = true;
                self.publish(event);
            }
            if !progressed {
                break;
            }
        }
        // Withdrawals complete once the core no longer holds the resource.
        let own = self.core.own_record();
        let (pending, done): (Vec<_>, Vec<_>) = std::mem::take(&mut self.withdraw_waiters)
            .into_iter()
            .partition(|(resource, _)| own.claim(resource).is_some_and(|c| c.held));
        self.withdraw_waiters = pending;
        for (_, waiter) in done {
            let _ = waiter.send(());
        }
    }

    fn publish(&mut self, event: Event) {
        let now = self.now();
        if let Some(observe) = &mut self.observer {
            observe(&self.core, now, &event);
        }
        match event {
            Event::StateChanged(state) => {
                self.state.send_replace(state);
            }
            Event::Acquired {
                resource,
                lease,
                term,
            } => {
                if let Some(claim) = self.claims.get(&resource) {
                    claim.status.send_modify(|s| {
                        s.lease = Some((lease, None));
                        s.term = term;
                    });
                }
            }
            Event::Lost {
                resource,
                lease,
                reason,
            } => {
                if let Some(claim) = self.claims.get(&resource) {
                    let handed_out = claim.handed_out.lock().expect("not poisoned");
                    claim
                        .status
                        .send_modify(|s| s.lease = Some((lease, Some(reason))));
                    if *handed_out < lease {
                        // The application never saw this lease: nothing to wait for.
                        drop(handed_out);
                        self.core.lease_dropped(now, &resource, lease);
                    }
                }
            }
            Event::Yielded { .. } => {}
            Event::TicketsMismatch {
                resource,
                ours,
                effective,
            } => {
                if let Some(claim) = self.claims.get(&resource) {
                    claim
                        .status
                        .send_modify(|s| s.mismatch = Some((ours, effective)));
                }
            }
            Event::TicketsAgreed { resource } => {
                if let Some(claim) = self.claims.get(&resource) {
                    claim.status.send_modify(|s| s.mismatch = None);
                }
            }
            Event::OwnersChanged { resource, owners } => {
                if let Some(watch) = self.owner_watches.get(&resource) {
                    watch.send_replace(owners);
                }
            }
            Event::Superseded { .. } | Event::SupersedesOther { .. } => {}
            Event::MemberUp(_)
            | Event::MemberDown(_)
            | Event::MemberSuspect(_)
            | Event::MemberAlive(_)
            | Event::Left => {}
        }
    }
}

impl<S> Driver<S> {
    /// Tells every lease and waiter that the node stopped. Runs when the loop ends and
    /// again when the driver is dropped (a panic, or a caller that drops the loop of
    /// `run_on`): a lease must never outlive its protocol loop unaware.
    fn close(&mut self) {
        for claim in self.claims.values() {
            claim.status.send_modify(|s| {
                s.closed = true;
                if let Some((_, lost @ None)) = &mut s.lease {
                    *lost = Some(LostReason::Stopped);
                }
            });
        }
        if self.core.state() != NodeState::Left {
            self.state.send_replace(NodeState::Left);
        }
        for waiter in self.leave_waiters.drain(..) {
            let _ = waiter.send(());
        }
        for (_, waiter) in self.withdraw_waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}

impl<S> Drop for Driver<S> {
    fn drop(&mut self) {
        self.close();
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
