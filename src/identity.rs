//! The foca identity of a node: small, because it rides in every packet header, and
//! cheap to compare, because foca finds a member by comparing its address with every
//! member it knows.

use std::fmt;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use serde::{Deserialize, Serialize};

/// An address as foca compares it: the IP as 16 bytes (IPv4 mapped into IPv6) in two
/// words, the port and the family, so that comparing two is a word compare (the low word,
/// which holds an IPv4 address, first) rather than a match over `SocketAddr`'s variants.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrKey {
    /// Bytes 8..16 of the IPv6 form.
    low: u64,
    /// Bytes 0..8 of the IPv6 form.
    high: u64,
    port: u16,
    v6: bool,
}

impl AddrKey {
    /// The key of `addr`. IPv6 flow information and scope are not kept (they do not travel
    /// on the wire either).
    pub fn new(addr: SocketAddr) -> Self {
        let (ip, port, v6) = match addr {
            SocketAddr::V4(a) => (a.ip().to_ipv6_mapped().octets(), a.port(), false),
            SocketAddr::V6(a) => (a.ip().octets(), a.port(), true),
        };
        let [
            h0,
            h1,
            h2,
            h3,
            h4,
            h5,
            h6,
            h7,
            l0,
            l1,
            l2,
            l3,
            l4,
            l5,
            l6,
            l7,
        ] = ip;
        AddrKey {
            low: u64::from_be_bytes([l0, l1, l2, l3, l4, l5, l6, l7]),
            high: u64::from_be_bytes([h0, h1, h2, h3, h4, h5, h6, h7]),
            port,
            v6,
        }
    }

    /// The socket address back.
    pub fn socket_addr(&self) -> SocketAddr {
        let ip = Ipv6Addr::from((u128::from(self.high) << 64) | u128::from(self.low));
        match (self.v6, ip.to_ipv4_mapped()) {
            (false, Some(v4)) => SocketAddr::V4(SocketAddrV4::new(v4, self.port)),
            _ => SocketAddr::V6(SocketAddrV6::new(ip, self.port, 0, 0)),
        }
    }
}

impl fmt::Debug for AddrKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.socket_addr(), f)
    }
}

/// `{ addr, boot, bump }`: where to send, which process start, which renewal.
///
/// The stable node `name` is not here: it travels in the node's record, so a restarted
/// worker ranks where it ranked before. On the wire it is `(addr, boot, bump)` with the
/// address as a `SocketAddr`.
///
/// The address is kept as `AddrKey`'s fields, not as an `AddrKey`, and the struct is
/// packed (31 bytes, byte-aligned), so that a foca member is 34 bytes rather than 40:
/// foca finds a member by walking its member vector, and where memory is cold (a
/// simulator running a thousand nodes) that walk is bounded by the bytes it touches, not
/// by the compare.
/// Read the fields with [`NodeId::boot`] and [`NodeId::bump`] (a packed field cannot be
/// borrowed).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "WireId", into = "WireId")]
#[repr(C, packed)]
pub struct NodeId {
    // The address first (as `AddrKey` orders), then the boot and the renewal.
    low: u64,
    high: u64,
    port: u16,
    v6: bool,
    boot: u64,
    bump: u32,
}

impl NodeId {
    /// The identity of the process started as `boot` at `addr`, renewed `bump` times.
    pub fn new(addr: SocketAddr, boot: u64, bump: u32) -> Self {
        let AddrKey {
            low,
            high,
            port,
            v6,
        } = AddrKey::new(addr);
        NodeId {
            low,
            high,
            port,
            v6,
            boot,
            bump,
        }
    }

    /// The address as foca compares it.
    fn key(&self) -> AddrKey {
        AddrKey {
            low: self.low,
            high: self.high,
            port: self.port,
            v6: self.v6,
        }
    }

    /// Rises on every process start.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Rises when foca renews the identity (declared down while running).
    pub fn bump(&self) -> u32 {
        self.bump
    }

    /// The same process after one more renewal.
    pub fn renewed(&self) -> Self {
        NodeId {
            bump: self.bump().wrapping_add(1),
            ..*self
        }
    }

    /// The advertise address.
    pub fn addr(&self) -> SocketAddr {
        self.key().socket_addr()
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeId")
            .field("addr", &self.addr())
            .field("boot", &self.boot())
            .field("bump", &self.bump())
            .finish()
    }
}

/// The wire form of [`NodeId`].
#[derive(Serialize, Deserialize)]
struct WireId {
    addr: SocketAddr,
    boot: u64,
    bump: u32,
}

impl From<WireId> for NodeId {
    fn from(w: WireId) -> Self {
        NodeId::new(w.addr, w.boot, w.bump)
    }
}

impl From<NodeId> for WireId {
    fn from(id: NodeId) -> Self {
        WireId {
            addr: id.addr(),
            boot: id.boot(),
            bump: id.bump(),
        }
    }
}

impl foca::Identity for NodeId {
    type Addr = AddrKey;

    fn renew(&self) -> Option<Self> {
        Some(self.renewed())
    }

    fn addr(&self) -> AddrKey {
        self.key()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.boot(), self.bump()) > (adversary.boot(), adversary.bump())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_survive_the_compact_form_and_the_wire() {
        for text in [
            "10.1.2.3:7946",
            "[2001:db8::1]:80",
            "[::ffff:10.1.2.3]:7946",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let id = NodeId::new(addr, 42, 3);
            assert_eq!(id.addr(), addr, "{text}");
            let bytes = postcard::to_allocvec(&id).unwrap();
            let back: NodeId = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(back, id, "{text}");
        }
        // An IPv4 address and its IPv6-mapped form are different members.
        let v4 = NodeId::new("10.1.2.3:7946".parse().unwrap(), 1, 0);
        let mapped = NodeId::new("[::ffff:10.1.2.3]:7946".parse().unwrap(), 1, 0);
        assert_ne!(foca::Identity::addr(&v4), foca::Identity::addr(&mapped));
    }

    #[test]
    fn a_member_is_thirty_four_bytes() {
        // foca finds a member by walking its member vector; every byte is walked.
        assert_eq!(std::mem::size_of::<NodeId>(), 31);
        assert_eq!(std::mem::size_of::<foca::Member<NodeId>>(), 34);
    }

    #[test]
    fn wire_form_is_the_socket_addr_form() {
        let addr: SocketAddr = "10.1.2.3:7946".parse().unwrap();
        let id = NodeId::new(addr, 42, 3);
        let expected = postcard::to_allocvec(&(addr, 42u64, 3u32)).unwrap();
        assert_eq!(postcard::to_allocvec(&id).unwrap(), expected);
    }
}
