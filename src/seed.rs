//! Seeds: the fleet members a node joins through, given as addresses or as `host:port`
//! names. A name is resolved when the node starts and again on every announce while the
//! node is not connected, so a DNS name that lists the fleet (a Kubernetes headless
//! service, a compose service) works as a seed list: every address it resolves to is a
//! seed. A name that does not resolve is logged and retried, never fatal.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use tracing::{info, warn};

/// A fleet member to join through: a socket address, or a `host:port` name.
///
/// Built from a [`SocketAddr`], or from text (`"10.0.0.7:7946"`, `"[fd00::7]:7946"`,
/// `"workers.default.svc:7946"`). Text that is neither is kept and refused by
/// [`NodeBuilder::start`](crate::NodeBuilder::start) with [`Error::InvalidSeed`](crate::Error::InvalidSeed);
/// [`Seed::from_str`] refuses it at once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Seed(Repr);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Repr {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
    Invalid { text: String, why: SeedError },
}

/// Why text is not a seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    /// No `:port` at the end.
    #[error("no port: write host:port, e.g. worker-1:7946")]
    MissingPort,
    /// The port is not a number from 1 to 65535.
    #[error("the port is not a number from 1 to 65535")]
    BadPort,
    /// The host part is empty, too long, or has characters a DNS name cannot have.
    #[error("the host is not an IP address or a DNS name (letters, digits, '-', '_', '.')")]
    BadHost,
}

/// Longest DNS name (RFC 1035).
const MAX_HOST_LEN: usize = 253;

impl Seed {
    /// Parses `host:port` or a socket address.
    pub fn parse(text: &str) -> Result<Seed, SeedError> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Seed(Repr::Addr(addr)));
        }
        let (host, port) = text.rsplit_once(':').ok_or(SeedError::MissingPort)?;
        let port: u16 = port.parse().map_err(|_| SeedError::BadPort)?;
        if port == 0 {
            return Err(SeedError::BadPort);
        }
        let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if host.is_empty()
            || host.len() > MAX_HOST_LEN
            || !host.chars().all(name_char)
            || host.starts_with(['.', '-'])
        {
            return Err(SeedError::BadHost);
        }
        Ok(Seed(Repr::Name {
            host: host.to_ascii_lowercase(),
            port,
        }))
    }

    /// The address, if the seed is one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self.0 {
            Repr::Addr(addr) => Some(addr),
            _ => None,
        }
    }

    /// The `host:port` to resolve, if the seed is a name.
    pub(crate) fn name(&self) -> Option<String> {
        match &self.0 {
            Repr::Name { host, port } => Some(format!("{host}:{port}")),
            _ => None,
        }
    }

    /// The text and the reason, if the seed was built from text that is not a seed.
    pub(crate) fn invalid(&self) -> Option<(&str, SeedError)> {
        match &self.0 {
            Repr::Invalid { text, why } => Some((text, *why)),
            _ => None,
        }
    }
}

impl FromStr for Seed {
    type Err = SeedError;

    fn from_str(text: &str) -> Result<Seed, SeedError> {
        Seed::parse(text)
    }
}

impl From<SocketAddr> for Seed {
    fn from(addr: SocketAddr) -> Seed {
        Seed(Repr::Addr(addr))
    }
}

impl From<&str> for Seed {
    /// Parses the text; text that is not a seed is refused when the node starts.
    fn from(text: &str) -> Seed {
        Seed::parse(text).unwrap_or_else(|why| {
            Seed(Repr::Invalid {
                text: text.to_string(),
                why,
            })
        })
    }
}

impl From<String> for Seed {
    fn from(text: String) -> Seed {
        Seed::from(text.as_str())
    }
}

impl From<&String> for Seed {
    fn from(text: &String) -> Seed {
        Seed::from(text.as_str())
    }
}

impl From<&Seed> for Seed {
    fn from(seed: &Seed) -> Seed {
        seed.clone()
    }
}

impl fmt::Display for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Addr(addr) => addr.fmt(f),
            Repr::Name { host, port } => write!(f, "{host}:{port}"),
            Repr::Invalid { text, .. } => f.write_str(text),
        }
    }
}

/// The seed names of a node and what they resolved to last.
#[derive(Debug, Default)]
pub(crate) struct SeedNames {
    /// Seeds given as addresses.
    fixed: Vec<SocketAddr>,
    /// Each name and its latest addresses (empty until it resolves).
    names: BTreeMap<String, Vec<SocketAddr>>,
    /// Names whose last resolution failed (logged once per failure streak).
    failing: std::collections::BTreeSet<String>,
}

