//! The README demo: a fleet of in-process workers on loopback elects the owners of
//! `echo`, survives a crash of an owner and a graceful stop of the next one, and prints
//! how long each took.
//!
//! ```text
//! cargo run --release --example fleet -- --nodes 5 --tickets 1
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use gossip_election::{Node, Owners};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "Elect, crash the owner, stop the next one: print failover and handoff times")]
struct Args {
    /// Workers in the fleet.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// How many workers may hold `echo` at once.
    #[arg(long, default_value_t = 1)]
    tickets: u16,
}

#[derive(Debug)]
enum Change {
    Acquired(usize, Instant),
    Released,
}

const RESOURCE: &str = "echo";
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    if args.nodes < 3 || usize::from(args.tickets) + 2 > args.nodes {
        return Err(format!(
            "--nodes must be at least 3 and at least --tickets + 2 (got {} nodes, {} tickets)",
            args.nodes, args.tickets
        )
        .into());
    }

    // Form the fleet: each worker joins through those started before it.
    let started = Instant::now();
    let mut nodes: Vec<Node> = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for i in 0..args.nodes {
        let node = Node::builder(format!("worker-{i}"))
            .bind("127.0.0.1:0".parse()?)
            .join(addrs.iter().copied())
            .start()
            .await?;
        addrs.push(node.addr());
        nodes.push(node);
    }

    // Every worker runs the same loop: take a ticket, run until told to stop, hand over.
    let (changes_tx, mut changes) = mpsc::unbounded_channel();
    for (i, node) in nodes.iter().enumerate() {
        let mut candidacy = node.obtain(RESOURCE, args.tickets).await?;
        let changes_tx = changes_tx.clone();
        tokio::spawn(async move {
            while let Ok(lease) = candidacy.acquired().await {
                let _ = changes_tx.send(Change::Acquired(i, Instant::now()));
                lease.lost().await;
                let _ = changes_tx.send(Change::Released);
                drop(lease);
            }
        });
    }

    let owners = settle(&nodes, args.tickets, &[]).await?;
    println!(
        "fleet of {} formed in {} ms; {RESOURCE} (tickets {}) is owned by {}",
        args.nodes,
        started.elapsed().as_millis(),
        args.tickets,
        names(&owners)
    );
    let mut holders: Vec<usize> = owners.holders.iter().map(|o| index(&o.name)).collect();
    while changes.try_recv().is_ok() {}

    // Crash the top owner: failure detection moves its ticket.
    let crashed = holders[0];
    let t0 = Instant::now();
    nodes[crashed].crash().await;
    println!("crashed {}", nodes[crashed].name());
    let (next, at) = next_acquisition(&mut changes, &[crashed]).await?;
    println!(
        "failover: {:.1} ms ({} took over)",
        millis(at.duration_since(t0)),
        nodes[next].name()
    );
    holders.retain(|h| *h != crashed);
    let owners = settle(&nodes, args.tickets, &[crashed]).await?;
    println!("{RESOURCE} is owned by {}", names(&owners));
    while changes.try_recv().is_ok() {}

    // Stop the new owner gracefully: it hands over before it goes.
    let t1 = Instant::now();
    let leaving = nodes[next].clone();
    let leave = tokio::spawn(async move { leaving.leave().await });
    let (third, at) = next_acquisition(&mut changes, &[crashed, next]).await?;
    println!(
        "handoff: {:.1} ms ({} took over)",
        millis(at.duration_since(t1)),
        nodes[third].name()
    );
    leave.await?;
    let owners = settle(&nodes, args.tickets, &[crashed, next]).await?;
    println!("{RESOURCE} is owned by {}", names(&owners));

    let mut leaving = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        if i != crashed && i != next {
            let node = node.clone();
            leaving.push(tokio::spawn(async move { node.leave().await }));
        }
    }
    for leave in leaving {
        leave.await?;
    }
    Ok(())
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn index(name: &str) -> usize {
    name.trim_start_matches("worker-")
        .parse()
        .unwrap_or(usize::MAX)
}

fn names(owners: &Owners) -> String {
    owners
        .holders
        .iter()
        .map(|o| o.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until every running worker sees every other one as a candidate and reports the
/// same owners, `tickets` of them, all desired.
async fn settle(nodes: &[Node], tickets: u16, gone: &[usize]) -> Result<Owners, String> {
    let deadline = Instant::now() + PATIENCE;
    let running = nodes.len() - gone.len();
    loop {
        let mut views = Vec::new();
        let mut all_candidates = true;
        for (i, node) in nodes.iter().enumerate() {
            if !gone.contains(&i) {
                views.push(node.owners(RESOURCE).await.map_err(|e| e.to_string())?);
                let candidates = node.candidates(RESOURCE).await.map_err(|e| e.to_string())?;
                all_candidates &= candidates.len() == running;
            }
        }
        let first = &views[0];
        if all_candidates
            && first.holders.len() == usize::from(tickets)
            && first.holders == first.desired
            && views.iter().all(|v| v == first)
        {
            return Ok(first.clone());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the fleet did not agree on owners within {PATIENCE:?}: {views:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_acquisition(
    changes: &mut mpsc::UnboundedReceiver<Change>,
    excluded: &[usize],
) -> Result<(usize, Instant), String> {
    let wait = async {
        while let Some(change) = changes.recv().await {
            if let Change::Acquired(i, at) = change
                && !excluded.contains(&i)
            {
                return Some((i, at));
            }
        }
        None
    };
    match tokio::time::timeout(PATIENCE, wait).await {
        Ok(Some(found)) => Ok(found),
        _ => Err(format!("nobody took over within {PATIENCE:?}")),
    }
}
