//! The supervised child: started through the `exec-child` shim in its own process group,
//! stopped with SIGTERM to the group, then SIGKILL after the grace period.

use std::ffi::OsString;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{
    Pid, Signal, WaitId, WaitIdOptions, kill_process_group, test_kill_process_group, waitid,
};
use tracing::{info, warn};

use crate::ENV_PREFIX;

/// How often to look whether the child's group is gone after SIGKILL, and for how long
/// (a process in uninterruptible sleep dies only when its I/O ends).
const GROUP_POLL: Duration = Duration::from_millis(1);
const GROUP_PATIENCE: Duration = Duration::from_secs(1);

/// A running child process and its process group.
pub(crate) struct Child {
    process: tokio::process::Child,
    group: Pid,
}

impl Child {
    /// Starts `command` (through the shim) with `env` added and every `GOSSIP_ELECTION_*`
    /// variable of the sidecar's removed.
    pub(crate) fn spawn(command: &[OsString], env: &[(&str, String)]) -> io::Result<Child> {
        let exe = std::env::current_exe()?;
        let mut shim = tokio::process::Command::new(exe);
        shim.arg("exec-child")
            .arg("--parent")
            .arg(std::process::id().to_string())
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(false);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with(ENV_PREFIX) {
                shim.env_remove(key);
            }
        }
        shim.envs(env.iter().map(|(k, v)| (k, v)));
        let process = shim.spawn()?;
        let group = process
            .id()
            .and_then(|id| Pid::from_raw(id as i32))
            .ok_or_else(|| io::Error::other("the child has no pid"))?;
        Ok(Child { process, group })
    }

    /// The child's pid (and process group).
    pub(crate) fn pid(&self) -> i32 {
        self.group.as_raw_nonzero().get()
    }

    /// Waits until the child exits on its own. Cancel safe.
    pub(crate) async fn exited(&mut self) -> io::Result<ExitStatus> {
        self.process.wait().await
    }

    /// Stops the child: SIGTERM to its group, SIGKILL after `grace`, and once it has
    /// exited, SIGKILL to what is left of its group. Returns once the child is reaped and
    /// its group is empty (or a second after SIGKILL at most).
    pub(crate) async fn stop(mut self, grace: Duration) -> io::Result<ExitStatus> {
        let status = match self.process.try_wait()? {
            Some(status) => status,
            None => {
                self.signal(Signal::TERM);
                match tokio::time::timeout(grace, self.process.wait()).await {
                    Ok(status) => status?,
                    Err(_) => {
                        warn!(
                            pid = self.pid(),
                            ?grace,
                            "the child did not stop within the grace period: SIGKILL"
                        );
                        self.signal(Signal::KILL);
                        self.process.wait().await?
                    }
                }
            }
        };
        // Whatever else runs in its group goes too, and is gone before this returns. Its
        // orphans were handed to this process (a subreaper, see `become_subreaper`):
        // reap them, or they would linger as zombies of the group.
        self.signal(Signal::KILL);
        let deadline = tokio::time::Instant::now() + GROUP_PATIENCE;
        loop {
            let reap = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
            while let Ok(Some(_)) = waitid(WaitId::Pgid(Some(self.group)), reap) {}
            if test_kill_process_group(self.group) == Err(rustix::io::Errno::SRCH) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    pid = self.pid(),
                    "processes of the child's group outlive SIGKILL"
                );
                break;
            }
            tokio::time::sleep(GROUP_POLL).await;
        }
        info!(pid = self.pid(), status = %describe(status), "the child stopped");
        Ok(status)
    }

    fn signal(&self, signal: Signal) {
        match kill_process_group(self.group, signal) {
            Ok(()) => {}
            Err(rustix::io::Errno::SRCH) => {}
            Err(err) => warn!(pid = self.pid(), %err, ?signal, "cannot signal the child's group"),
        }
    }
}

/// Makes this process the reaper of its descendants' orphans, so that what a child's
/// processes leave behind can be reaped (and counted as gone) here.
pub(crate) fn become_subreaper() {
    if let Err(err) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        warn!(%err, "cannot become the child subreaper: orphans of a child are reaped by init");
    }
}

/// `exit status 1`, `killed by signal 9`.
pub(crate) fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}
