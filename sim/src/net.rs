//! The network model: per directed link latency (floor + exponential jitter), i.i.d.
//! loss, Gilbert–Elliott burst loss, duplication, and partitions checked at delivery
//! time, so packets in flight die when a partition starts.

use std::collections::BTreeMap;

use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;

/// Which directed links are cut.
#[derive(Clone, Debug, PartialEq)]
pub enum Partition {
    /// Everyone reaches everyone.
    None,
    /// Symmetric: nodes reach only nodes of their own group.
    Groups(Vec<u8>),
    /// One-way: packets from group `from` to group `to` are dropped, the reverse passes.
    OneWay { group: Vec<u8>, from: u8, to: u8 },
    /// Two groups that cannot reach each other, and one node that reaches both.
    Bridge { group: Vec<u8>, bridge: u32 },
    /// Overlapping majorities: node i reaches j when their ring distance is at most n/4,
    /// so every node sees a majority and no two see the same one.
    Ring { nodes: u32 },
}

impl Partition {
    /// Whether a packet from `from` to `to` is dropped.
    pub fn blocks(&self, from: u32, to: u32) -> bool {
        match self {
            Partition::None => false,
            Partition::Groups(g) => g[from as usize] != g[to as usize],
            Partition::OneWay {
                group,
                from: a,
                to: b,
            } => group[from as usize] == *a && group[to as usize] == *b,
            Partition::Bridge { group, bridge } => {
                from != *bridge && to != *bridge && group[from as usize] != group[to as usize]
            }
            Partition::Ring { nodes } => {
                let d = from.abs_diff(to);
                d.min(nodes - d) > nodes / 4
            }
        }
    }

    /// The groups of a symmetric partition in which everyone in a group reaches everyone
    /// else in it (None: the whole fleet is one group). Other shapes have no such groups.
    pub fn cliques(&self, n: usize) -> Option<Vec<u8>> {
        match self {
            Partition::None => Some(vec![0; n]),
            Partition::Groups(g) => Some(g.clone()),
            _ => None,
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Partition::None => "none",
            Partition::Groups(_) => "groups",
            Partition::OneWay { .. } => "one-way",
            Partition::Bridge { .. } => "bridge",
            Partition::Ring { .. } => "majorities-ring",
        }
    }
}

/// Link behaviour.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Minimum one-way delay, ns.
    pub latency_floor: u64,
    /// Mean of the exponential jitter on top, ns.
    pub latency_jitter: u64,
    /// i.i.d. loss probability.
    pub loss: f64,
    /// Duplication probability.
    pub duplicate: f64,
    /// Gilbert–Elliott burst loss: (p enter bad, p leave bad, loss while bad).
    pub burst: Option<(f64, f64, f64)>,
}

/// The network state every link shares: its behaviour, the partition and the extra loss
/// of a loss burst. These change only at fault events, so a window of node events reads
/// them without locks.
#[derive(Clone, Debug)]
pub struct Net {
    pub config: NetConfig,
    pub partition: Partition,
    /// Extra loss during a loss-burst fault.
    pub extra_loss: f64,
}

/// What one sender's links remember: its random stream and which of its links are in a
/// loss burst. Each node has its own, so nodes can be simulated apart.
#[derive(Debug)]
pub struct Links {
    rng: Xoshiro256PlusPlus,
    bad: BTreeMap<u32, bool>,
}

impl Links {
    pub fn new(rng: Xoshiro256PlusPlus) -> Self {
        Links {
            rng,
            bad: BTreeMap::new(),
        }
    }

    /// A number in `0..n` from this sender's stream.
    pub fn below(&mut self, n: u64) -> u64 {
        self.rng.random_range(0..n.max(1))
    }
}

impl Net {
    pub fn new(config: NetConfig) -> Self {
        Net {
            config,
            partition: Partition::None,
            extra_loss: 0.0,
        }
    }

    /// Delays (ns) of the copies of one packet from the owner of `links` to `to` that
    /// survive loss: none (`None`), one, or two.
    pub fn transit(&self, links: &mut Links, to: u32) -> Option<(u64, Option<u64>)> {
        let mut loss = self.config.loss + self.extra_loss;
        if let Some((enter, leave, bad_loss)) = self.config.burst {
            let bad = links.bad.entry(to).or_insert(false);
            let flip = if *bad { leave } else { enter };
            if links.rng.random_bool(flip.clamp(0.0, 1.0)) {
                *bad = !*bad;
            }
            if *bad {
                loss = loss.max(bad_loss);
            }
        }
        if links.rng.random_bool(loss.clamp(0.0, 1.0)) {
            return None;
        }
        let first = self.delay(links);
        let second = links
            .rng
            .random_bool(self.config.duplicate.clamp(0.0, 1.0))
            .then(|| self.delay(links));
        Some((first, second))
    }

    /// The least delay of any packet: how far apart in time two nodes' events must be
    /// before one can affect the other.
    pub fn lookahead(&self) -> u64 {
        self.config.latency_floor
    }

    fn delay(&self, links: &mut Links) -> u64 {
        let jitter = if self.config.latency_jitter == 0 {
            0.0
        } else {
            let u: f64 = links.rng.random_range(f64::EPSILON..1.0);
            -u.ln() * self.config.latency_jitter as f64
        };
        self.config.latency_floor + jitter.min(1e12) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_gives_every_node_a_different_majority() {
        let p = Partition::Ring { nodes: 8 };
        for i in 0..8 {
            let seen = (0..8).filter(|&j| !p.blocks(i, j)).count();
            assert!(seen > 4, "node {i} sees {seen}");
        }
        assert!(p.blocks(0, 4));
        assert!(!p.blocks(0, 2));
    }

    #[test]
    fn one_way_blocks_one_direction_only() {
        let p = Partition::OneWay {
            group: vec![0, 0, 1],
            from: 0,
            to: 1,
        };
        assert!(p.blocks(0, 2));
        assert!(!p.blocks(2, 0));
    }
}
