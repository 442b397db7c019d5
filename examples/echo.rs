//! One worker of a fleet: while this worker holds `echo`, it prints
//! `Hello World, pid: <pid>` at once and then every interval.
//!
//! ```text
//! cargo run --release --example echo -- --name w1 --bind 127.0.0.1:7101 \
//!     --join 127.0.0.1:7101 --join 127.0.0.1:7102 --join 127.0.0.1:7103
//! ```
//! Only the greeting goes to stdout; the lifecycle goes to stderr. SIGINT or SIGTERM
//! leaves gracefully.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use gossip_election::{Alone, Keyring, Node, Plaintext, Safety, Seed};

#[derive(Parser, Debug)]
#[command(about = "One worker that runs `echo` while it holds a ticket")]
struct Args {
    /// Stable, fleet-unique worker name.
    #[arg(long)]
    name: String,
    /// UDP address to bind.
    #[arg(long)]
    bind: SocketAddr,
    /// Address peers send to (required with a wildcard bind).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// A fleet member to join through, `host:port` or an address (repeatable; the own
    /// address is fine; a name counts every address it resolves to).
    #[arg(long)]
    join: Vec<Seed>,
    /// The resource to compete for.
    #[arg(long, default_value = "echo")]
    resource: String,
    /// How many workers may hold it at once.
    #[arg(long, default_value_t = 1)]
    tickets: u16,
    /// Serve the debug endpoint (dashboard, JSON, events, metrics) here.
    #[arg(long)]
    debug_addr: Option<SocketAddr>,
    /// How often to greet while holding it (e.g. 2s, 100ms).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Cluster keys, one hex key (64 digits) a line: the first seals, all open.
    #[arg(long)]
    key_file: Option<std::path::PathBuf>,
    /// Whether to run alone when nobody is reachable: `never`, or after a duration (3s).
    #[arg(long)]
    alone: Option<Alone>,
    /// Quorum mode with a fleet of M workers: hold `echo` only with a majority of them.
    #[arg(long, value_name = "M")]
    quorum: Option<u16>,
    /// With keys, how to treat plaintext while a fleet turns keys on: `send` (send
    /// plaintext, accept both), `accept` (send sealed, accept both), `refuse`.
    #[arg(long, default_value = "refuse")]
    plaintext: PlaintextArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PlaintextArg {
    Send,
    Accept,
    Refuse,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,gossip_election=info".into()),
        )
        .init();
    let args = Args::parse();

    let mut builder = Node::builder(&args.name).bind(args.bind).join(args.join);
    if let Some(advertise) = args.advertise {
        builder = builder.advertise(advertise);
    }
    if let Some(path) = &args.key_file {
        let keys = Keyring::load(path).map_err(|err| match std::error::Error::source(&err) {
            Some(cause) => format!("{err}: {cause}"),
            None => err.to_string(),
        })?;
        builder = builder.keys(keys).plaintext(match args.plaintext {
            PlaintextArg::Send => Plaintext::SendAndAccept,
            PlaintextArg::Accept => Plaintext::Accept,
            PlaintextArg::Refuse => Plaintext::Refuse,
        });
    }
    if let Some(alone) = args.alone {
        builder = builder.alone(alone);
    }
    if let Some(members) = args.quorum {
        builder = builder.safety(Safety::Quorum { members });
    }
    if let Some(debug) = args.debug_addr {
        builder = builder.debug_addr(debug);
    }
    let node = builder.start().await?;

    // While this worker holds a ticket, the crate runs the job; when the ticket must go,
    // it cancels the job and yields only once the job has ended.
    let interval = args.interval;
    let election = node
        .run_while_held(&args.resource, args.tickets, move |_tenure| async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                println!("Hello World, pid: {}", std::process::id());
            }
        })
        .await?;

    shutdown_signal().await;
    tracing::info!("shutting down");
    // Leaving cancels the job before the ticket goes to the next worker.
    node.leave().await;
    drop(election);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        biased;
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
