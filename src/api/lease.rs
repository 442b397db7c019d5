//! Competing for a resource and holding its tickets: [`Candidacy`], [`Lease`] and the
//! [`Tenure`] both of them and crate-run jobs watch.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::{ClaimShared, ClaimStatus, Command};
use crate::error::{Error, Result};
use crate::proto::{LeaseId, LostReason};

/// This node's competition for one resource. Dropping it (or [`Candidacy::withdraw`])
/// stops competing; a held ticket is yielded first.
#[derive(Debug)]
#[must_use = "dropping a Candidacy withdraws it at once"]
pub struct Candidacy {
    pub(super) resource: String,
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) status: watch::Receiver<ClaimStatus>,
    pub(super) shared: Arc<ClaimShared>,
    pub(super) last: LeaseId,
    pub(super) withdrawn: bool,
}

impl Candidacy {
    /// The resource.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Resolves with the next tenure this node acquires: at once if it holds a ticket it
    /// has not handed out yet, else when it acquires one. A second call while a lease from
    /// this candidacy is held waits until that lease is lost and a new one is acquired.
    /// Errors only when the node stopped.
    ///
    /// # Cancel safety
    /// Cancel safe: a ticket acquired while the future was pending is handed out by the
    /// next call.
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
                            tenure: Tenure {
                                resource: self.resource.clone(),
                                id: lease,
                                term: status.term,
                                status: self.status.clone(),
                            },
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

    /// Stops competing and waits until a held ticket is yielded. A [`Lease`] still held
    /// must be dropped for that: the ticket is yielded when it is (or after
    /// `handoff_timeout`).
    ///
    /// # Cancel safety
    /// The withdrawal is sent before the first await: dropping the future only stops the
    /// waiting.
    pub async fn withdraw(mut self) {
        if let Some(done) = self.begin_withdraw() {
            let _ = done.await;
        }
    }

    /// Sends the withdrawal (once): a held lease is told `Withdrawn`. The receiver
    /// resolves once the ticket is yielded; `None` if the node has stopped.
    pub(super) fn begin_withdraw(&mut self) -> Option<oneshot::Receiver<()>> {
        if std::mem::replace(&mut self.withdrawn, true) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Withdraw {
                resource: self.resource.clone(),
                candidacy: self.shared.candidacy,
                reply: Some(tx),
            })
            .ok()
            .map(|()| rx)
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

/// One tenure of a resource on this node: what it is, and whether it must end. A
/// [`Lease`] has one ([`Lease::tenure`]); a job run by [`Node::run_while_held`] gets one.
///
/// [`Node::run_while_held`]: crate::Node::run_while_held
#[derive(Clone, Debug)]
pub struct Tenure {
    resource: String,
    id: LeaseId,
    term: u64,
    status: watch::Receiver<ClaimStatus>,
}

impl Tenure {
    /// The resource.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// This tenure's id (rises with every acquisition on this node).
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// This tenure's fencing term for the resource: one above every term of it this node
    /// knew of when it acquired (terms travel in the gossiped records). Write it with
    /// each side effect and let the store refuse one lower than the highest it has seen:
    /// a holder that was displaced while it still runs is then refused. In the default
    /// (available) mode terms rise from holder to holder whenever the new holder had
    /// heard, directly or through any member's record, of the previous holder's term:
    /// always for a handover, and for a failover once the crashed holder's record had
    /// spread. Two sides of a partition, and nodes acquiring concurrently (at start-up,
    /// or several tickets), can hold the same term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Whether the tenure must end (the application must stop).
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
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches.
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

/// A held ticket. Run the service while you hold it; stop when [`Lease::lost`] resolves,
/// then drop it: dropping hands the ticket over. Dropping a lease that was not lost
/// steps down (the node stays out of the candidates for a back-off period).
#[derive(Debug)]
#[must_use = "dropping a Lease hands the ticket over (or steps down) at once"]
pub struct Lease {
    pub(super) tenure: Tenure,
    commands: mpsc::UnboundedSender<Command>,
}

impl Lease {
    /// The resource.
    pub fn resource(&self) -> &str {
        self.tenure.resource()
    }

    /// This tenure's id (rises with every acquisition on this node).
    pub fn id(&self) -> LeaseId {
        self.tenure.id()
    }

    /// This tenure's fencing term (see [`Tenure::term`]).
    pub fn term(&self) -> u64 {
        self.tenure.term()
    }

    /// Whether the lease was lost (the application must stop).
    pub fn is_lost(&self) -> bool {
        self.tenure.is_lost()
    }

    /// Resolves when this node must stop running the resource, with the reason.
    ///
    /// # Cancel safety
    /// Cancel safe: it only watches.
    pub async fn lost(&self) -> LostReason {
        self.tenure.lost().await
    }

    /// The tenure, to hand to a task that must watch for its end while this lease stays
    /// here.
    pub fn tenure(&self) -> Tenure {
        self.tenure.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::LeaseDropped {
            resource: self.tenure.resource.clone(),
            lease: self.tenure.id,
        });
    }
}
