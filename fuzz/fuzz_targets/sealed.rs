//! The authenticated decoder: any bytes open or are refused with a reason, never twice
//! (a second copy is a replay), and whatever is sealed (up to the largest datagram) opens
//! to itself, once.
//!
//! The seed corpus holds datagrams sealed with the fleet's key, so the fuzzer starts from
//! authentic ones and mutates them (every mutation must fail authentication).
#![no_main]

use gossip_election::seal::{Plaintext, Sealer};
use gossip_election::wire::{DropReason, MAX_DATAGRAM};
use gossip_election_fuzz::{keys, sender_addr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut receiver = Sealer::new(&keys(), Plaintext::Refuse, sender_addr(0), 1).unwrap();
    if receiver.open(data).is_ok() {
        assert_eq!(receiver.open(data).unwrap_err(), DropReason::Replay);
    }
    if data.len() > MAX_DATAGRAM {
        return; // No node sends a datagram this large; a receiver refuses it by size.
    }
    let mut sender = Sealer::new(&keys(), Plaintext::Refuse, sender_addr(2), 1).unwrap();
    let sealed = sender.seal(data).into_owned();
    let opened = receiver.open(&sealed).expect("a sealed datagram opens");
    assert_eq!(opened.as_ref(), data);
    assert_eq!(receiver.open(&sealed).unwrap_err(), DropReason::Replay);
});