impl SeedNames {
    pub(crate) fn new(seeds: &[Seed]) -> SeedNames {
        SeedNames {
            fixed: seeds.iter().filter_map(Seed::addr).collect(),
            names: seeds
                .iter()
                .filter_map(Seed::name)
                .map(|n| (n, Vec::new()))
                .collect(),
            failing: Default::default(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names to resolve.
    pub(crate) fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    /// Takes in one round of resolutions; returns every seed address (fixed ones and the
    /// latest addresses of every name) when a name's addresses changed.
    pub(crate) fn update(
        &mut self,
        results: Vec<(String, std::io::Result<Vec<SocketAddr>>)>,
    ) -> Option<Vec<SocketAddr>> {
        let mut changed = false;
        for (name, result) in results {
            match result {
                Ok(mut addrs) if !addrs.is_empty() => {
                    addrs.sort();
                    addrs.dedup();
                    if self.failing.remove(&name) {
                        info!(seed = %name, ?addrs, "seed name resolves again");
                    }
                    if let Some(old) = self.names.get_mut(&name)
                        && *old != addrs
                    {
                        tracing::debug!(seed = %name, ?addrs, "seed name resolved");
                        *old = addrs;
                        changed = true;
                    }
                }
                Ok(_) => self.failed(&name, "it has no addresses"),
                Err(err) => self.failed(&name, &err.to_string()),
            }
        }
        changed.then(|| {
            self.fixed
                .iter()
                .chain(self.names.values().flatten())
                .copied()
                .collect()
        })
    }

    fn failed(&mut self, name: &str, why: &str) {
        // The addresses it had stay seeds: a DNS hiccup does not drop them.
        if self.failing.insert(name.to_string()) {
            warn!(seed = %name, %why, "seed name does not resolve; retrying while not connected");
        }
    }
}

/// Resolves one name (at most `timeout`).
pub(crate) async fn resolve(
    name: String,
    timeout: std::time::Duration,
) -> (String, std::io::Result<Vec<SocketAddr>>) {
    let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host(name.clone())).await;
    let result = match lookup {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {timeout:?}"),
        )),
    };
    (name, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_parses_as_an_address_or_a_name() {
        assert_eq!(
            Seed::parse("127.0.0.1:7946").unwrap().addr(),
            Some("127.0.0.1:7946".parse().unwrap())
        );
        assert_eq!(
            Seed::parse("[::1]:7946").unwrap().addr(),
            Some("[::1]:7946".parse().unwrap())
        );
        let name = Seed::parse("Workers.default.svc:7946").unwrap();
        assert_eq!(name.addr(), None);
        assert_eq!(name.name().as_deref(), Some("workers.default.svc:7946"));
        assert_eq!(name.to_string(), "workers.default.svc:7946");
    }

    #[test]
    fn text_that_is_not_a_seed_says_what_is_wrong() {
        assert_eq!(Seed::parse("worker-1"), Err(SeedError::MissingPort));
        assert_eq!(Seed::parse("worker-1:"), Err(SeedError::BadPort));
        assert_eq!(Seed::parse("worker-1:0"), Err(SeedError::BadPort));
        assert_eq!(Seed::parse("worker-1:70000"), Err(SeedError::BadPort));
        assert_eq!(Seed::parse(":7946"), Err(SeedError::BadHost));
        assert_eq!(Seed::parse("wörker:7946"), Err(SeedError::BadHost));
        assert_eq!(Seed::parse("a b:7946"), Err(SeedError::BadHost));
        let kept = Seed::from("nope");
        assert_eq!(kept.invalid(), Some(("nope", SeedError::MissingPort)));
    }

    #[test]
    fn a_failed_resolution_keeps_the_addresses_a_name_had() {
        let mut seeds = SeedNames::new(&[Seed::from("127.0.0.1:1"), Seed::from("fleet:7946")]);
        let a: SocketAddr = "10.0.0.1:7946".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:7946".parse().unwrap();
        let fixed: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            seeds.update(vec![("fleet:7946".into(), Ok(vec![b, a, b]))]),
            Some(vec![fixed, a, b])
        );
        // Same answer: nothing to change.
        assert_eq!(
            seeds.update(vec![("fleet:7946".into(), Ok(vec![a, b]))]),
            None
        );
        // A failure keeps what the name had.
        let failed = Err(std::io::Error::other("NXDOMAIN"));
        assert_eq!(seeds.update(vec![("fleet:7946".into(), failed)]), None);
        // A new answer replaces it: stale addresses stop being seeds.
        assert_eq!(
            seeds.update(vec![("fleet:7946".into(), Ok(vec![b]))]),
            Some(vec![fixed, b])
        );
    }
}
