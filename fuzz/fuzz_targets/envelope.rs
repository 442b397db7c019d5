//! The envelope decoder: any bytes decode or are refused with a reason, and what decodes
//! as an election message encodes again to something that decodes to the same message.
#![no_main]

use gossip_election::wire::{self, Datagram};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Datagram::Election(message)) = wire::decode(data) {
        let again = wire::encode(&message);
        match wire::decode(&again) {
            Ok(Datagram::Election(same)) => assert_eq!(same, message),
            other => panic!("re-encoded message does not decode: {other:?}"),
        }
    }
});
