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

/// Sends SIGTERM to the sidecar whose child runs and waits for the next child: the old
/// child's pid, its worker's name and index, and how long the next child took to start.
fn sigterm_the_holder(
    sidecars: &[Sidecar],
    ledger_path: &std::path::Path,
) -> (u32, String, usize, Duration) {
    let (first, holder) = the_live_child(ledger_path);
    let at = sidecars.iter().position(|s| s.name == holder).unwrap();
    let signalled = Instant::now();
    sidecars[at].signal(Signal::TERM);
    wait_for("a new child", || starts(ledger_path).len() == 2);
    (first, holder, at, signalled.elapsed())
}

/// Three sidecars running well-behaved children, the ledger's path, and its watcher.
fn steady_three(scratch: &Scratch) -> (std::path::PathBuf, Watch, Vec<Sidecar>) {
    let (ledger_path, lock) = (scratch.path("ledger"), scratch.path("lock"));
    let watch = Watch::new(&ledger_path);
    let sidecars = three(
        scratch,
        ["w1", "w2", "w3"],
        |_| steady_child(&ledger_path, &lock),
        &[],
    );
    (ledger_path, watch, sidecars)
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
    let _serial = serial();
    let scratch = Scratch::new("kill9");
    let (ledger_path, watch, mut sidecars) = steady_three(&scratch);
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
    let _serial = serial();
    let scratch = Scratch::new("sigterm");
    let (ledger_path, watch, mut sidecars) = steady_three(&scratch);
    let (first, holder, at, handover) = sigterm_the_holder(&sidecars, &ledger_path);
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
    let _serial = serial();
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
    // the preferred worker takes the ticket back at most 4 times; a back-off that did
    // not grow would take it back every 3 s.
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
    let backoffs: Vec<&str> = looper_log
        .lines()
        .filter(|l| l.contains("not competing until the back-off ends"))
        .filter_map(|l| l.split("backoff=").nth(1))
        .collect();
    assert!(
        backoffs.len() >= 3 && backoffs[..3] == ["2s", "4s", "8s"],
        "the back-off doubles: {backoffs:?}"
    );
}

