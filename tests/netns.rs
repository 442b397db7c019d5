//! The `echo` example as five processes on a real network: five network namespaces on a
//! bridge (in a namespace of its own), with loss, partitions and one-way cuts made by
//! `iptables` rules on the receiving side (this kernel has no netem, and a DROP in OUTPUT
//! makes the sender's `sendto` fail instead of losing the packet silently).
//!
//! Needs root, iproute2 and iptables (the nft variant): without them each test prints one
//! line saying it was skipped and why, unless `GOSSIP_ELECTION_REQUIRE_ALL=1` (set by
//! `.ci/run`, which installs them) makes that a failure. Everything a test creates is
//! removed when it ends, also when it fails. The tests assert outcomes with bounded
//! waits, never speed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODES: usize = 5;
const PATIENCE: Duration = Duration::from_secs(45);

/// `cargo test` builds the examples next to the test binaries' `deps` folder;
/// `GOSSIP_ELECTION_ECHO` names another build of it (to compare two builds).
fn echo_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("GOSSIP_ELECTION_ECHO") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join("echo")
}

fn runs(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether this machine can run the tests; if not, says so in one line (or fails, when
/// `GOSSIP_ELECTION_REQUIRE_ALL` is set).
fn available(test: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let missing = if !root {
        Some("root")
    } else if !runs("ip", &["-V"]) {
        Some("iproute2 (ip)")
    } else if !runs("iptables-nft", &["--version"]) {
        Some("iptables-nft")
    } else if !echo_binary().exists() {
        Some("the echo example (run through `cargo test`)")
    } else {
        None
    };
    match missing {
        None => true,
        Some(what) if std::env::var_os("GOSSIP_ELECTION_REQUIRE_ALL").is_some() => {
            panic!("{test}: needs {what}, and GOSSIP_ELECTION_REQUIRE_ALL is set")
        }
        Some(what) => {
            // Straight to stderr: the test harness hides what `eprintln!` prints.
            let line = format!("skipped: {test}: needs {what} (network namespaces on a bridge)\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            false
        }
    }
}

/// Says, past the test harness's capture, how long a namespace test took (CI prints it).
fn took(test: &str, start: Instant) {
    let line = format!(
        "netns: {test} passed in {:.1} s\n",
        start.elapsed().as_secs_f64()
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One echo process in a namespace, with the times it printed.
struct Worker {
    child: Child,
    hellos: Arc<Mutex<Vec<Instant>>>,
}

/// Five namespaces on a bridge, each running `echo`. Dropping it kills the processes and
/// deletes the namespaces (which takes their links and rules with them).
struct Net {
    prefix: String,
    workers: Vec<Option<Worker>>,
    /// Holds the key files: `fleet.key` (every node's) and `other.key`.
    keys: std::path::PathBuf,
    /// More arguments for every echo started.
    args: Vec<String>,
}

impl Net {
    fn new(test: &str) -> Net {
        let prefix = format!("ge-{}-{test}-", std::process::id());
        let keys = std::env::temp_dir().join(format!("{prefix}keys"));
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::write(keys.join("fleet.key"), format!("{}\n", "5a".repeat(32))).unwrap();
        std::fs::write(keys.join("other.key"), format!("{}\n", "a5".repeat(32))).unwrap();
        let net = Net {
            prefix,
            workers: Vec::new(),
            keys,
            args: Vec::new(),
        };
        let br = net.ns_bridge();
        sh(&["ip", "netns", "add", &br]);
        sh(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &br,
            "sysctl",
            "-qw",
            "net.bridge.bridge-nf-call-iptables=0",
        ]);
        sh(&["ip", "-n", &br, "link", "set", "br0", "up"]);
        for i in 1..=NODES {
            let ns = net.ns(i);
            let veth = format!("v{i}");
            sh(&["ip", "netns", "add", &ns]);
            sh(&[
                "ip", "-n", &br, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ]);
            sh(&["ip", "-n", &br, "link", "set", &veth, "master", "br0", "up"]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", ip(i)),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        }
        net
    }

    fn ns_bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn start_all(&mut self) {
        for i in 1..=NODES {
            let worker = self.spawn(i, "fleet.key");
            self.workers.push(Some(worker));
        }
    }

    /// Starts node `i` with the key file `key` of [`Net::keys`].
    fn spawn(&self, i: usize, key: &str) -> Worker {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(i)])
            .arg(echo_binary())
            .args(["--name", &format!("w{i}")])
            .args(["--bind", &format!("{}:7946", ip(i))])
            .args(["--interval", "100ms"])
            .arg("--key-file")
            .arg(self.keys.join(key))
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for seed in 1..=NODES {
            cmd.args(["--join", &format!("{}:7946", ip(seed))]);
        }
        let mut child = cmd.spawn().unwrap();
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let sink = Arc::clone(&hellos);
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if line.starts_with("Hello World, pid: ") {
                    sink.lock().unwrap().push(Instant::now());
                }
            }
        });
        Worker { child, hellos }
    }

    /// Node `i` (1-based) dies at once.
    fn kill(&mut self, i: usize) {
        if let Some(mut w) = self.workers[i - 1].take() {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }

    /// Runs an iptables command in node `i`'s namespace.
    fn iptables(&self, i: usize, rule: &[&str]) {
        let ns = self.ns(i);
        let mut args = vec!["ip", "netns", "exec", &ns, "iptables-nft", "-w"];
        args.extend_from_slice(rule);
        sh(&args);
    }

    /// Every node drops incoming packets with probability `p`.
    fn loss(&self, p: f64) {
        let p = format!("{p}");
        for i in 1..=NODES {
            self.iptables(
                i,
                &[
                    "-A",
                    "INPUT",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            );
        }
    }

    /// Node `at` drops whatever node `from` sends it (`add` false: no longer).
    fn drop_from(&self, at: usize, from: usize, add: bool) {
        let op = if add { "-A" } else { "-D" };
        self.iptables(at, &[op, "INPUT", "-s", &ip(from), "-j", "DROP"]);
    }

    /// Nodes in `a` and nodes in `b` no longer hear each other (`add` false: heal).
    fn partition(&self, a: &[usize], b: &[usize], add: bool) {
        for &i in a {
            for &j in b {
                self.drop_from(i, j, add);
                self.drop_from(j, i, add);
            }
        }
    }

    /// Nobody hears node `k`; it still hears everyone (`add` false: heal).
    fn cut_one_way(&self, k: usize, add: bool) {
        for i in (1..=NODES).filter(|i| *i != k) {
            self.drop_from(i, k, add);
        }
    }

    /// Nodes that printed in the last `window`.
    fn printing(&self, window: Duration) -> Vec<usize> {
        let since = Instant::now() - window;
        (1..=NODES)
            .filter(|i| {
                self.workers
                    .get(i - 1)
                    .and_then(Option::as_ref)
                    .is_some_and(|w| w.hellos.lock().unwrap().last().is_some_and(|t| *t > since))
            })
            .collect()
    }

    /// How many times node `i` began printing (after 500 ms or more of silence) since `t`.
    fn starts_since(&self, i: usize, t: Instant) -> usize {
        let Some(w) = self.workers[i - 1].as_ref() else {
            return 0;
        };
        let hellos = w.hellos.lock().unwrap();
        let mut starts = 0;
        let mut last: Option<Instant> = None;
        for &h in hellos.iter() {
            if h > t && last.is_none_or(|l| h - l >= Duration::from_millis(500)) {
                starts += 1;
            }
            last = Some(h);
        }
        starts
    }

    /// Waits (at most [`PATIENCE`]) until `check` holds on the printers of the last second.
    fn wait_for(&self, what: &str, check: impl Fn(&[usize]) -> bool) -> Vec<usize> {
        let start = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let printing = self.printing(Duration::from_secs(1));
            if check(&printing) {
                return printing;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{what}: not within {PATIENCE:?}; printing: {printing:?}"
            );
        }
    }

    /// Waits until exactly one node prints, the same one for two seconds in a row.
    fn one_owner(&self, what: &str) -> usize {
        let start = Instant::now();
        loop {
            let first = self.wait_for(what, |p| p.len() == 1)[0];
            std::thread::sleep(Duration::from_secs(2));
            if self.printing(Duration::from_secs(2)) == [first] {
                return first;
            }
            assert!(start.elapsed() < PATIENCE, "{what}: no steady single owner");
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for i in 1..=self.workers.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.keys);
        for ns in (1..=NODES).map(|i| self.ns(i)).chain([self.ns_bridge()]) {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn ip(i: usize) -> String {
    format!("10.77.0.{i}")
}

#[test]
fn one_owner_under_loss_and_kill_9_moves_it() {
    if !available("one_owner_under_loss_and_kill_9_moves_it") {
        return;
    }
    let start = Instant::now();
    let mut net = Net::new("loss");
    net.loss(0.05);
    net.start_all();
    let owner = net.one_owner("one owner at 5 % loss");
    net.kill(owner);
    let next = net.one_owner("a new owner after kill -9");
    assert_ne!(next, owner);
    took("one_owner_under_loss_and_kill_9_moves_it", start);
}

#[test]
fn halves_elect_on_both_sides_and_the_heal_leaves_one_owner() {
    if !available("halves_elect_on_both_sides_and_the_heal_leaves_one_owner") {
        return;
    }
    let start = Instant::now();
    let mut net = Net::new("halves");
    net.start_all();
    net.one_owner("one owner before the partition");
    let (a, b) = ([1, 2], [3, 4, 5]);
    net.partition(&a, &b, true);
    net.wait_for("an owner on each side", |p| {
        p.len() == 2 && p.iter().any(|i| a.contains(i)) && p.iter().any(|i| b.contains(i))
    });
    net.partition(&a, &b, false);
    net.one_owner("one owner after the heal");
    took(
        "halves_elect_on_both_sides_and_the_heal_leaves_one_owner",
        start,
    );
}

#[test]
fn quorum_mode_runs_the_job_on_the_majority_side_only() {
    if !available("quorum_mode_runs_the_job_on_the_majority_side_only") {
        return;
    }
    let start = Instant::now();
    let mut net = Net::new("quorum");
    net.args = vec!["--quorum".into(), NODES.to_string()];
    net.start_all();
    let owner = net.one_owner("one owner before the partition");
    // The owner and one other apart from the other three (a majority of five).
    let other = (1..=NODES).find(|i| *i != owner).unwrap();
    let minority = [owner, other];
    let majority: Vec<usize> = (1..=NODES).filter(|i| !minority.contains(i)).collect();
    net.partition(&minority, &majority, true);
    // Sampled every 100 ms for 20 s: never two printing within 300 ms of each other.
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(100));
        let printing = net.printing(Duration::from_millis(300));
        assert!(printing.len() <= 1, "two run the job at once: {printing:?}");
    }
    let now = net.printing(Duration::from_secs(1));
    assert!(
        now.len() == 1 && majority.contains(&now[0]),
        "the majority side does not run it: {now:?}"
    );
    net.partition(&minority, &majority, false);
    net.one_owner("one owner after the heal");
    took("quorum_mode_runs_the_job_on_the_majority_side_only", start);
}

#[test]
fn node_cut_off_one_way_does_not_flap() {
    if !available("node_cut_off_one_way_does_not_flap") {
        return;
    }
    let start = Instant::now();
    let mut net = Net::new("oneway");
    net.start_all();
    let owner = net.one_owner("one owner before the cut");
    for cut in [(1..=NODES).find(|i| *i != owner).unwrap(), owner] {
        let t = Instant::now();
        net.cut_one_way(cut, true);
        std::thread::sleep(Duration::from_secs(30));
        let starts = net.starts_since(cut, t);
        let role = if cut == owner {
            "the owner"
        } else {
            "a non-owner"
        };
        let line =
            format!("one-way cut of {role} w{cut}: it began running echo {starts} times in 30 s\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        assert!(
            starts <= 2,
            "w{cut}, cut off one way, began running echo {starts} times in 30 s"
        );
        net.cut_one_way(cut, false);
        net.one_owner("one owner after the cut healed");
    }
    took("node_cut_off_one_way_does_not_flap", start);
}

#[test]
fn node_with_the_wrong_key_stays_alone_and_the_fleet_keeps_its_owner() {
    if !available("node_with_the_wrong_key_stays_alone_and_the_fleet_keeps_its_owner") {
        return;
    }
    let start = Instant::now();
    let mut net = Net::new("wrongkey");
    for i in 1..NODES {
        let worker = net.spawn(i, "fleet.key");
        net.workers.push(Some(worker));
    }
    let owner = net.one_owner("one owner among the keyed nodes");
    let outsider = NODES;
    let worker = net.spawn(outsider, "other.key");
    net.workers.push(Some(worker));
    // The outsider reaches nobody, so it runs alone and runs echo itself; the fleet never
    // hears it, so its owner stays, and the two print side by side.
    let printing = net.wait_for("the outsider running alone beside the fleet's owner", |p| {
        p == [owner, outsider]
    });
    assert_eq!(printing, [owner, outsider]);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        net.printing(Duration::from_secs(2)),
        [owner, outsider],
        "the outsider joined the fleet, or the fleet's owner changed"
    );
    // Without the outsider, the fleet is as it was.
    net.kill(outsider);
    assert_eq!(net.one_owner("the fleet's owner alone again"), owner);
    took(
        "node_with_the_wrong_key_stays_alone_and_the_fleet_keeps_its_owner",
        start,
    );
}
