//! `gossip-election run` with real child processes: three sidecars on 127.0.0.1 whose
//! children record themselves in a ledger file. Each child takes a lock as it starts
//! (a second live child could not, and says so), and a watcher thread checks the
//! children's processes every millisecond: exactly one child is alive at any time.
//! Waits are bounded; no test asserts how fast anything happens (the figures are
//! printed).

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Three sidecars running `script_for(name)`, all joining through each other.
fn three(
    scratch: &Scratch,
    names: [&str; 3],
    script_for: impl Fn(&str) -> String,
    extra: &[&str],
) -> Vec<Sidecar> {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    names
        .iter()
        .zip(&ports)
        .map(|(name, port)| Sidecar::start(scratch, name, *port, &ports, &script_for(name), extra))
        .collect()
}

fn no_overlap(ledger_path: &std::path::Path, watch: &Watch) {
    let overlaps: Vec<_> = ledger(ledger_path)
        .into_iter()
        .filter(|e| matches!(e, Entry::Overlap { .. }))
        .collect();
    assert!(overlaps.is_empty(), "two children at once: {overlaps:?}");
    assert_eq!(watch.most_alive(), 1, "children alive at once");
}

#[test]
fn kill_9_of_the_holding_sidecar_takes_its_child_and_the_ticket_moves() {
    let scratch = Scratch::new("kill9");
    let (ledger_path, lock) = (scratch.path("ledger"), scratch.path("lock"));
    let watch = Watch::new(&ledger_path);
    let mut sidecars = three(
        &scratch,
        ["w1", "w2", "w3"],
        |_| steady_child(&ledger_path, &lock),
        &[],
    );
    let (first, holder) = the_live_child(&ledger_path);
    let at = sidecars.iter().position(|s| s.name == holder).unwrap();
    let killed = Instant::now();
    sidecars[at].signal(Signal::KILL);
    sidecars[at].wait();
    // The parent-death signal: the child goes with its sidecar, not at the next owner.
    wait_for("the killed sidecar's child to die", || !alive(first));
    let child_gone = killed.elapsed();
    let (second, successor) = the_live_child(&ledger_path);
    eprintln!(
        "kill -9 of {holder}'s sidecar: child {first} gone after {child_gone:?}; \
         {successor}'s child {second} started after {:?}",
        killed.elapsed()
    );
    assert_ne!(successor, holder);
    assert_ne!(second, first);
    no_overlap(&ledger_path, &watch);
    for sidecar in &mut sidecars {
        if sidecar.name != holder {
            sidecar.signal(Signal::TERM);
            assert_eq!(sidecar.wait().code(), Some(0), "{}", sidecar.stderr());
        }
    }
    assert!(!alive(second), "the child outlived its sidecar's SIGTERM");
}

#[test]
fn sigterm_to_the_holder_stops_its_child_before_the_successor_starts() {
    let scratch = Scratch::new("sigterm");
    let (ledger_path, lock) = (scratch.path("ledger"), scratch.path("lock"));
    let watch = Watch::new(&ledger_path);
    let mut sidecars = three(
        &scratch,
        ["w1", "w2", "w3"],
        |_| steady_child(&ledger_path, &lock),
        &[],
    );
    let (first, holder) = the_live_child(&ledger_path);
    let at = sidecars.iter().position(|s| s.name == holder).unwrap();
    let signalled = Instant::now();
    sidecars[at].signal(Signal::TERM);
    wait_for("a new child", || starts(&ledger_path).len() == 2);
    let handover = signalled.elapsed();
    let (second, successor) = the_live_child(&ledger_path);
    assert_eq!(
        sidecars[at].wait().code(),
        Some(0),
        "{}",
        sidecars[at].stderr()
    );
    let entries = ledger(&ledger_path);
    let stop = entries
        .iter()
        .position(|e| *e == Entry::Stop { pid: first });
    let start = entries
        .iter()
        .position(|e| matches!(e, Entry::Start { pid, .. } if *pid == second));
    assert!(
        stop.is_some() && stop < start,
        "the old child must record its stop before the new one starts: {entries:?}"
    );
    eprintln!(
        "SIGTERM to {holder}'s sidecar: {successor}'s child {second} started after {handover:?}; ledger {entries:?}"
    );
    no_overlap(&ledger_path, &watch);
    assert!(
        sidecars[at].stderr().contains("the child stopped"),
        "{}",
        sidecars[at].stderr()
    );
}

