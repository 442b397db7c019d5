//! This node's own record: building it, raising its version, installing it in the store
//! and pushing it to members.

use std::net::SocketAddr;
use std::time::Duration;

use rand::RngExt;
use tracing::{debug, warn};

use super::{Core, CoreTimer, NodeState, repair};
use crate::record::{Claim, Record};

impl Core {
    /// Brings the repair timer forward when a record went missing.
    pub(super) fn repair_soon(&mut self, now: Duration) {
        let soon = now + self.cfg.timing.repair_interval;
        if !self.view.missing.is_empty() && self.timers.repair_at > soon {
            self.timers.repair_at = soon;
            self.schedule(soon, CoreTimer::Repair);
        }
    }

    pub(super) fn push_own_record(&mut self, to: SocketAddr) {
        if self.bug(|b| b.no_direct_repair) {
            return;
        }
        // In a large fleet a member coming up would get one datagram from every member at
        // once: a sample pushes, the newcomer pulls the rest in bulk.
        let members = self.view.members.len();
        if members > repair::PUSH_FANIN
            && !self
                .rng
                .random_bool(repair::PUSH_FANIN as f64 / members as f64)
        {
            return;
        }
        let own = self.own_record();
        self.send_records(to, &[own]);
    }

    /// Rebuilds the own record from the claims, bumps its version and spreads it.
    ///
    /// The version rises past both the stored one and any higher version of this boot's
    /// record seen from peers (they would keep preferring that copy). When it cannot rise
    /// any more, the node raises its boot, which starts versions again.
    pub(crate) fn bump_record(&mut self, now: Duration) {
        let boot = self.cfg.boot;
        let floor = {
            let store = super::store::lock(&self.store);
            let stored = store
                .records
                .get(&self.cfg.addr)
                .filter(|r| r.boot == boot)
                .map(|r| r.version);
            let seen = store.own_seen.filter(|s| s.0 == boot).map(|s| s.1);
            stored.max(seen)
        };
        let Some(version) = floor.map_or(Some(0), |v| v.checked_add(1)) else {
            self.raise_boot(
                now,
                "this node's record version is at its maximum (a forged copy?)",
            );
            self.reconnect(now);
            return;
        };
        let record = self.build_record(version);
        self.install_record(now, record);
    }

    pub(super) fn build_record(&self, version: u64) -> Record {
        Record {
            addr: self.cfg.addr,
            name: self.cfg.name.clone(),
            boot: self.cfg.boot,
            version,
            ready: self.sync.ready,
            claims: self
                .leases
                .claims
                .iter()
                .filter(|(_, c)| c.candidate() || c.held())
                .map(|(resource, c)| Claim {
                    resource: resource.clone(),
                    tickets: c.tickets,
                    // Barred after reconnecting, the node keeps competing only for what it
                    // holds: it takes nothing new, and a holder that comes back from a
                    // cut keeps its lease where its rank says so.
                    candidate: c.candidate()
                        && self.state != NodeState::Superseded
                        && (self.conn.rejoin_bar_until.is_none() || c.held()),
                    held: c.held(),
                    term: c.known_term,
                })
                .collect(),
        }
    }

    pub(super) fn publish_record(&mut self, now: Duration) {
        let record = self.build_record(0);
        self.install_record(now, record);
    }

    pub(super) fn install_record(&mut self, now: Duration, record: Record) {
        let encoded = record.encode();
        // The handler stores it and queues it for gossip.
        match self.membership.foca.add_broadcast(&encoded) {
            Ok(_) => {}
            Err(err) => warn!(%err, "own record not queued for gossip"),
        }
        super::store::lock(&self.store).offer_own(record);
        if let Err(err) = self.membership.foca.broadcast(&mut self.membership.runtime) {
            debug!(%err, "broadcast failed");
        }
        self.drain_runtime(now);
    }
}
