//! Runs the real `echo` example as three processes on 127.0.0.1 and kills the holder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const PATIENCE: Duration = Duration::from_secs(30);

/// `cargo test` builds the examples next to the test binaries' `deps` folder.
fn echo_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("examples").join("echo");
    assert!(
        path.exists(),
        "{} is missing: run through `cargo test`",
        path.display()
    );
    path
}

fn free_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Worker {
    child: Child,
    pid: u32,
    hellos: Arc<Mutex<usize>>,
}

fn spawn(i: usize, addrs: &[SocketAddr], tickets: u16) -> Worker {
    spawn_with(i, addrs, tickets, &[])
}

fn spawn_with(i: usize, addrs: &[SocketAddr], tickets: u16, extra: &[&str]) -> Worker {
    let mut cmd = Command::new(echo_binary());
    cmd.args(extra);
    cmd.arg("--name")
        .arg(format!("w{i}"))
        .arg("--bind")
        .arg(addrs[i].to_string())
        .arg("--tickets")
        .arg(tickets.to_string())
        .arg("--interval")
        .arg("100ms")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for a in addrs {
        cmd.arg("--join").arg(a.to_string());
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    let hellos = Arc::new(Mutex::new(0));
    let stdout = child.stdout.take().unwrap();
    let counter = Arc::clone(&hellos);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            assert_eq!(
                line,
                format!("Hello World, pid: {pid}"),
                "unexpected stdout line"
            );
            *counter.lock().unwrap() += 1;
        }
    });
    Worker { child, pid, hellos }
}

fn counts(workers: &[Worker]) -> Vec<usize> {
    workers.iter().map(|w| *w.hellos.lock().unwrap()).collect()
}

/// Which workers print during a 1 s window, once the fleet printed something.
async fn printing(workers: &[Worker]) -> Vec<usize> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let before = counts(workers);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = counts(workers);
        let active: Vec<usize> = (0..workers.len())
            .filter(|&i| after[i] > before[i])
            .collect();
        if !active.is_empty() {
            return active;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody printed Hello"
        );
    }
}

/// Waits until exactly `n` workers (among `alive`) print over a 1 s window.
async fn settle(workers: &[Worker], alive: &[usize], n: usize) -> Vec<usize> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let active = printing(workers).await;
        if active.len() == n && active.iter().all(|i| alive.contains(i)) {
            // Hold for another window to be sure it is stable.
            if printing(workers).await == active {
                return active;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never settled on {n} printers: {active:?}"
        );
    }
}

async fn run_fleet(tickets: u16) {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut workers: Vec<Worker> = (0..3).map(|i| spawn(i, &addrs, tickets)).collect();
    let mut alive: Vec<usize> = vec![0, 1, 2];
    let holders = settle(&workers, &alive, tickets.into()).await;

    // kill -9 of a holder: another worker prints.
    let victim = holders[0];
    workers[victim].child.start_kill().unwrap();
    workers[victim].child.wait().await.unwrap();
    alive.retain(|i| *i != victim);
    let after_kill = settle(&workers, &alive, tickets.into()).await;
    assert!(after_kill.iter().all(|i| *i != victim));

    // SIGTERM of a holder: it leaves, exits 0, and the last worker takes over.
    let stopped = after_kill[0];
    let pid = workers[stopped].pid;
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(PATIENCE, workers[stopped].child.wait())
        .await
        .expect("worker exits after SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    alive.retain(|i| *i != stopped);
    let last = settle(&workers, &alive, tickets.min(1).into()).await;
    assert_eq!(last, alive);
    for w in &mut workers {
        let _ = w.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_processes_one_ticket_survive_sigkill_and_sigterm() {
    run_fleet(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_processes_two_tickets_keep_two_printers() {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut workers: Vec<Worker> = (0..3).map(|i| spawn(i, &addrs, 2)).collect();
    let holders = settle(&workers, &[0, 1, 2], 2).await;
    let victim = holders[0];
    workers[victim].child.start_kill().unwrap();
    workers[victim].child.wait().await.unwrap();
    let alive: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let after = settle(&workers, &alive, 2).await;
    assert_eq!(after, alive);
    for w in &mut workers {
        let _ = w.child.start_kill();
    }
}

/// Quorum mode: the holder of three workers loses both others (kill -9) and, left without
/// a majority, stops printing and stays stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_processes_in_quorum_mode_stop_a_holder_without_a_majority() {
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    let mut workers: Vec<Worker> = (0..3)
        .map(|i| spawn_with(i, &addrs, 1, &["--quorum", "3"]))
        .collect();
    let holder = settle(&workers, &[0, 1, 2], 1).await[0];
    for (i, w) in workers.iter_mut().enumerate() {
        if i != holder {
            w.child.start_kill().unwrap();
            w.child.wait().await.unwrap();
        }
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let before = counts(&workers)[holder];
        tokio::time::sleep(Duration::from_secs(1)).await;
        if counts(&workers)[holder] == before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the holder kept printing without a majority"
        );
    }
    let stopped = counts(&workers)[holder];
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(counts(&workers)[holder], stopped, "it printed again");
    let _ = workers[holder].child.start_kill();
}