#[test]
fn a_crash_looping_child_steps_down_with_back_off_and_the_ticket_moves_to_a_healthy_worker() {
    let scratch = Scratch::new("crashloop");
    let (ledger_path, lock) = (scratch.path("ledger"), scratch.path("lock"));
    // The crash-looping worker is the one the placement prefers for `job`.
    let names = ["a", "b", "c"];
    let looper = gossip_election::placement::desired_owners("job", names, 1)[0];
    let watch = Watch::new(&ledger_path);
    let started = Instant::now();
    let sidecars = three(
        &scratch,
        names,
        |name| {
            if name == looper {
                crashing_child(&ledger_path, &lock)
            } else {
                steady_child(&ledger_path, &lock)
            }
        },
        &["--backoff", "2s"],
    );
    // It runs first (it is preferred), exits, and a healthy worker takes the ticket.
    wait_for("a healthy worker's child", || {
        starts(&ledger_path).iter().any(|(_, node)| node != looper)
    });
    // Watch the fleet for 30 s from the start: the back-off doubles (2, 4, 8, 16 s), so
    // the preferred worker takes the ticket back at most 4 times; stepping down without
    // a growing back-off would take it back every few seconds.
    while started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = starts(&ledger_path);
    let looper_runs = all.iter().filter(|(_, node)| node == looper).count();
    eprintln!("crash loop on {looper}: {looper_runs} runs in 30 s; children in order: {all:?}");
    assert!((1..=4).contains(&looper_runs), "{all:?}");
    let (_, holder) = the_live_child(&ledger_path);
    assert_ne!(holder, looper, "{all:?}");
    no_overlap(&ledger_path, &watch);
    let looper_log = sidecars.iter().find(|s| s.name == looper).unwrap().stderr();
    assert!(
        looper_log.contains("the child exited on its own") && looper_log.contains("exit status 1"),
        "{looper_log}"
    );
}

#[test]
fn a_grace_period_not_shorter_than_the_handoff_timeout_is_refused() {
    let output = std::process::Command::new(BIN)
        .args([
            "run",
            "--name",
            "w1",
            "--bind",
            "127.0.0.1:1",
            "--join",
            "127.0.0.1:1",
            "--resource",
            "job",
            "--grace",
            "5s",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--grace 5s must be shorter than --handoff-timeout 5s"),
        "{stderr}"
    );
}

#[test]
fn flags_read_their_environment_variables_and_none_reaches_the_child() {
    let scratch = Scratch::new("env");
    let out = scratch.path("env");
    let port = free_port();
    let mut sidecar = std::process::Command::new(BIN)
        .args(["run", "--", "sh", "-c"])
        .arg(format!(
            "env | grep ^GOSSIP_ELECTION_ | sort > {}; exec sleep 1000",
            out.display()
        ))
        .env("GOSSIP_ELECTION_NAME", "solo")
        .env("GOSSIP_ELECTION_BIND", format!("127.0.0.1:{port}"))
        .env("GOSSIP_ELECTION_JOIN", format!("127.0.0.1:{port}"))
        .env("GOSSIP_ELECTION_RESOURCE", "job")
        .env("GOSSIP_ELECTION_GRACE", "1s")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Alone, it runs the job after the sync timeout (3 s).
    wait_for("the child's environment", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() == 3)
    });
    let env = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        env,
        "GOSSIP_ELECTION_LEASE=1\nGOSSIP_ELECTION_NODE=solo\nGOSSIP_ELECTION_RESOURCE=job\n"
    );
    signal_pid(sidecar.id(), Signal::TERM);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = sidecar.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the sidecar did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
}
