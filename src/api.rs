//! The public API: [`Node`], [`NodeBuilder`], [`Candidacy`], [`Lease`], [`Election`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::driver::{ClaimShared, ClaimStatus, Command, Driver, Socket};
use crate::error::{Error, Result};
use crate::proto::{
    Core, CoreConfig, LeaseId, LostReason, NodeState, OwnerInfo, Owners, Stats, Timing,
};

/// How a member stands in a node's view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Not answering; will be declared down unless it refutes. Still counts as live.
    Suspect,
    /// Declared down (or left).
    Down,
}

impl MemberState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

/// One member as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's name, once its record is known.
    pub name: Option<String>,
    /// Its advertise address.
    pub addr: SocketAddr,
    /// Its process start.
    pub boot: u64,
    /// Its state.
    pub state: MemberState,
    /// Its SWIM incarnation.
    pub incarnation: u16,
}

/// A snapshot of a node's own state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// Its advertise address.
    pub addr: SocketAddr,
    /// Its process start.
    pub boot: u64,
    /// What it is doing.
    pub state: NodeState,
    /// Live members it sees, itself excluded.
    pub live_members: usize,
    /// Time since it started.
    pub uptime: Duration,
    /// Its counters.
    pub stats: Stats,
}

pub(crate) fn members_of(core: &Core) -> Vec<MemberInfo> {
    core.membership()
        .filter(|m| m.id().boot() != 0)
        .map(|m| MemberInfo {
            name: core.name_at(&m.id().addr()).map(str::to_string),
            addr: m.id().addr(),
            boot: m.id().boot(),
            state: match m.state() {
                foca::State::Alive => MemberState::Alive,
                foca::State::Suspect => MemberState::Suspect,
                foca::State::Down => MemberState::Down,
            },
            incarnation: m.incarnation(),
        })
        .collect()
}

pub(crate) fn info_of(core: &Core, now: Duration) -> NodeInfo {
    NodeInfo {
        name: core.name().to_string(),
        addr: core.id().addr(),
        boot: core.id().boot(),
        state: core.state(),
        live_members: core.members().count(),
        uptime: core.uptime(now),
        stats: core.stats().clone(),
    }
}

/// Configures and starts a [`Node`].
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    name: String,
    bind: Option<SocketAddr>,
    advertise: Option<SocketAddr>,
    join: Vec<SocketAddr>,
    timing: Timing,
    sync_timeout: Duration,
    handoff_timeout: Duration,
    step_down_backoff: Duration,
    boot: Option<u64>,
    #[cfg(feature = "debug")]
    debug_addr: Option<SocketAddr>,
}

impl NodeBuilder {
    /// Serves the read-only debug endpoint (dashboard, JSON, events, Prometheus metrics)
    /// on `addr`; off unless set. See [`crate::debug`].
    #[cfg(feature = "debug")]
    pub fn debug_addr(mut self, addr: SocketAddr) -> Self {
        self.debug_addr = Some(addr);
        self
    }

