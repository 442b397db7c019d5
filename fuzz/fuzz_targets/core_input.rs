//! A core that has joined a small fleet takes arbitrary datagrams from arbitrary sources
//! (and timers between them) without panicking.
//!
//! The input is a sequence of `source | length | bytes` frames; a source with its high bit
//! set also runs the timers due 1 ms later. The core is rebuilt for every input by replaying
//! the recorded inputs that made it join, so every run starts from the same state.
#![no_main]

use std::time::Duration;

use gossip_election_fuzz::{SOURCES, joined_core};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let (mut core, mut now) = joined_core();
    let mut rest = input;
    while let [source, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let from = SOURCES[usize::from(*source & 0x7f) % SOURCES.len()];
        core.handle_datagram(now, from, &tail[..n]);
        if source & 0x80 != 0 {
            now += Duration::from_millis(1);
            core.handle_timeout(now);
        }
        while core.poll_transmit().is_some() {}
        while core.poll_event().is_some() {}
        rest = &tail[n..];
    }
});
