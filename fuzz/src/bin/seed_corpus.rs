//! Writes the seed corpus of every target from the recorded join of a small fleet:
//! `cargo run --release --bin seed_corpus` in `fuzz/`.

use std::path::Path;

use gossip_election::seal::{Plaintext, Sealer};
use gossip_election_fuzz::{Input, SOURCES, keys, sender_addr, transcript};

fn main() -> std::io::Result<()> {
    let (inputs, _) = transcript();
    let datagrams: Vec<&Vec<u8>> = inputs
        .iter()
        .filter_map(|i| match i {
            Input::Datagram(_, _, data) => Some(data),
            Input::Timeout(_) => None,
        })
        .collect();
    let (core, _) = gossip_election_fuzz::joined_core();
    println!(
        "node 0 after {} recorded inputs: {}, {} live members, ready {}",
        inputs.len(),
        core.state(),
        core.live_members(),
        core.is_ready()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut sealer = Sealer::new(&keys(), Plaintext::Refuse, sender_addr(1), 1).expect("a key");
    // One of each kind of datagram is enough to start from: the first few of the join.
    for (k, data) in datagrams.iter().take(24).enumerate() {
        write(&root.join("envelope"), k, data)?;
        write(&root.join("sealed"), k, &sealer.seal(data))?;
        let mut framed = vec![(k % SOURCES.len()) as u8 | if k % 3 == 0 { 0x80 } else { 0 }];
        framed.push(data.len().min(255) as u8);
        framed.extend_from_slice(&data[..data.len().min(255)]);
        write(&root.join("core_input"), k, &framed)?;
    }
    Ok(())
}

fn write(dir: &Path, k: usize, data: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("seed-{k:02}")), data)
}