    /// The UDP address to bind (required).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = Some(addr);
        self
    }

    /// The address peers send to (defaults to the bind address; required when binding a
    /// wildcard address).
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.advertise = Some(addr);
        self
    }

    /// Addresses of fleet members to join through. The node's own address may be among
    /// them (as in a shared fleet config); it is ignored.
    pub fn join(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.join.extend(addrs);
        self
    }

    /// The timing profile (default [`Timing::lan`]).
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// How long a node that reaches nobody waits before it runs alone (default 3 s).
    pub fn sync_timeout(mut self, timeout: Duration) -> Self {
        self.sync_timeout = timeout;
        self
    }

    /// How long a holder that lost a lease may take to drop it before it is yielded
    /// anyway (default 5 s).
    pub fn handoff_timeout(mut self, timeout: Duration) -> Self {
        self.handoff_timeout = timeout;
        self
    }

    /// How long a node that dropped a live lease stays out of the candidates (default 5 s).
    pub fn step_down_backoff(mut self, backoff: Duration) -> Self {
        self.step_down_backoff = backoff;
        self
    }

    /// The process start number (default: unix milliseconds now). It must rise on every
    /// restart of a name. If it does not (the clock stepped back since the last start),
    /// the fleet keeps preferring the older process's identity and refuses this one; the
    /// node then raises its boot, by steps that double, until the fleet accepts it.
    pub fn boot(mut self, boot: u64) -> Self {
        self.boot = Some(boot);
        self
    }

    fn boot_or_now(&self) -> u64 {
        self.boot.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64)
                .max(1)
        })
    }

    /// What the core would refuse, checked before binding (the boot does not matter).
    fn validate(&self, advertise: SocketAddr) -> Result<()> {
        Ok(self.core_config(advertise, 1).validate()?)
    }

    fn core_config(&self, advertise: SocketAddr, boot: u64) -> CoreConfig {
        let mut cfg = CoreConfig::new(self.name.clone(), advertise, boot);
        cfg.seeds = self.join.clone();
        cfg.timing = self.timing.clone();
        cfg.sync_timeout = self.sync_timeout;
        cfg.handoff_timeout = self.handoff_timeout;
        cfg.step_down_backoff = self.step_down_backoff;
        cfg.rng_seed = boot ^ crate::placement::name_hash(&self.name) ^ advertise.port() as u64;
        cfg.wall_clock = SystemTime::now().duration_since(UNIX_EPOCH).ok();
        cfg
    }

    /// Runs the node over `socket` on the caller's runtime instead of on a thread of its
    /// own: the seam for deterministic network simulators (such as turmoil). `advertise`
    /// is where peers reach `socket`. Returns the handle and the protocol loop, which the
    /// caller must run; the loop is not `Send`, so run it on a current-thread runtime or
    /// a `LocalSet`. The debug endpoint is not served in this mode.
    pub fn run_on<S: Socket>(
        self,
        socket: S,
        advertise: SocketAddr,
    ) -> Result<(Node, impl Future<Output = ()>)> {
        self.validate(advertise)?;
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err(Error::InvalidAdvertise(advertise));
        }
        let boot = self.boot_or_now();
        let cfg = self.core_config(advertise, boot);
        let origin = tokio::time::Instant::now();
        let core = Core::new(cfg, origin.elapsed())?;
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(NodeState::Joining);
        let driver = Driver::new(socket, core, origin, commands, state_tx);
        let span = tracing::info_span!("node", name = %self.name);
        let node = Node {
            inner: Arc::new(NodeInner {
                name: self.name,
                addr: advertise,
                boot,
                #[cfg(feature = "debug")]
                debug_addr: None,
                commands: commands_tx,
                state,
                thread: std::sync::Mutex::new(None),
            }),
        };
        Ok((node, driver.run().instrument(span)))
    }

    /// Binds the socket and starts the protocol thread.
    pub async fn start(self) -> Result<Node> {
        let bind = self.bind.ok_or(Error::MissingBind)?;
        let advertise = match self.advertise {
            Some(addr) => addr,
            None if bind.ip().is_unspecified() => {
                return Err(Error::WildcardWithoutAdvertise(bind));
            }
            None => bind,
        };
        self.validate(advertise)?;
        let socket =
            std::net::UdpSocket::bind(bind).map_err(|source| Error::Bind { addr: bind, source })?;
        socket
            .set_nonblocking(true)
            .map_err(|source| Error::Bind { addr: bind, source })?;
        // Port 0 binds pick a port: advertise the one we got.
        let advertise = if advertise.port() == 0 && self.advertise.is_none() {
            socket
                .local_addr()
                .map_err(|source| Error::Bind { addr: bind, source })?
        } else {
            advertise
        };
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err(Error::InvalidAdvertise(advertise));
        }
        let boot = self.boot_or_now();
        let cfg = self.core_config(advertise, boot);
        #[cfg(feature = "debug")]
        let debug = self
            .debug_addr
            .map(|addr| (addr, crate::debug::EventSink::new()));
        #[cfg(feature = "debug")]
        let cfg = CoreConfig {
            report_suspicions: debug.is_some(),
            ..cfg
        };
        #[cfg(feature = "debug")]
        let sink = debug.as_ref().map(|(_, sink)| sink.clone());

        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(NodeState::Joining);
        let (started_tx, started_rx) = oneshot::channel();
        let name = self.name.clone();
        let thread = std::thread::Builder::new()
            .name(format!("gossip-election:{name}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(err) => {
                        let _ = started_tx.send(Err(Error::Spawn(err)));
                        return;
                    }
                };
                let span = tracing::info_span!("node", name = %name);
                runtime.block_on(
                    async move {
                        let socket = match tokio::net::UdpSocket::from_std(socket) {
                            Ok(s) => s,
                            Err(source) => {
                                let _ = started_tx.send(Err(Error::Bind { addr: bind, source }));
                                return;
                            }
                        };
                        let origin = tokio::time::Instant::now();
                        let core = match Core::new(cfg, origin.elapsed()) {
                            Ok(core) => core,
                            Err(err) => {
                                let _ = started_tx.send(Err(Error::from(err)));
                                return;
                            }
                        };
                        let _ = started_tx.send(Ok(()));
                        #[cfg_attr(not(feature = "debug"), allow(unused_mut))]
                        let mut driver = Driver::new(socket, core, origin, commands, state_tx);
                        #[cfg(feature = "debug")]
                        {
                            driver.debug = sink;
                        }
                        driver.run().await;
                    }
                    .instrument(span),
                );
            })
            .map_err(Error::Spawn)?;
        started_rx.await.map_err(|_| Error::Stopped)??;
        #[cfg(feature = "debug")]
        let debug_addr = match debug {
            Some((addr, sink)) => match crate::debug::serve(addr, commands_tx.clone(), sink) {
                Ok(bound) => Some(bound),
                Err(err) => {
                    let _ = commands_tx.send(Command::Crash);
                    return Err(err);
                }
            },
            None => None,
        };
        Ok(Node {
            inner: Arc::new(NodeInner {
                name: self.name,
                addr: advertise,
                boot,
                #[cfg(feature = "debug")]
                debug_addr,
                commands: commands_tx,
                state,
                thread: std::sync::Mutex::new(Some(thread)),
            }),
        })
    }
}

