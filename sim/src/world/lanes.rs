//! The helper threads ("lanes") that simulate nodes of each window beside the world's own
//! thread, and how a window's nodes are shared out among them.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::runner::{Done, Env, NodeRun};
use super::{Queued, World};
use crate::net::Net;
use crate::slots::Slot;

/// One node's share of a window, lent to the thread that claims it: the node's slot, its
/// inbox holding the node's events of the window.
pub(super) struct Item {
    pub node: u32,
    pub slot: Box<Slot>,
    /// The node's events of the window.
    pub inbox: Vec<Queued>,
}

/// Runs `f` with `helpers` lanes, each serving on a thread of its own. The lanes stop when
/// `f` returns, and when it panics.
pub(super) fn with_lanes(helpers: usize, f: impl FnOnce(&[Lane])) {
    let lanes: Vec<Lane> = (0..helpers).map(|_| Lane::default()).collect();
    std::thread::scope(|scope| {
        for lane in &lanes {
            scope.spawn(move || lane.serve());
        }
        // Dropped when `f` returns or panics.
        struct Quit<'a>(&'a [Lane]);
        impl Drop for Quit<'_> {
            fn drop(&mut self) {
                for lane in self.0 {
                    lane.state.store(QUIT, Ordering::Release);
                }
            }
        }
        let _quit = Quit(&lanes);
        f(&lanes);
    });
}

impl World {
    /// Simulates each node's events of one window: this thread and the lanes take the
    /// nodes one by one until none is left.
    pub(super) fn simulate(
        &mut self,
        items: Vec<Item>,
        window_end: u64,
        lanes: &[Lane],
    ) -> Vec<Done> {
        let helpers = if items.len() < 2 { 0 } else { lanes.len() };
        let job = Arc::new(Job {
            items: items
                .into_iter()
                .map(|item| Mutex::new(Some(item)))
                .collect(),
            next: AtomicUsize::new(0),
            net: Arc::clone(&self.net),
            nodes: self.nodes.len(),
            drop_within: self.drop_within(),
            window_end,
        });
        for lane in &lanes[..helpers] {
            *lane.job.lock().expect("lane lock") = Some(Arc::clone(&job));
            lane.state.store(JOB, Ordering::Release);
        }
        let mine = job.take_all();
        drop(job);
        let mut done = mine;
        for lane in &lanes[..helpers] {
            done.extend(lane.wait().expect("a simulation thread panicked"));
        }
        done
    }
}

const IDLE: u8 = 0;
const JOB: u8 = 1;
const DONE: u8 = 2;
const QUIT: u8 = 3;
const FAILED: u8 = 4;

/// A helper thread that takes nodes of each window.
#[derive(Default)]
pub(super) struct Lane {
    state: AtomicU8,
    job: Mutex<Option<Arc<Job>>>,
    done: Mutex<Vec<Done>>,
}

/// One window's nodes, shared with the lanes: each thread claims the next item with
/// `next` until none is left.
struct Job {
    items: Vec<Mutex<Option<Item>>>,
    next: AtomicUsize,
    net: Arc<Net>,
    nodes: usize,
    drop_within: u64,
    window_end: u64,
}

impl Job {
    /// Simulates items until none is left.
    fn take_all(&self) -> Vec<Done> {
        let env = Env {
            net: &self.net,
            nodes: self.nodes,
            drop_within: self.drop_within,
        };
        let mut done = Vec::new();
        loop {
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = self.items.get(k) else {
                return done;
            };
            let Item {
                node,
                mut slot,
                mut inbox,
            } = item
                .lock()
                .expect("item lock")
                .take()
                .expect("claimed once");
            let mut d = NodeRun::new(node, &mut slot, &env, self.window_end).run(&mut inbox);
            d.slot = Some(slot);
            d.inbox = inbox;
            done.push(d);
        }
    }
}

impl Lane {
    fn serve(&self) {
        loop {
            let mut idle = 0;
            loop {
                match self.state.load(Ordering::Acquire) {
                    JOB => break,
                    QUIT => return,
                    _ => backoff(&mut idle),
                }
            }
            let job = self.job.lock().expect("lane lock").take().expect("a job");
            let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.take_all()));
            // The world changes the network only when no lane holds it.
            drop(job);
            match done {
                Ok(done) => {
                    *self.done.lock().expect("lane lock") = done;
                    let reported =
                        self.state
                            .compare_exchange(JOB, DONE, Ordering::AcqRel, Ordering::Acquire);
                    if reported.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    self.state.store(FAILED, Ordering::Release);
                    return;
                }
            }
        }
    }

    /// Waits until the lane is done with its window: its nodes, or None if it panicked.
    fn wait(&self) -> Option<Vec<Done>> {
        let mut idle = 0;
        loop {
            match self.state.load(Ordering::Acquire) {
                DONE => break,
                FAILED => return None,
                _ => backoff(&mut idle),
            }
        }
        self.state.store(IDLE, Ordering::Release);
        Some(std::mem::take(&mut *self.done.lock().expect("lane lock")))
    }
}

/// Spin briefly (windows follow each other within microseconds), then yield, then sleep.
fn backoff(idle: &mut u32) {
    *idle += 1;
    if *idle < 20_000 {
        std::hint::spin_loop();
    } else if *idle < 21_000 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(Duration::from_micros(20));
    }
}
