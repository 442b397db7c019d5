//! Jobs the crate runs while a ticket is held (`Node::run_while_held`), over real UDP on
//! 127.0.0.1: the job is cancelled, and has ended, before the ticket moves.

mod common;

use std::future::Future;
use std::time::Duration;

use common::*;
use gossip_election::{Election, Node, Tenure};

/// A job that runs until cancelled, logged as holding from its start to its end.
fn endless(
    name: &str,
    log: &Log,
) -> impl FnMut(Tenure) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + 'static {
    let (name, log) = (name.to_string(), log.clone());
    move |_tenure| {
        let (name, log) = (name.clone(), log.clone());
        Box::pin(async move {
            let _running = Running::new(&name, &log);
            std::future::pending::<()>().await;
        })
    }
}

/// Logs the job's end when dropped (its future is dropped when it is cancelled).
struct Running {
    name: String,
    log: Log,
}

impl Running {
    fn new(name: &str, log: &Log) -> Self {
        log.acquired(name);
        Running {
            name: name.to_string(),
            log: log.clone(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.log.released(&self.name);
    }
}

async fn run(node: &Node, log: &Log) -> Election {
    node.run_while_held("echo", 1, endless(node.name(), log))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_is_cancelled_before_a_higher_ranked_newcomer_starts_it() {
    // echo over w0..w2 ranks w0, w2, w1.
    let log = Log::default();
    let addrs: Vec<_> = (0..3).map(|_| free_addr()).collect();
    let w1 = fleet_member("w1", &addrs, 1).start().await.unwrap();
    let w2 = fleet_member("w2", &addrs, 2).start().await.unwrap();
    let _e1 = run(&w1, &log).await;
    let _e2 = run(&w2, &log).await;
    log.wait_for("w2 to run the job", |l| l.holders() == ["w2"])
        .await;
    let w0 = fleet_member("w0", &addrs, 0).start().await.unwrap();
    let _e0 = run(&w0, &log).await;
    log.wait_for("w0 to run the job", |l| l.holders() == ["w0"])
        .await;
    assert_eq!(
        log.max_holders(),
        1,
        "two jobs ran at once: {:?}",
        log.steps()
    );
    for node in [&w0, &w1, &w2] {
        node.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawing_or_dropping_the_election_ends_the_job_before_the_ticket_moves() {
    let log = Log::default();
    let addrs: Vec<_> = (0..3).map(|_| free_addr()).collect();
    let nodes = start_fleet(&["w0", "w1", "w2"], &addrs).await;
    let mut elections = Vec::new();
    for node in &nodes {
        elections.push(Some(run(node, &log).await));
    }
    log.wait_for("w0 to run the job", |l| l.holders() == ["w0"])
        .await;

    // withdraw() returns once the job has ended and the ticket is yielded.
    elections[0].take().unwrap().withdraw().await;
    assert!(
        !log.holders().contains(&"w0".to_string()),
        "{:?}",
        log.steps()
    );
    log.wait_for("w2 to run the job", |l| l.holders() == ["w2"])
        .await;

    // Dropping the Election does the same in the background.
    drop(elections[2].take());
    log.wait_for("w1 to run the job", |l| l.holders() == ["w1"])
        .await;
    assert_eq!(
        log.max_holders(),
        1,
        "two jobs ran at once: {:?}",
        log.steps()
    );
    for node in &nodes {
        node.leave().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_that_returns_steps_the_node_down() {
    // echo over w0 and w2 ranks w0 first.
    let log = Log::default();
    let addrs: Vec<_> = (0..3).map(|_| free_addr()).collect();
    let w0 = fleet_member("w0", &addrs, 0)
        .step_down_backoff(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let w2 = fleet_member("w2", &addrs, 2).start().await.unwrap();
    let quitter = {
        let log = log.clone();
        move |_tenure: Tenure| {
            let log = log.clone();
            async move {
                let _running = Running::new("w0", &log);
            }
        }
    };
    let _e0 = w0.run_while_held("echo", 1, quitter).await.unwrap();
    let _e2 = run(&w2, &log).await;
    log.wait_for("w2 to run the job", |l| l.holders() == ["w2"])
        .await;
    expect_owners(&[&w0, &w2], "echo", &["w2"]).await;
    let w0_runs = log
        .steps()
        .iter()
        .filter(|s| **s == Step::Acquired("w0".into()))
        .count();
    assert_eq!(
        w0_runs,
        1,
        "w0 came back within its back-off: {:?}",
        log.steps()
    );
    for node in [&w0, &w2] {
        node.leave().await;
    }
}
