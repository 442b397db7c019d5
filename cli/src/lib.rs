//! The `gossip-election` binary: `run` embeds a node and supervises a child process while
//! this worker holds a ticket, so a program in any language gets the election; `members`,
//! `owners` and `events` read a node's debug endpoint from a shell.
//!
//! The command line is [`Cli`]; what each exit code means is [`Exit`]. The binary's
//! `main` only parses and dispatches, so tests check command lines (the deployment
//! examples' among them) against the same definitions.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gossip_election::{Alone, Seed};

mod child;
mod look;
mod run;
mod shim;

pub use look::{Look, look};
pub use run::run;
pub use shim::exec_child;

/// The command line.
#[derive(Parser, Debug)]
#[command(
    name = "gossip-election",
    version,
    about = "Coordinator-free election for any program: run a command while this worker holds a ticket"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Join the fleet and run CMD while this worker holds a ticket for the resource.
    Run(Box<RunArgs>),
    /// Print the membership as a node sees it.
    Members(LookArgs),
    /// Print the owners of every resource as a node sees them.
    Owners(LookArgs),
    /// Follow a node's events.
    Events(LookArgs),
    /// The child's first step: set the parent-death signal, then exec the command.
    #[command(name = "exec-child", hide = true)]
    ExecChild(ExecChildArgs),
}

/// `gossip-election run`. Every flag also reads the environment variable named in its
/// help (a list: comma-separated).
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Stable, fleet-unique worker name.
    #[arg(long, env = "GOSSIP_ELECTION_NAME")]
    pub name: String,
    /// UDP address to bind.
    #[arg(long, env = "GOSSIP_ELECTION_BIND")]
    pub bind: SocketAddr,
    /// Address peers send to, HOST:PORT or an address (required with a wildcard bind); a
    /// name is resolved once at start, so a container can give its own service name.
    #[arg(long, env = "GOSSIP_ELECTION_ADVERTISE")]
    pub advertise: Option<Seed>,
    /// Fleet members to join through, HOST:PORT or addresses (repeatable, or
    /// comma-separated); this worker's own address is fine, and a name counts every
    /// address it resolves to (a headless service, a compose service).
    #[arg(
        long,
        env = "GOSSIP_ELECTION_JOIN",
        value_delimiter = ',',
        required = true
    )]
    pub join: Vec<Seed>,
    /// The resource to compete for.
    #[arg(long, env = "GOSSIP_ELECTION_RESOURCE")]
    pub resource: String,
    /// How many workers may run it at once.
    #[arg(long, env = "GOSSIP_ELECTION_TICKETS", default_value_t = 1)]
    pub tickets: u16,
    /// Whether to run alone when nobody is reachable: `never` (hold nothing until
    /// connected; give tickets up on losing every member), or after a duration.
    #[arg(long, env = "GOSSIP_ELECTION_ALONE", default_value = "3s")]
    pub alone: Alone,
    /// Quorum mode with a fleet of M workers: run the command only while a majority of
    /// them promise the ticket, so it never runs on both sides of a partition. The child
    /// must stop within --grace (below --handoff-timeout) when told.
    #[arg(long, env = "GOSSIP_ELECTION_QUORUM", value_name = "M", value_parser = clap::value_parser!(u16).range(1..))]
    pub quorum: Option<u16>,
    /// Serve the debug endpoint (dashboard, JSON, events, metrics) here.
    #[arg(long, env = "GOSSIP_ELECTION_DEBUG_ADDR")]
    pub debug_addr: Option<SocketAddr>,
    /// Cluster keys, one hex key (64 digits) a line: the first seals, all open.
    #[arg(long, env = "GOSSIP_ELECTION_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// With keys, how to treat plaintext while a fleet turns keys on.
    #[arg(long, env = "GOSSIP_ELECTION_PLAINTEXT", default_value = "refuse")]
    pub plaintext: PlaintextArg,
    /// How long the child may take to stop after SIGTERM before it is killed; shorter
    /// than --handoff-timeout by at least 0.5 s.
    #[arg(long, env = "GOSSIP_ELECTION_GRACE", default_value = "3s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// How long the node waits for a lost ticket to be given up before it yields it
    /// anyway (the sidecar gives it up once the child is gone).
    #[arg(long, env = "GOSSIP_ELECTION_HANDOFF_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub handoff_timeout: Duration,
    /// After the child exits on its own, the worker stops competing for this long,
    /// doubled at each exit in a row up to --backoff-max.
    #[arg(long, env = "GOSSIP_ELECTION_BACKOFF", default_value = "10s", value_parser = humantime::parse_duration)]
    pub backoff: Duration,
    /// The longest back-off; a child that ran this long resets it.
    #[arg(long, env = "GOSSIP_ELECTION_BACKOFF_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// The command to run while this worker holds a ticket, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// With keys, how to treat plaintext while a fleet turns keys on.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlaintextArg {
    /// Send plaintext, accept both.
    Send,
    /// Send sealed, accept both.
    Accept,
    /// Sealed only.
    Refuse,
}

/// `members`, `owners`, `events`.
#[derive(Args, Debug, Clone)]
pub struct LookArgs {
    /// The node's debug endpoint, HOST:PORT.
    #[arg(long, env = "GOSSIP_ELECTION_DEBUG_ADDR")]
    pub debug_addr: String,
    /// Print the endpoint's JSON (one document; for `events`, one event a line).
    #[arg(long, env = "GOSSIP_ELECTION_JSON")]
    pub json: bool,
}

/// The shim's arguments.
#[derive(Args, Debug, Clone)]
pub struct ExecChildArgs {
    /// The sidecar's pid: if it is gone already, do not run the command.
    #[arg(long)]
    pub parent: u32,
    /// The command.
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// What the process's exit code says.
///
/// | code | `run` | `members`, `owners`, `events` |
/// |---|---|---|
/// | 0 | stopped by SIGTERM or SIGINT: the child was stopped, then the node left the fleet | printed (`events`: never, it follows) |
/// | 1 | an unexpected failure (installing a signal handler, starting the runtime) | the same |
/// | 2 | the command line or the configuration is wrong; the message says what | the same |
/// | 3 | the node could not start (an address is taken, the key file is unreadable) | — |
/// | 4 | the node stopped on its own, or a newer process of its name took over | — |
/// | 5 | — | the endpoint is unreachable, or closed the event stream |
/// | 6 | — | the endpoint answered, but not as a gossip-election debug endpoint |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done as asked.
    Ok = 0,
    /// An unexpected failure.
    Internal = 1,
    /// Wrong command line or configuration.
    Usage = 2,
    /// The node could not start.
    StartFailed = 3,
    /// The node stopped on its own.
    NodeStopped = 4,
    /// The debug endpoint is unreachable.
    Unreachable = 5,
    /// The debug endpoint answered something else.
    BadAnswer = 6,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}

/// A current-thread tokio runtime: the sidecar's (the child's parent-death signal
/// follows the thread that spawned it, and this one lives as long as the process) and
/// the shim's. Says why on stderr if it cannot be built.
pub fn one_thread_runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            eprintln!("gossip-election: cannot start the runtime: {err}");
            Exit::Internal
        })
}

/// The environment variables the sidecar reads: none of them reaches the child.
pub const ENV_PREFIX: &str = "GOSSIP_ELECTION_";
