//! Jobs the crate runs while this node holds a ticket: [`Node::run_while_held`] and its
//! [`Election`].
//!
//! [`Node::run_while_held`]: crate::Node::run_while_held

use std::future::Future;
use std::panic::AssertUnwindSafe;

use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};
use tracing::{error, info};

use super::lease::{Candidacy, Tenure};

/// A job run by [`Node::run_while_held`]. Dropping it stops the job and withdraws, in
/// the background; [`Election::withdraw`] does the same and waits until the ticket is
/// yielded.
///
/// [`Node::run_while_held`]: crate::Node::run_while_held
#[derive(Debug)]
#[must_use = "dropping an Election stops its job and withdraws at once"]
pub struct Election {
    resource: String,
    /// Dropped (or sent) to stop the supervisor.
    stop: oneshot::Sender<()>,
    supervisor: JoinHandle<()>,
}

impl Election {
    pub(super) fn start<F, Fut>(candidacy: Candidacy, job: F) -> Election
    where
        F: FnMut(Tenure) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        Election {
            resource: candidacy.resource().to_string(),
            stop,
            supervisor: tokio::spawn(supervise(candidacy, job, stopped)),
        }
    }

    /// The resource.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Stops competing: cancels the job if it runs, waits until it has ended, and until
    /// the ticket is yielded.
    ///
    /// # Cancel safety
    /// The stop is given before the first await: dropping the future only stops the
    /// waiting; the job still ends and the ticket is still yielded.
    pub async fn withdraw(self) {
        let Election {
            stop, supervisor, ..
        } = self;
        drop(stop);
        let _ = supervisor.await;
    }
}

/// Runs `job` for every tenure of `candidacy` until `stopped` resolves (or its sender is
/// dropped), then withdraws: the one withdrawal of this candidacy.
async fn supervise<F, Fut>(mut candidacy: Candidacy, mut job: F, mut stopped: oneshot::Receiver<()>)
where
    F: FnMut(Tenure) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let resource = candidacy.resource().to_string();
    loop {
        let lease = tokio::select! {
            biased;
            _ = &mut stopped => break,
            lease = candidacy.acquired() => match lease {
                Ok(lease) => lease,
                // The node stopped: nothing is held any more.
                Err(_) => return,
            },
        };
        let tenure = lease.tenure();
        // A closure that panics before it returns a future is a job that panicked.
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| job(tenure.clone())));
        let mut running = match started {
            Ok(future) => Running(tokio::spawn(future)),
            Err(_) => {
                error!(resource, "the job panicked as it started: stepping down");
                drop(lease);
                continue;
            }
        };
        let stop = tokio::select! {
            biased;
            _ = &mut stopped => true,
            reason = tenure.lost() => {
                info!(resource, lease = %tenure.id(), %reason, "lease lost: cancelling the job");
                false
            }
            ended = &mut running.0 => {
                report_end(&resource, ended);
                // Dropping a lease that was not lost steps down, with back-off.
                drop(lease);
                continue;
            }
        };
        // Withdrawing first makes the lease lost (`Withdrawn`), so dropping it below yields
        // the ticket without the back-off of a step-down.
        let withdrawn = if stop {
            candidacy.begin_withdraw()
        } else {
            None
        };
        running.0.abort();
        if let Err(err) = (&mut running.0).await
            && err.is_panic()
        {
            report_end(&resource, Err(err));
        }
        // The job has ended: only now is the ticket yielded.
        drop(lease);
        if stop {
            if let Some(done) = withdrawn {
                let _ = done.await;
            }
            return;
        }
    }
    candidacy.withdraw().await;
}

/// A running job's task, aborted if the supervisor itself is dropped (its runtime shuts
/// down), so the job never outlives the lease it ran under.
struct Running(JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn report_end(resource: &str, ended: Result<(), JoinError>) {
    match ended {
        Ok(()) => info!(resource, "the job ended on its own: stepping down"),
        Err(err) if err.is_panic() => error!(resource, "the job panicked: stepping down"),
        Err(_) => {}
    }
}
