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

/// How often to look whether the child's group is gone, and how long after SIGKILL at
/// most (a process in uninterruptible sleep dies only when its I/O ends).
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
        // This very binary, even when the file was replaced by an upgrade meanwhile.
        let mut shim = tokio::process::Command::new("/proc/self/exe");
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

    /// Stops the child and everything in its process group: SIGTERM to the group (also
    /// when the command has exited already: what it left behind gets the same chance),
    /// SIGKILL to the group once `grace` has passed with any of it still running. Returns
    /// once the command is reaped and its group is empty, or a second after SIGKILL at
    /// most (a process in uninterruptible sleep dies only when its I/O ends).
    pub(crate) async fn stop(mut self, grace: Duration) -> io::Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + grace;
        self.signal(Signal::TERM);
        let mut killed_at = None;
        let status = match tokio::time::timeout_at(deadline, self.process.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                warn!(
                    pid = self.pid(),
                    ?grace,
                    "the child did not stop within the grace period: SIGKILL"
                );
                self.signal(Signal::KILL);
                killed_at = Some(tokio::time::Instant::now());
                self.process.wait().await?
            }
        };
        // The rest of the group: its orphans were handed to this process (a subreaper,
        // see `become_subreaper`), so reap them, or they would linger as zombies.
        loop {
            let reap = WaitIdOptions::EXITED | WaitIdOptions::NOHANG;
            while let Ok(Some(_)) = waitid(WaitId::Pgid(Some(self.group)), reap) {}
            if test_kill_process_group(self.group) == Err(rustix::io::Errno::SRCH) {
                break;
            }
            let now = tokio::time::Instant::now();
            match killed_at {
                None if now >= deadline => {
                    warn!(
                        pid = self.pid(),
                        ?grace,
                        "processes of the child's group outlived the grace period: SIGKILL"
                    );
                    self.signal(Signal::KILL);
                    killed_at = Some(now);
                }
                Some(at) if now >= at + GROUP_PATIENCE => {
                    warn!(
                        pid = self.pid(),
                        "processes of the child's group outlive SIGKILL"
                    );
                    break;
                }
                _ => {}
            }
            tokio::time::sleep(GROUP_POLL).await;
        }
        // Orphans that left the group (setsid) were handed here too: reap the exited ones.
        while let Ok(Some(_)) = waitid(WaitId::All, WaitIdOptions::EXITED | WaitIdOptions::NOHANG) {
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
