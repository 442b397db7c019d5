//! The child's supervisor. The sidecar starts its own binary as `exec-child` in a new
//! process group; this sets its parent-death signal, checks that the sidecar is still
//! there, and runs the command in its group. It then only waits: when the command exits
//! it exits with the same code (128 + N for a command killed by signal N); when the
//! sidecar dies (even by `kill -9`), the parent-death signal wakes it and it kills the
//! whole group, the command's own children too. So the old child is gone before the
//! fleet can start another.
//!
//! A SIGTERM the sidecar sends to the group reaches this process as well; it keeps
//! waiting for the command, which got the same signal. So do the signals a user sends
//! to the group (SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2): they are the command's.

use std::process::ExitCode;

use rustix::process::{Pid, Signal, getpgrp, getppid, kill_process_group};
use tokio::signal::unix::{SignalKind, signal};

use crate::{ExecChildArgs, Exit};

/// Runs the command as described above; returns its exit code.
pub fn exec_child(args: ExecChildArgs) -> ExitCode {
    let Some((program, rest)) = args.command.split_first() else {
        return Exit::Usage.into();
    };
    if let Err(err) = rustix::process::set_parent_process_death_signal(Some(Signal::TERM)) {
        eprintln!("gossip-election: cannot set the parent-death signal: {err}");
        return Exit::Internal.into();
    }
    let runtime = match crate::one_thread_runtime() {
        Ok(runtime) => runtime,
        Err(exit) => return exit.into(),
    };
    runtime.block_on(async move {
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(err) => {
                eprintln!("gossip-election: cannot handle SIGTERM: {err}");
                return Exit::Internal.into();
            }
        };
        // Signals a user sends to the group reach the command directly; they must not
        // end this process (the sidecar would take it for the command's exit).
        let mut others = Vec::new();
        for kind in [
            SignalKind::hangup(),
            SignalKind::interrupt(),
            SignalKind::quit(),
            SignalKind::user_defined1(),
            SignalKind::user_defined2(),
        ] {
            match signal(kind) {
                Ok(handler) => others.push(handler),
                Err(err) => {
                    eprintln!("gossip-election: cannot handle a signal: {err}");
                    return Exit::Internal.into();
                }
            }
        }
        // The sidecar may have died before the signal was set: then none would come.
        if !parent_alive(args.parent) {
            eprintln!("gossip-election: the sidecar is gone; not starting the command");
            return Exit::Internal.into();
        }
        // A stop that came before the command exists is a stop: do not start it.
        let stopped_early = tokio::select! {
            biased;
            _ = term.recv() => true,
            () = std::future::ready(()) => false,
        };
        if stopped_early {
            return ExitCode::from(128 + 15);
        }
        let mut command = match tokio::process::Command::new(program).args(rest).spawn() {
            Ok(command) => command,
            Err(err) => {
                eprintln!(
                    "gossip-election: cannot run {}: {err}",
                    program.to_string_lossy()
                );
                let code = if err.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                };
                return ExitCode::from(code);
            }
        };
        loop {
            tokio::select! {
                biased;
                status = command.wait() => return match status {
                    Ok(status) => exit_code(status),
                    Err(err) => {
                        eprintln!("gossip-election: cannot wait for the command: {err}");
                        Exit::Internal.into()
                    }
                },
                () = any_of(&mut others) => {}
                _ = term.recv() => {
                    if !parent_alive(args.parent) {
                        // This process is in the group too: nothing outlives the sidecar.
                        let _ = kill_process_group(getpgrp(), Signal::KILL);
                    }
                }
            }
        }
    })
}

/// Resolves when any of `signals` arrives.
async fn any_of(signals: &mut [tokio::signal::unix::Signal]) {
    std::future::poll_fn(|cx| {
        for signal in signals.iter_mut() {
            if signal.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn parent_alive(parent: u32) -> bool {
    getppid().is_some_and(|p| Some(p) == Pid::from_raw(parent as i32))
}

/// The command's exit code, or 128 + the signal that killed it (as shells report it).
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from(128u8.saturating_add(signal as u8)),
        (None, None) => Exit::Internal.into(),
    }
}
