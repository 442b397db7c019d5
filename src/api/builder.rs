//! [`NodeBuilder`]: a node's configuration, checked, and starting it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use super::{Node, NodeInner};
use crate::driver::{Driver, Socket};
use crate::error::{Error, Result};
use crate::proto::{Alone, Core, CoreConfig, NodeState, Safety, Timing};
use crate::seal::{Keyring, Plaintext, Sealer};
use crate::seed::{Seed, SeedNames};

/// Configures and starts a [`Node`].
#[derive(Clone, Debug)]
pub struct NodeBuilder {
    name: String,
    bind: Option<SocketAddr>,
    advertise: Option<SocketAddr>,
    join: Vec<Seed>,
    timing: Timing,
    sync_timeout: Duration,
    alone: Option<Alone>,
    safety: Safety,
    handoff_timeout: Duration,
    step_down_backoff: Duration,
    boot: Option<u64>,
    keys: Keyring,
    plaintext: Plaintext,
    #[cfg(feature = "debug")]
    debug_addr: Option<SocketAddr>,
}

impl NodeBuilder {
    pub(super) fn new(name: String) -> NodeBuilder {
        NodeBuilder {
            name,
            bind: None,
            advertise: None,
            join: Vec::new(),
            timing: Timing::lan(),
            sync_timeout: Duration::from_secs(3),
            alone: None,
            safety: Safety::Available,
            handoff_timeout: Duration::from_secs(5),
            step_down_backoff: Duration::from_secs(5),
            boot: None,
            keys: Keyring::default(),
            plaintext: Plaintext::default(),
            #[cfg(feature = "debug")]
            debug_addr: None,
        }
    }

    /// Authenticates and encrypts every datagram with the cluster `keys` (see
    /// [`Keyring`]): with [`Plaintext::Refuse`] (the default) a node without a key the
    /// fleet uses can neither join it nor learn or change anything in it. Without keys
    /// (the default) gossip is plaintext, and a warning says so at start.
    pub fn keys(mut self, keys: Keyring) -> Self {
        self.keys = keys;
        self
    }

    /// How a node with keys treats plaintext (default [`Plaintext::Refuse`]): the steps
    /// of turning keys on in a running plaintext fleet, one node at a time.
    pub fn plaintext(mut self, plaintext: Plaintext) -> Self {
        self.plaintext = plaintext;
        self
    }

    /// The sealer for a process that started as `boot`, or `None` (and a warning) without
    /// keys.
    fn sealer(&self, advertise: SocketAddr, boot: u64) -> Option<Sealer> {
        let sealer = Sealer::new(&self.keys, self.plaintext, advertise, boot);
        if sealer.is_none() {
            tracing::warn!(
                "gossip is neither authenticated nor encrypted: anyone who can send UDP to this node can join the fleet; set NodeBuilder::keys"
            );
        }
        sealer
    }

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

    /// Fleet members to join through: socket addresses or `host:port` names (see
    /// [`Seed`]). A name is resolved when the node starts and again on every announce
    /// while the node is not connected, and every address it resolves to is a seed, so
    /// a DNS name that lists the fleet (a Kubernetes headless service, a compose service)
    /// works as the whole list. A name that does not resolve is logged and retried. The
    /// node's own address may be among them (as in a shared fleet config); it is ignored.
    ///
    /// ```no_run
    /// # fn demo(addr: std::net::SocketAddr) {
    /// let builder = gossip_election::Node::builder("worker-1")
    ///     .join(["workers.default.svc.cluster.local:7946", "10.0.0.7:7946"])
    ///     .join([addr]);
    /// # }
    /// ```
    pub fn join<S: Into<Seed>>(mut self, seeds: impl IntoIterator<Item = S>) -> Self {
        self.join.extend(seeds.into_iter().map(Into::into));
        self
    }

    /// The timing profile (default [`Timing::lan`]).
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// How long a node that reaches nobody waits before it runs alone, unless
    /// [`NodeBuilder::alone`] says otherwise; and how long a connected node waits for
    /// records it lacks before it is ready anyway (default 3 s).
    pub fn sync_timeout(mut self, timeout: Duration) -> Self {
        self.sync_timeout = timeout;
        self
    }

    /// Whether a node that reaches nobody runs alone (default
    /// `Alone::After(sync_timeout)`): [`Alone::Never`] for a service that must not run
    /// twice because of a typo in a join list. Running alone is logged at WARN; a caller
    /// can wait for the node to connect with [`Node::wait_active`](super::Node::wait_active).
    pub fn alone(mut self, alone: Alone) -> Self {
        self.alone = Some(alone);
        self
    }

    /// What a partition may cost (default [`Safety::Available`]).
    /// `Safety::Quorum { members: M }` holds a ticket only on promises from a majority
    /// of M nodes, so a job never runs on both sides of a partition; the application must
    /// then stop within `handoff_timeout` of being told its lease is lost, and a crash
    /// fails over once the crashed holder's promises have run out (see
    /// [`CoreConfig::quorum_margins`](crate::proto::CoreConfig::quorum_margins)).
    pub fn safety(mut self, safety: Safety) -> Self {
        self.safety = safety;
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
        if let Some((seed, reason)) = self.join.iter().find_map(Seed::invalid) {
            return Err(Error::InvalidSeed {
                seed: seed.to_string(),
                reason,
            });
        }
        Ok(self.core_config(advertise, 1).validate()?)
    }

    fn core_config(&self, advertise: SocketAddr, boot: u64) -> CoreConfig {
        let mut cfg = CoreConfig::new(self.name.clone(), advertise, boot);
        cfg.seeds = self.join.iter().filter_map(Seed::addr).collect();
        cfg.timing = self.timing.clone();
        cfg.sync_timeout = self.sync_timeout;
        cfg.alone = self.alone.unwrap_or(Alone::After(self.sync_timeout));
        cfg.safety = self.safety;
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
        let mut driver = Driver::new(socket, core, origin, commands, state_tx);
        driver.sealer = self.sealer(advertise, boot);
        driver.seeds = SeedNames::new(&self.join);
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
        let sealer = self.sealer(advertise, boot);
        let seeds = SeedNames::new(&self.join);
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
                        let mut driver = Driver::new(socket, core, origin, commands, state_tx);
                        driver.sealer = sealer;
                        driver.seeds = seeds;
                        #[cfg(feature = "debug")]
                        if let Some(sink) = sink {
                            driver.observer = Some(Box::new(move |core, now, event| {
                                sink.publish(core, now, event);
                            }));
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
                    let _ = commands_tx.send(crate::driver::Command::Crash);
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