/// Runs `gossip-election run` for w1 with `flags` and `-- true`; returns its exit code and
/// stderr.
fn run_with(flags: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new(BIN)
        .args([
            "run",
            "--name",
            "w1",
            "--bind",
            "127.0.0.1:1",
            "--join",
            "127.0.0.1:1",
        ])
        .args(flags)
        .args(["--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

#[test]
fn a_resource_name_or_ticket_count_the_library_refuses_is_refused_before_joining() {
    let long = "r".repeat(65);
    for (flags, says) in [
        (
            ["--resource", long.as_str(), "--tickets", "1"],
            "resource name must be 1..=64 bytes",
        ),
        (
            ["--resource", "job", "--tickets", "0"],
            "--tickets must be at least 1",
        ),
    ] {
        let (code, stderr) = run_with(&flags);
        assert_eq!(code, Some(2), "{flags:?}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn a_grace_period_not_shorter_than_the_handoff_timeout_is_refused() {
    let (code, stderr) = run_with(&["--resource", "job", "--grace", "5s"]);
    assert_eq!(code, Some(2));
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
        std::fs::read_to_string(&out).is_ok_and(|t| t.lines().count() == 4)
    });
    let env = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        env,
        "GOSSIP_ELECTION_LEASE=1\nGOSSIP_ELECTION_NODE=solo\nGOSSIP_ELECTION_RESOURCE=job\n\
         GOSSIP_ELECTION_TERM=1\n"
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

fn look(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn members_owners_and_events_print_what_a_node_sees() {
    let _serial = serial();
    let scratch = Scratch::new("look");
    let (ledger_path, _watch, sidecars) = steady_three(&scratch);
    let (_, holder) = the_live_child(&ledger_path);
    let addr = sidecars[0].debug_addr.to_string();
    // Every node's view agrees once the holder's record has spread.
    let mut owners = String::new();
    wait_for("w1 to see the holder", || {
        let out = look(&["owners", "--debug-addr", &addr]);
        owners = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success() && owners.lines().nth(1).is_some_and(|l| l.contains(&holder))
    });
    eprintln!("$ gossip-election owners --debug-addr {addr}\n{owners}");
    let header: Vec<&str> = owners
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header.iter().map(|c| c.trim()).collect::<Vec<_>>(),
        [
            "RESOURCE",
            "TICKETS",
            "TERM",
            "OWNERS",
            "DESIRED",
            "CANDIDATES",
            "HELD HERE"
        ]
    );
    let row: Vec<&str> = owners.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..2], ["job", "1"], "{owners}");
    assert!(
        row[2].parse::<u64>().is_ok_and(|t| t >= 1),
        "a term: {owners}"
    );
    assert_eq!(&row[3..5], [holder.as_str(), holder.as_str()], "{owners}");

    let members = look(&["members", "--debug-addr", &addr]);
    assert!(members.status.success());
    let members = String::from_utf8_lossy(&members.stdout);
    eprintln!("$ gossip-election members --debug-addr {addr}\n{members}");
    for name in ["w1", "w2", "w3"] {
        assert!(
            members
                .lines()
                .any(|l| l.starts_with(name) && l.contains("alive")),
            "{members}"
        );
    }

    let json = look(&["owners", "--debug-addr", &addr, "--json"]);
    let parsed: Vec<gossip_election::debug::OwnersView> =
        serde_json::from_slice(&json.stdout).expect("--json prints the endpoint's JSON");
    assert_eq!(parsed[0].owners, std::slice::from_ref(&holder));

    // `events` follows the stream; the node replays its recent events to a new reader.
    let mut events = std::process::Command::new(BIN)
        .args(["events", "--debug-addr", &addr])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while !seen
        .iter()
        .any(|l: &String| l.contains("owners") && l.contains(&holder))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("no owners event naming {holder}: {seen:?}"),
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    eprintln!(
        "$ gossip-election events --debug-addr {addr}\n{}",
        seen.join("\n")
    );
}

#[test]
fn an_unreachable_endpoint_exits_5_and_a_foreign_one_exits_6() {
    let closed = format!("127.0.0.1:{}", free_port());
    let out = look(&["members", "--debug-addr", &closed]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));

    // An HTTP server that is not a node.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    });
    let out = look(&["owners", "--debug-addr", &addr]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    server.join().unwrap();
}

/// The ticket stays with the old worker until its child is gone: one that takes a second
/// to stop after SIGTERM, and one that ignores SIGTERM and is killed after `--grace`.
#[test]
fn a_child_slow_to_stop_keeps_the_ticket_until_it_is_gone() {
    let _serial = serial();
    for (case, stubborn) in [("slow", false), ("stubborn", true)] {
        let scratch = Scratch::new(case);
        let (ledger_path, lock) = (scratch.path("ledger"), scratch.path("lock"));
        let watch = Watch::new(&ledger_path);
        let child = |_: &str| {
            if stubborn {
                stubborn_child(&ledger_path, &lock)
            } else {
                slow_child(&ledger_path, &lock)
            }
        };
        // The slow child needs 1 s of its 3 s grace; the stubborn one gets 1 s.
        let grace = if stubborn { "1s" } else { "3s" };
        let mut sidecars = three(&scratch, ["w1", "w2", "w3"], child, &["--grace", grace]);
        let (first, _, at, handover) = sigterm_the_holder(&sidecars, &ledger_path);
        assert!(!alive(first));
        let entries = ledger(&ledger_path);
        if !stubborn {
            let stop = entries
                .iter()
                .position(|e| *e == Entry::Stop { pid: first });
            assert!(
                stop.is_some_and(|stop| stop < entries.len() - 1),
                "the slow child records its stop before the next one starts: {entries:?}"
            );
        }
        assert_eq!(sidecars[at].wait().code(), Some(0));
        let log = sidecars[at].stderr();
        assert_eq!(
            log.contains("did not stop within the grace period: SIGKILL"),
            stubborn,
            "{log}"
        );
        eprintln!("{case} child: the next child started {handover:?} after SIGTERM; {entries:?}");
        no_overlap(&ledger_path, &watch);
    }
}
