//! The crate's error type.

use std::net::SocketAddr;

use crate::proto::CommandError;
use crate::record::RecordError;

/// Everything that can go wrong when starting or using a [`Node`](crate::Node).
///
/// The display text of a variant that wraps an I/O error does not repeat it: the I/O
/// error is its [`source`](std::error::Error::source), which error reporters (`anyhow`'s
/// `{:#}`, `tracing`'s error fields) print after it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `start()` was called without a bind address.
    #[error("no bind address: call NodeBuilder::bind(addr) before start()")]
    MissingBind,
    /// A wildcard bind address (0.0.0.0 or ::) needs an advertise address.
    #[error(
        "bind address {0} is a wildcard: peers cannot send to it; set NodeBuilder::advertise(addr) to the address peers reach this node at"
    )]
    WildcardWithoutAdvertise(SocketAddr),
    /// The advertise address is a wildcard or has port 0.
    #[error("advertise address {0} must be a concrete address with a non-zero port")]
    InvalidAdvertise(SocketAddr),
    /// The node name is empty or too long.
    #[error("invalid node name: {0}")]
    InvalidName(RecordError),
    /// A timing value is out of range (zero, absurdly long, or inconsistent).
    #[error("invalid timing: {0}")]
    InvalidTiming(crate::proto::TimingError),
    /// An IPv6 advertise or join address with a scope id (link-local).
    #[error(
        "{0} carries an IPv6 scope id: scoped (link-local) addresses cannot be members; use a global or unique-local address"
    )]
    ScopedAddress(SocketAddr),
    /// A join address that is neither a socket address nor `host:port`.
    #[error("join address {seed:?}: {reason}")]
    InvalidSeed {
        /// The text as given.
        seed: String,
        /// What is wrong with it.
        reason: crate::seed::SeedError,
    },
    /// Binding the UDP socket failed.
    #[error("cannot bind UDP socket on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The debug endpoint could not bind its address.
    #[error("cannot bind the debug endpoint on {addr}")]
    DebugBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The protocol thread could not be started.
    #[error("cannot start the protocol thread")]
    Spawn(#[source] std::io::Error),
    /// The node refused a command (bad resource name, zero tickets, a second obtain...).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Quorum mode with a fleet of zero members.
    #[error("quorum mode needs the fleet's size: members must be at least 1")]
    QuorumMembers,
    /// The node has stopped (left, crashed, or its protocol thread ended).
    #[error("the node has stopped")]
    Stopped,
}

impl From<crate::proto::TimingError> for Error {
    fn from(err: crate::proto::TimingError) -> Self {
        Error::InvalidTiming(err)
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::proto::ConfigError> for Error {
    fn from(err: crate::proto::ConfigError) -> Self {
        match err {
            crate::proto::ConfigError::Name(err) => Error::InvalidName(err),
            crate::proto::ConfigError::Timing(err) => Error::InvalidTiming(err),
            crate::proto::ConfigError::ScopedAddress(addr) => Error::ScopedAddress(addr),
            crate::proto::ConfigError::QuorumMembers => Error::QuorumMembers,
        }
    }
}