#[derive(Debug)]
struct NodeInner {
    name: String,
    addr: SocketAddr,
    boot: u64,
    #[cfg(feature = "debug")]
    debug_addr: Option<SocketAddr>,
    commands: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<NodeState>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A running member of the fleet. Cheap to clone; the node leaves when the last handle
/// (and every [`Candidacy`]) is dropped, or at once with [`Node::leave`].
///
/// ```no_run
/// # async fn demo() -> gossip_election::Result<()> {
/// use gossip_election::Node;
///
/// let node = Node::builder("worker-1")
///     .bind("127.0.0.1:7946".parse().unwrap())
///     .join(["127.0.0.1:7947".parse().unwrap()])
///     .start()
///     .await?;
/// let mut candidacy = node.obtain("echo", 1).await?;
/// loop {
///     let lease = candidacy.acquired().await?;
///     // ... run the service until told to stop ...
///     let reason = lease.lost().await;
///     drop(lease); // hands the ticket over
///     # let _ = reason; break;
/// }
/// node.leave().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl Node {
    /// Starts configuring a node called `name` (stable and unique in the fleet).
    pub fn builder(name: impl Into<String>) -> NodeBuilder {
        NodeBuilder {
            name: name.into(),
            bind: None,
            advertise: None,
            join: Vec::new(),
            timing: Timing::lan(),
            sync_timeout: Duration::from_secs(3),
            handoff_timeout: Duration::from_secs(5),
            step_down_backoff: Duration::from_secs(5),
            boot: None,
            #[cfg(feature = "debug")]
            debug_addr: None,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The address peers send to.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The process start number the node started with. A node the fleet refused raises
    /// its boot (see [`NodeBuilder::boot`]); the debug endpoint shows the current one.
    pub fn boot(&self) -> u64 {
        self.inner.boot
    }

    /// Where the debug endpoint listens, if it was enabled.
    #[cfg(feature = "debug")]
    pub fn debug_addr(&self) -> Option<SocketAddr> {
        self.inner.debug_addr
    }

    /// What the node is doing now.
    pub fn state(&self) -> NodeState {
        *self.inner.state.borrow()
    }

    /// A watch of the node's state.
    pub fn watch_state(&self) -> watch::Receiver<NodeState> {
        self.inner.state.clone()
    }

    fn send(&self, command: Command) -> Result<()> {
        self.inner
            .commands
            .send(command)
            .map_err(|_| Error::Stopped)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Competes for `resource`, of which at most `tickets` nodes may hold a ticket at once.
    ///
    /// Errors: an empty or over-long resource name, zero tickets, a resource this node
    /// already competes for, a record that would exceed its size cap, a node that is
    /// leaving or stopped.
    pub async fn obtain(&self, resource: &str, tickets: u16) -> Result<Candidacy> {
        let shared = self
            .ask(|reply| Command::Obtain {
                resource: resource.to_string(),
                tickets,
                reply,
            })
            .await??;
        let status = shared.status.subscribe();
        Ok(Candidacy {
            resource: resource.to_string(),
            commands: self.inner.commands.clone(),
            status,
            shared,
            last: 0,
            withdrawn: false,
        })
    }

    /// Competes for `resource` and runs `on_obtain` each time this node acquires it and
    /// `on_release` each time it must stop — the closure style of
    /// `obtain(resource, fnObtain, fnRelease, { tickets })`. The returned [`Election`]
    /// withdraws when dropped.
    pub async fn obtain_with<O, OF, R, RF>(
        &self,
        resource: &str,
        tickets: u16,
        mut on_obtain: O,
        mut on_release: R,
    ) -> Result<Election>
    where
        O: FnMut() -> OF + Send + 'static,
        OF: Future<Output = ()> + Send,
        R: FnMut(LostReason) -> RF + Send + 'static,
        RF: Future<Output = ()> + Send,
    {
        let mut candidacy = self.obtain(resource, tickets).await?;
        let commands = candidacy.commands.clone();
        let resource = candidacy.resource.clone();
        let id = candidacy.shared.candidacy;
        let task = tokio::spawn(async move {
            while let Ok(lease) = candidacy.acquired().await {
                on_obtain().await;
                let reason = lease.lost().await;
                on_release(reason).await;
                drop(lease);
            }
        });
        Ok(Election {
            task,
            commands,
            resource,
            candidacy: id,
        })
    }

    /// Who holds `resource` and who should, in this node's view.
    pub async fn owners(&self, resource: &str) -> Result<Owners> {
        let (owners, _) = self
            .ask(|reply| Command::Owners {
                resource: resource.to_string(),
                reply,
            })
            .await?;
        Ok(owners)
    }

    /// The candidates of `resource` in rank order, in this node's view.
    pub async fn candidates(&self, resource: &str) -> Result<Vec<OwnerInfo>> {
        let (_, candidates) = self
            .ask(|reply| Command::Owners {
                resource: resource.to_string(),
                reply,
            })
            .await?;
        Ok(candidates)
    }

    /// A watch of the owners of `resource`, updated as this node's view changes.
    pub async fn watch_owners(&self, resource: &str) -> Result<watch::Receiver<Owners>> {
        self.ask(|reply| Command::WatchOwners {
            resource: resource.to_string(),
            reply,
        })
        .await
    }

    /// The membership as this node sees it (other members, including those held as down).
    pub async fn members(&self) -> Result<Vec<MemberInfo>> {
        self.ask(|reply| Command::Members { reply }).await
    }

    /// A snapshot of this node's own state and counters.
    pub async fn info(&self) -> Result<NodeInfo> {
        self.ask(|reply| Command::Inspect { reply }).await
    }

    /// Leaves the fleet gracefully: every lease is told `lost`, the node waits (at most
    /// `handoff_timeout`) for them to be dropped, yields, and leaves the membership.
    pub async fn leave(&self) {
        if self.ask(|reply| Command::Leave { reply }).await.is_ok() {
            self.join_thread().await;
        }
    }

    /// Stops at once, as a crashed process would: no handover, no leave message. Peers
    /// find out through failure detection. Meant for tests and demos.
    pub async fn crash(&self) {
        let _ = self.send(Command::Crash);
        self.join_thread().await;
    }

    async fn join_thread(&self) {
        let thread = self.inner.thread.lock().expect("not poisoned").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// This node's competition for one resource. Dropping it (or [`Candidacy::withdraw`])
/// stops competing; a held ticket is yielded first.
#[derive(Debug)]
#[must_use = "dropping a Candidacy withdraws it at once"]
pub struct Candidacy {
    resource: String,
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<ClaimStatus>,
    shared: Arc<ClaimShared>,
    last: LeaseId,
    withdrawn: bool,
}

impl Candidacy {
    /// The resource.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Resolves when this node holds a ticket: at once if it does now, else when it
    /// acquires one (again after a loss). Errors only when the node stopped.
    pub async fn acquired(&mut self) -> Result<Lease> {
        loop {
            {
                let status = *self.status.borrow_and_update();
                if let Some((lease, lost)) = status.lease {
                    let mut handed_out = self.shared.handed_out.lock().expect("not poisoned");
                    let current = *self.shared.status.borrow();
                    if lease > self.last && lost.is_none() && current.lease == Some((lease, None)) {
                        *handed_out = lease;
                        self.last = lease;
                        return Ok(Lease {
                            resource: self.resource.clone(),
                            id: lease,
                            status: self.status.clone(),
                            commands: self.commands.clone(),
                        });
                    }
                }
                if status.closed {
                    return Err(Error::Stopped);
                }
            }
            if self.status.changed().await.is_err() {
                return Err(Error::Stopped);
            }
        }
    }

    /// `Some((ours, effective))` while this node advertises other tickets than most
    /// candidates: it is then not counted as a candidate.
    pub fn tickets_mismatch(&self) -> Option<(u16, u16)> {
        self.status.borrow().mismatch
    }

    /// Stops competing and waits until a held ticket is yielded (the seed's `fnRelease`).
    pub async fn withdraw(mut self) {
        self.withdrawn = true;
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Withdraw {
                resource: self.resource.clone(),
                candidacy: self.shared.candidacy,
                reply: Some(tx),
            })
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}

impl Drop for Candidacy {
    fn drop(&mut self) {
        if !self.withdrawn {
            let _ = self.commands.send(Command::Withdraw {
                resource: self.resource.clone(),
                candidacy: self.shared.candidacy,
                reply: None,
            });
        }
    }
}

/// A held ticket. Run the service while you hold it; stop when [`Lease::lost`] resolves,
/// then drop it: dropping hands the ticket over. Dropping a lease that was not lost
/// steps down (the node stays out of the candidates for a back-off period).
#[derive(Debug)]
#[must_use = "dropping a Lease hands the ticket over (or steps down) at once"]
pub struct Lease {
    resource: String,
    id: LeaseId,
    status: watch::Receiver<ClaimStatus>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Lease {
    /// The resource.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// This tenure's id (rises with every acquisition on this node).
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// Whether the lease was lost (the application must stop).
    pub fn is_lost(&self) -> bool {
        self.lost_reason().is_some()
    }

    fn lost_reason(&self) -> Option<LostReason> {
        let status = self.status.borrow();
        match status.lease {
            Some((id, lost)) if id == self.id => {
                lost.or(status.closed.then_some(LostReason::Stopped))
            }
            _ => Some(LostReason::Displaced),
        }
    }

    /// Resolves when this node must stop running the resource, with the reason.
    pub async fn lost(&self) -> LostReason {
        let mut status = self.status.clone();
        loop {
            if let Some(reason) = self.lost_reason() {
                return reason;
            }
            if status.changed().await.is_err() {
                return LostReason::Stopped;
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::LeaseDropped {
            resource: self.resource.clone(),
            lease: self.id,
        });
    }
}

/// The handle of [`Node::obtain_with`]: withdraws when dropped.
#[derive(Debug)]
#[must_use = "dropping an Election withdraws it at once"]
pub struct Election {
    task: tokio::task::JoinHandle<()>,
    commands: mpsc::UnboundedSender<Command>,
    resource: String,
    candidacy: u64,
}

impl Election {
    /// Stops competing and waits until a held ticket is yielded; `on_release` runs first
    /// if the node held the resource. (Dropping the `Election` withdraws too, but at once,
    /// without running `on_release`.)
    pub async fn withdraw(self) {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Withdraw {
                resource: self.resource.clone(),
                candidacy: self.candidacy,
                reply: Some(tx),
            })
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.commands.send(Command::Withdraw {
            resource: self.resource.clone(),
            candidacy: self.candidacy,
            reply: None,
        });
    }
}
