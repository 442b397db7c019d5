//! Helpers for tests that run `gossip-election` sidecars as real processes on 127.0.0.1.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Generous bound for anything that should happen in a few seconds.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub const BIN: &str = env!("CARGO_BIN_EXE_gossip-election");

/// Tests that run fleets take turns: three sidecars at a time on two cores keep their
/// failure detection far from its limits (a stalled node could be declared down, and a
/// false down is an overlap the available mode allows).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A port on 127.0.0.1 free for both UDP and TCP, from below Linux's ephemeral range; a
/// port given to one test of this process is never given to another.
pub fn free_port() -> u16 {
    static NEXT: std::sync::Mutex<u16> = std::sync::Mutex::new(0);
    let mut next = NEXT.lock().unwrap();
    if *next == 0 {
        *next = 21_000 + (std::process::id() % 1_000) as u16 * 10;
    }
    for _ in 20_000..=32_000 {
        let port = *next;
        *next = if port >= 32_000 { 20_000 } else { port + 1 };
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in 20000..=32000");
}

/// A directory of its own for one test, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "gossip-election-{test}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The shell script of a well-behaved child: it records `start <pid> <node> <lease>` in
/// the ledger, takes the lock (a second live child could not: it records `overlap`), and
/// runs until SIGTERM, when it records `stop <pid>`.
pub fn steady_child(ledger: &Path, lock: &Path) -> String {
    format!(
        "{}trap 'echo stop $$ >> {ledger}; exit 0' TERM; sleep 1000 & wait",
        child_prelude(ledger, lock),
        ledger = ledger.display()
    )
}

/// A child that takes a second to stop after SIGTERM, and records `stop` only then.
pub fn slow_child(ledger: &Path, lock: &Path) -> String {
    format!(
        "{}trap 'sleep 1; echo stop $$ >> {ledger}; exit 0' TERM; sleep 1000 & wait",
        child_prelude(ledger, lock),
        ledger = ledger.display()
    )
}

/// A child whose processes all ignore SIGTERM: only SIGKILL ends it.
pub fn stubborn_child(ledger: &Path, lock: &Path) -> String {
    format!(
        "{}trap '' TERM; sleep 1000 & wait",
        child_prelude(ledger, lock)
    )
}

/// A child that exits with status 1 after a second, every time.
pub fn crashing_child(ledger: &Path, lock: &Path) -> String {
    format!("{}sleep 1; exit 1", child_prelude(ledger, lock))
}

fn child_prelude(ledger: &Path, lock: &Path) -> String {
    format!(
        "exec 9>>{lock}; if command -v flock >/dev/null; then flock -n 9 || echo overlap $$ >> {ledger}; fi; \
         echo start $$ $GOSSIP_ELECTION_NODE $GOSSIP_ELECTION_LEASE $GOSSIP_ELECTION_RESOURCE >> {ledger}; ",
        lock = lock.display(),
        ledger = ledger.display()
    )
}

/// One `gossip-election run` process.
pub struct Sidecar {
    pub name: String,
    pub debug_addr: SocketAddr,
    pub log: PathBuf,
    process: Child,
}

impl Sidecar {
    /// Starts `name` on `port`, joining through `ports`, running `sh -c script`.
    pub fn start(
        scratch: &Scratch,
        name: &str,
        port: u16,
        ports: &[u16],
        script: &str,
        extra: &[&str],
    ) -> Sidecar {
        let debug_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let join: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let log = scratch.path(&format!("{name}.log"));
        let process = Command::new(BIN)
            .args(["run", "--name", name, "--bind"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--join")
            .arg(join.join(","))
            .args(["--resource", "job", "--debug-addr"])
            .arg(debug_addr.to_string())
            .args(extra)
            .args(["--", "sh", "-c", script])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start gossip-election run");
        Sidecar {
            name: name.to_string(),
            debug_addr,
            log,
            process,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    pub fn signal(&self, signal: Signal) {
        signal_pid(self.pid(), signal);
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.process.try_wait().ok().flatten().is_none() {
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}

pub use rustix::process::Signal;

/// Sends `signal` to process `pid`.
pub fn signal_pid(pid: u32, signal: Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    rustix::process::kill_process(pid, signal).expect("kill");
}

/// One line of the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Start { pid: u32, node: String, lease: u64 },
    Stop { pid: u32 },
    Overlap { pid: u32 },
}

pub fn ledger(path: &Path) -> Vec<Entry> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let pid = words.get(1)?.parse().ok()?;
            match words[0] {
                "start" => Some(Entry::Start {
                    pid,
                    node: words.get(2)?.to_string(),
                    lease: words.get(3)?.parse().ok()?,
                }),
                "stop" => Some(Entry::Stop { pid }),
                "overlap" => Some(Entry::Overlap { pid }),
                _ => None,
            }
        })
        .collect()
}

/// The children started so far, `(pid, node)`, in order.
pub fn starts(path: &Path) -> Vec<(u32, String)> {
    ledger(path)
        .into_iter()
        .filter_map(|e| match e {
            Entry::Start { pid, node, .. } => Some((pid, node)),
            _ => None,
        })
        .collect()
}

/// Whether a process runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Watches the ledger's children every millisecond, on a thread of its own, and keeps
/// the most that were alive at once.
pub struct Watch {
    stop: Arc<AtomicBool>,
    most: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    pub fn new(ledger_path: &Path) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicUsize::new(0));
        let path = ledger_path.to_path_buf();
        let thread = {
            let (stop, most) = (Arc::clone(&stop), Arc::clone(&most));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let live = starts(&path).iter().filter(|(pid, _)| alive(*pid)).count();
                    most.fetch_max(live, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        Watch {
            stop,
            most,
            thread: Some(thread),
        }
    }

    /// The most children alive at once so far.
    pub fn most_alive(&self) -> usize {
        self.most.load(Ordering::Relaxed)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits (bounded) until `check` holds; panics naming `what` otherwise.
pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The live child of the ledger: `(pid, node)`, once exactly one runs.
pub fn the_live_child(path: &Path) -> (u32, String) {
    let mut found = None;
    wait_for("exactly one live child", || {
        let live: Vec<_> = starts(path)
            .into_iter()
            .filter(|(p, _)| alive(*p))
            .collect();
        found = (live.len() == 1).then(|| live[0].clone());
        found.is_some()
    });
    found.unwrap()
}
