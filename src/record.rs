//! Records: the election's gossiped state, one per node.
//!
//! A record says who a node is (`name`, `addr`, `boot`), whether it is `ready` to take
//! over, and which resources it competes for and holds. Every change bumps `version`;
//! the newest `(boot, version)` for an address wins everywhere.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Largest encoded record, in bytes.
///
/// foca only puts a custom broadcast in the room left in a packet, and an item that never
/// fits is never sent, so records are kept well under the packet size.
pub const RECORD_CAP: usize = 512;

/// Longest resource name, in bytes of UTF-8.
pub const MAX_RESOURCE_LEN: usize = 64;

/// Longest node name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 64;

/// One resource a node has an interest in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The resource name.
    pub resource: String,
    /// How many nodes this node believes may hold the resource at once.
    pub tickets: u16,
    /// Whether the node competes for it now (false while withdrawing or backing off).
    pub candidate: bool,
    /// Whether the node holds a ticket of it.
    pub held: bool,
    /// The highest fencing term of the resource this node knows (0: none yet); while
    /// it holds a ticket, at least its lease's term. An acquirer takes one above the
    /// highest it knows, so terms travel with records.
    pub term: u64,
}

/// The gossiped state of one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The node's advertise address: where peers send to, and the record's key.
    pub addr: SocketAddr,
    /// The node's stable name: ranking uses it.
    pub name: String,
    /// Rises on every process start.
    pub boot: u64,
    /// Rises on every change of this record within one boot.
    pub version: u64,
    /// True once the node is synced: only ready nodes are candidates.
    pub ready: bool,
    /// The resources the node competes for or still holds.
    pub claims: Vec<Claim>,
}

/// Why a record was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The name is empty or longer than [`MAX_NAME_LEN`].
    #[error("node name must be 1..={MAX_NAME_LEN} bytes, got {0}")]
    BadName(usize),
    /// A resource name is empty or longer than [`MAX_RESOURCE_LEN`].
    #[error("resource name must be 1..={MAX_RESOURCE_LEN} bytes, got {0}")]
    BadResource(usize),
    /// A claim advertises zero tickets.
    #[error("claim on {0:?} advertises zero tickets")]
    ZeroTickets(String),
    /// Two claims name the same resource.
    #[error("resource {0:?} is claimed twice")]
    DuplicateResource(String),
    /// The encoded record exceeds [`RECORD_CAP`].
    #[error("record is {0} bytes encoded, the cap is {RECORD_CAP}")]
    TooLarge(usize),
}

impl Record {
    /// True if `self` is a newer version of the same node's record than `other`.
    pub fn newer_than(&self, other: &Record) -> bool {
        (self.boot, self.version) > (other.boot, other.version)
    }

    /// The claim on `resource`, if any.
    pub fn claim(&self, resource: &str) -> Option<&Claim> {
        self.claims.iter().find(|c| c.resource == resource)
    }

    /// `(addr, boot, version)` of an encoded record, read without decoding (or allocating)
    /// the rest: most records a node hears are copies of what it has.
    pub fn peek(bytes: &[u8]) -> Option<(SocketAddr, u64, u64)> {
        /// The leading fields of [`Record`], in its field order.
        #[derive(Deserialize)]
        struct Head<'a> {
            addr: SocketAddr,
            #[serde(borrow)]
            _name: &'a str,
            boot: u64,
            version: u64,
        }
        let (head, _) = postcard::take_from_bytes::<Head<'_>>(bytes).ok()?;
        Some((head.addr, head.boot, head.version))
    }

    /// The postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("records always serialize")
    }

    /// Checks names, tickets and the size cap.
    pub fn validate(&self) -> Result<(), RecordError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(RecordError::BadName(self.name.len()));
        }
        for (i, claim) in self.claims.iter().enumerate() {
            validate_resource(&claim.resource)?;
            if claim.tickets == 0 {
                return Err(RecordError::ZeroTickets(claim.resource.clone()));
            }
            if self.claims[..i]
                .iter()
                .any(|c| c.resource == claim.resource)
            {
                return Err(RecordError::DuplicateResource(claim.resource.clone()));
            }
        }
        let len = postcard::experimental::serialized_size(self).unwrap_or(usize::MAX);
        if len > RECORD_CAP {
            return Err(RecordError::TooLarge(len));
        }
        Ok(())
    }
}

/// Checks a resource name: 1..=[`MAX_RESOURCE_LEN`] bytes.
pub fn validate_resource(resource: &str) -> Result<(), RecordError> {
    if resource.is_empty() || resource.len() > MAX_RESOURCE_LEN {
        return Err(RecordError::BadResource(resource.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(claims: usize) -> Record {
        Record {
            addr: "127.0.0.1:7000".parse().unwrap(),
            name: "w0".into(),
            boot: 1,
            version: 1,
            ready: true,
            claims: (0..claims)
                .map(|i| Claim {
                    resource: format!("resource-number-{i:03}"),
                    tickets: 1,
                    candidate: true,
                    held: false,
                    term: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn record_over_the_cap_is_refused() {
        assert!(record(10).validate().is_ok());
        assert!(matches!(
            record(40).validate(),
            Err(RecordError::TooLarge(_))
        ));
    }

    #[test]
    fn peek_reads_the_key_of_an_encoded_record() {
        let r = record(3);
        assert_eq!(Record::peek(&r.encode()), Some((r.addr, r.boot, r.version)));
        assert_eq!(Record::peek(&[0xff, 0xff]), None);
    }

    #[test]
    fn newer_boot_beats_higher_version() {
        let mut old = record(0);
        old.version = 99;
        let mut new = record(0);
        new.boot = 2;
        assert!(new.newer_than(&old));
        assert!(!old.newer_than(&new));
    }
}
