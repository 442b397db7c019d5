//! The public API: [`Node`] and what it hands out. [`NodeBuilder`] configures and starts a
//! node (`builder`); [`Candidacy`], [`Lease`] and [`Tenure`] compete for and hold tickets
//! (`lease`); [`Election`] is a job the crate runs while a ticket is held (`job`).

mod builder;
mod job;
mod lease;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub use builder::NodeBuilder;
pub use job::Election;
pub use lease::{Candidacy, Lease, Tenure};

use crate::driver::Command;
use crate::error::{Error, Result};
use crate::proto::{Core, MemberInfo, NodeInfo, NodeState, OwnerInfo, Owners};

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
///     .join(["127.0.0.1:7947"])
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
        NodeBuilder::new(name.into())
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

    /// Waits until the node is [`NodeState::Active`]: connected to a fleet and synced
    /// with it (a node running alone is not). Errors once the node has left, stopped or
    /// been superseded.
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches.
    pub async fn wait_active(&self) -> Result<()> {
        let mut state = self.inner.state.clone();
        loop {
            match *state.borrow_and_update() {
                NodeState::Active => return Ok(()),
                NodeState::Left | NodeState::Superseded => return Err(Error::Stopped),
                _ => {}
            }
            state.changed().await.map_err(|_| Error::Stopped)?;
        }
    }

    fn send(&self, command: Command) -> Result<()> {
        self.inner
            .commands
            .send(command)
            .map_err(|_| Error::Stopped)
    }

    /// Runs `look` on the protocol thread and returns what it found.
    async fn inspect<T: Send + 'static>(
        &self,
        look: impl FnOnce(&Core, Duration) -> T + Send + 'static,
    ) -> Result<T> {
        self.ask(|reply| {
            Command::Inspect(Box::new(move |core, now| {
                let _ = reply.send(look(core, now));
            }))
        })
        .await
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Competes for `resource`, of which at most `tickets` nodes may hold a ticket at once.
    /// The application runs the service while it holds a [`Lease`] (see
    /// [`Candidacy::acquired`]); for a job the crate runs and stops, see
    /// [`Node::run_while_held`].
    ///
    /// Errors: an empty or over-long resource name, zero tickets, a resource this node
    /// already competes for, a record that would exceed its size cap, a node that is
    /// leaving or stopped.
    ///
    /// # Cancel safety
    /// Not cancel safe: if the future is dropped after the node took the command, the node
    /// competes with no [`Candidacy`] to show for it until the next `obtain` of the
    /// resource (which fails with `AlreadyCompeting`) or a leave.
    pub async fn obtain(&self, resource: &str, tickets: u16) -> Result<Candidacy> {
        self.compete(resource, tickets, false).await
    }

    /// As [`Node::obtain`], but this node never yields a lost ticket before the
    /// application drops its [`Lease`]: for an application that stops its work itself
    /// and must not see the ticket handed on while that work still runs (the
    /// `gossip-election` sidecar, which drops the lease once its child process is gone).
    /// The other candidates' patience is still bounded: they acquire past a holder that
    /// keeps a lost ticket for `handoff_timeout` plus one anti-entropy period, so the
    /// application must stop well within `handoff_timeout`.
    ///
    /// Errors as [`Node::obtain`].
    ///
    /// # Cancel safety
    /// As [`Node::obtain`].
    pub async fn obtain_until_dropped(&self, resource: &str, tickets: u16) -> Result<Candidacy> {
        self.compete(resource, tickets, true).await
    }

    async fn compete(
        &self,
        resource: &str,
        tickets: u16,
        keep_until_dropped: bool,
    ) -> Result<Candidacy> {
        let shared = self
            .ask(|reply| Command::Obtain {
                resource: resource.to_string(),
                tickets,
                keep_until_dropped,
                reply,
            })
            .await??;
        let status = shared.status.subscribe();
        // A lease an earlier candidacy for the resource handed out is never handed out
        // again, even while its state lingers (it is being yielded, or was dropped).
        let last = *shared.handed_out.lock().expect("not poisoned");
        Ok(Candidacy {
            resource: resource.to_string(),
            commands: self.inner.commands.clone(),
            status,
            shared,
            last,
            withdrawn: false,
        })
    }

    /// Runs `job` whenever this node holds a ticket for `resource` (at most `tickets`
    /// nodes at once), and stops it when the ticket must go: the crate owns the job.
    ///
    /// On each acquisition the crate spawns `job(tenure)` on the current tokio runtime.
    /// When the lease is lost (displaced, superseded, leaving, stopped), when the returned
    /// [`Election`] is withdrawn or dropped, the job is **cancelled**: its task is aborted,
    /// so its future is dropped at its next `.await`, and the ticket is yielded only after
    /// the job has ended: the node does not force the ticket out after `handoff_timeout`
    /// while its job runs. The other candidates' patience is bounded, though: they take
    /// over from a holder that keeps a lost ticket for `handoff_timeout` plus one
    /// anti-entropy period (a stuck holder must not keep a resource forever), and a
    /// leave's deadline ends the node's leases. So a job must reach an `.await` well within
    /// `handoff_timeout`; blocking work belongs in `spawn_blocking` with its own checks of
    /// [`Tenure::is_lost`]. Code that must clean up on cancellation does it in `Drop` of
    /// something the job owns.
    ///
    /// A job that returns (or panics) on its own steps the node down: it yields the
    /// ticket and stays out of the candidates for `step_down_backoff`, so a crash loop
    /// neither keeps the ticket nor flaps the fleet. It runs again on the next
    /// acquisition.
    ///
    /// ```no_run
    /// # async fn demo(node: gossip_election::Node) -> gossip_election::Result<()> {
    /// let election = node
    ///     .run_while_held("billing", 1, |tenure| async move {
    ///         loop {
    ///             // ... one unit of work; each `.await` is a point where it may be cancelled ...
    ///             tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    ///             # let _ = tenure.id();
    ///         }
    ///     })
    ///     .await?;
    /// // ... later: cancel the job if it runs, wait for it, yield the ticket.
    /// election.withdraw().await;
    /// # Ok(()) }
    /// ```
    ///
    /// Errors as [`Node::obtain`]. Must be called within a tokio runtime.
    ///
    /// # Cancel safety
    /// As [`Node::obtain`].
    pub async fn run_while_held<F, Fut>(
        &self,
        resource: &str,
        tickets: u16,
        job: F,
    ) -> Result<Election>
    where
        F: FnMut(Tenure) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let candidacy = self.compete(resource, tickets, true).await?;
        Ok(job::Election::start(candidacy, job))
    }

    /// Who holds `resource` and who should, in this node's view.
    ///
    /// # Cancel safety
    /// Cancel safe: it only asks.
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
    ///
    /// # Cancel safety
    /// Cancel safe: it only asks.
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
    ///
    /// # Cancel safety
    /// Cancel safe: it only asks.
    pub async fn watch_owners(&self, resource: &str) -> Result<watch::Receiver<Owners>> {
        self.ask(|reply| Command::WatchOwners {
            resource: resource.to_string(),
            reply,
        })
        .await
    }

    /// The membership as this node sees it (other members, including those held as down).
    ///
    /// # Cancel safety
    /// Cancel safe: it only asks.
    pub async fn members(&self) -> Result<Vec<MemberInfo>> {
        self.inspect(|core, _| core.member_infos()).await
    }

    /// A snapshot of this node's own state and counters.
    ///
    /// # Cancel safety
    /// Cancel safe: it only asks.
    pub async fn info(&self) -> Result<NodeInfo> {
        self.inspect(|core, now| core.node_info(now)).await
    }

    /// Leaves the fleet gracefully: every lease is told `lost`, the node waits (at most
    /// `handoff_timeout`) for them to be dropped, yields, and leaves the membership.
    ///
    /// # Cancel safety
    /// The leave is sent at the first poll: dropping the future afterwards only stops the
    /// waiting for the node to finish leaving.
    pub async fn leave(&self) {
        if self.ask(|reply| Command::Leave { reply }).await.is_ok() {
            self.join_thread().await;
        }
    }

    /// Stops at once, as a crashed process would: no handover, no leave message. Peers
    /// find out through failure detection. A test and demo aid, not for production use.
    ///
    /// # Cancel safety
    /// The crash is sent at the first poll.
    #[doc(hidden)]
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
