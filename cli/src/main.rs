//! `gossip-election`: see the crate documentation of `gossip_election_cli`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use gossip_election_cli::{Cli, Command, Look, LookArgs, RunArgs};

enum Task {
    Run(Box<RunArgs>),
    Look(Look, LookArgs),
}

fn main() -> ExitCode {
    let task = match Cli::parse().command {
        // Before any runtime or thread: this process becomes the command.
        Command::ExecChild(args) => return gossip_election_cli::exec_child(args),
        Command::Run(args) => Task::Run(args),
        Command::Members(args) => Task::Look(Look::Members, args),
        Command::Owners(args) => Task::Look(Look::Owners, args),
        Command::Events(args) => Task::Look(Look::Events, args),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // One thread: the child's parent-death signal follows the thread that spawned it,
    // and this one lives as long as the process.
    let runtime = match gossip_election_cli::one_thread_runtime() {
        Ok(runtime) => runtime,
        Err(exit) => return exit.into(),
    };
    let exit = runtime.block_on(async move {
        match task {
            Task::Run(args) => gossip_election_cli::run(*args).await,
            Task::Look(what, args) => gossip_election_cli::look(what, args).await,
        }
    });
    exit.into()
}
