//! Authenticated, encrypted datagrams: a cluster keyring, sealing and opening, and the
//! replay guard.
//!
//! A sealed datagram is `magic "GE" | version | kind 3 | sender (8 bytes) | nonce (24
//! bytes) | ciphertext | tag (16 bytes)`: XChaCha20-Poly1305 over a whole plain datagram
//! (its own envelope included), with everything before the nonce as associated data, so a
//! changed magic, version, kind or sender fails authentication too. The first key of the
//! [`Keyring`] seals; every key opens. [`SEAL_OVERHEAD`] bytes more than the plain
//! datagram.
//!
//! `sender` names the sending node's advertise address (a hash of it); the nonce is
//! `salt (8 random bytes, drawn once per process) | boot (8 bytes LE) | counter (8 bytes
//! LE, one more for every datagram)`: unique for as long as a process runs (the salt keeps
//! two processes with the same boot apart), and, being authenticated, what the replay
//! guard reads. A receiver keeps, per sender (whatever address a datagram arrives from),
//! a window of the last [`WINDOW`] counters of each of the sender's last few processes,
//! and refuses a counter already seen or older than its window. See `docs/design.md` for
//! what this does and does not stop.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{AeadInPlace, KeyInit, OsRng};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};

use crate::wire::{DropReason, ENVELOPE_LEN, Kind, MAGIC, MAX_DATAGRAM, VERSION};

/// Bytes a sealed datagram adds to the plain one: envelope, sender, nonce and tag.
pub const SEAL_OVERHEAD: usize = ENVELOPE_LEN + SENDER_LEN + NONCE_LEN + TAG_LEN;
const SENDER_LEN: usize = 8;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// The authenticated header: envelope and sender.
const AAD_LEN: usize = ENVELOPE_LEN + SENDER_LEN;
/// Counters of one sender accepted out of order, behind its newest.
pub const WINDOW: u64 = 64;
/// Senders the replay guard remembers; the one heard from least recently goes when a new
/// one comes.
pub const MAX_SENDERS: usize = 4096;

/// One 32-byte cluster key. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Key {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// A key from 64 hexadecimal digits (surrounding whitespace ignored).
    pub fn from_hex(hex: &str) -> Result<Key, KeyError> {
        let digits: Vec<u8> = hex
            .trim()
            .chars()
            .map(|c| c.to_digit(16).map(|d| d as u8).ok_or(KeyError::NotHex))
            .collect::<Result<_, _>>()?;
        if digits.len() != 64 {
            return Err(KeyError::Length(digits.len()));
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
            *byte = pair[0] << 4 | pair[1];
        }
        Ok(Key(bytes))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why a key did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not 64 hexadecimal digits long.
    #[error("a key is 64 hexadecimal digits (32 bytes), not {0}")]
    Length(usize),
    /// A character that is not a hexadecimal digit.
    #[error("a key holds only hexadecimal digits")]
    NotHex,
    /// A key file with no key in it.
    #[error("the key file holds no key")]
    Empty,
}

/// Why a key file gave no keyring. As with [`crate::Error`], the display text of `Read`
/// does not repeat its I/O error: that is its `source()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The file cannot be read.
    #[error("cannot read the key file {}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds something that is not a key.
    #[error("the key file {}: {reason}", path.display())]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: KeyError,
    },
}

/// The cluster keys: the first seals what this node sends, every one opens what it
/// receives. To rotate without downtime: add the new key (second) on every node, then
/// make it first on every node, then remove the old one.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    /// A keyring of `keys`, the first one sealing.
    pub fn new(keys: impl IntoIterator<Item = Key>) -> Keyring {
        Keyring {
            keys: keys.into_iter().collect(),
        }
    }

    /// Parses a key file: one key a line, 64 hexadecimal digits; blank lines and lines
    /// starting with `#` are skipped.
    pub fn parse(text: &str) -> Result<Keyring, KeyError> {
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(Key::from_hex)
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Keyring { keys })
    }

    /// Reads and parses a key file (one hex key a line; blank lines and `#` comments
    /// are skipped).
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Keyring, KeyFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Keyring::parse(&text).map_err(|reason| KeyFileError::Parse {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keyring({} keys)", self.keys.len())
    }
}

/// How a node with keys treats plaintext: the steps of turning keys on in a running
/// plaintext fleet, one node at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Plaintext {
    /// Send plaintext, accept both (step 1: every node learns to open sealed datagrams).
    SendAndAccept,
    /// Send sealed, accept both (step 2: every node seals).
    Accept,
    /// Send sealed, refuse plaintext (step 3, and the default with keys).
    #[default]
    Refuse,
}

/// Seals what a node sends and opens what it receives. A node's driver holds one when
/// the node has keys; it is public for tools that speak the wire format (fuzzers,
/// captures, test harnesses).
pub struct Sealer {
    ciphers: Vec<XChaCha20Poly1305>,
    plaintext: Plaintext,
    /// Names this node's advertise address to receivers.
    sender: [u8; SENDER_LEN],
    boot: u64,
    salt: [u8; 8],
    counter: u64,
    guard: ReplayGuard,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.ciphers.len())
            .field("plaintext", &self.plaintext)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer for the process that started as `boot` and is reached at `addr`; `None`
    /// for an empty keyring.
    pub fn new(
        keys: &Keyring,
        plaintext: Plaintext,
        addr: SocketAddr,
        boot: u64,
    ) -> Option<Sealer> {
        let mut salt = [0u8; 8];
        OsRng.fill_bytes(&mut salt);
        Sealer::with_salt(keys, plaintext, addr, boot, salt)
    }

    fn with_salt(
        keys: &Keyring,
        plaintext: Plaintext,
        addr: SocketAddr,
        boot: u64,
        salt: [u8; 8],
    ) -> Option<Sealer> {
        if keys.is_empty() {
            return None;
        }
        let sender = xxhash_rust::xxh3::xxh3_64(addr.to_string().as_bytes()).to_le_bytes();
        Some(Sealer {
            sender,
            ciphers: keys
                .keys
                .iter()
                .map(|k| XChaCha20Poly1305::new((&k.0).into()))
                .collect(),
            plaintext,
            boot,
            salt,
            counter: 0,
            guard: ReplayGuard::default(),
        })
    }

    /// Follows the core's boot when it raises it (the fleet refused the old one): the
    /// newer boot is what receivers' replay guards take as a newer process.
    pub fn set_boot(&mut self, boot: u64) {
        self.boot = self.boot.max(boot);
    }

    /// What to send for the plain datagram `data`: sealed with the first key, or as it is
    /// while the fleet still turns keys on.
    pub fn seal<'a>(&mut self, data: &'a [u8]) -> Cow<'a, [u8]> {
        if self.plaintext == Plaintext::SendAndAccept {
            return Cow::Borrowed(data);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&self.salt);
        nonce[8..16].copy_from_slice(&self.boot.to_le_bytes());
        nonce[16..].copy_from_slice(&self.counter.to_le_bytes());
        self.counter += 1;
        let mut out = Vec::with_capacity(SEAL_OVERHEAD + data.len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(Kind::Sealed as u8);
        out.extend_from_slice(&self.sender);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(data);
        let (head, body) = out.split_at_mut(AAD_LEN + NONCE_LEN);
        let tag = self.ciphers[0]
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &head[..AAD_LEN], body)
            .expect("a datagram is far below XChaCha20-Poly1305's length limit");
        out.extend_from_slice(&tag);
        Cow::Owned(out)
    }

    /// The plain datagram inside `data`, or why it is dropped.
    pub fn open<'a>(&mut self, data: &'a [u8]) -> Result<Cow<'a, [u8]>, DropReason> {
        let sealed =
            data.len() >= ENVELOPE_LEN && data[..2] == MAGIC && data[3] == Kind::Sealed as u8;
        if !sealed {
            return match self.plaintext {
                Plaintext::Refuse => Err(DropReason::Auth),
                Plaintext::Accept | Plaintext::SendAndAccept => Ok(Cow::Borrowed(data)),
            };
        }
        if data.len() > MAX_DATAGRAM + SEAL_OVERHEAD {
            return Err(DropReason::Size);
        }
        if data[2] != VERSION {
            return Err(DropReason::Version);
        }
        if data.len() < SEAL_OVERHEAD {
            return Err(DropReason::Auth);
        }
        let (head, rest) = data.split_at(AAD_LEN);
        let (nonce, rest) = rest.split_at(NONCE_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = XNonce::from_slice(nonce);
        let tag = Tag::from_slice(tag);
        for cipher in &self.ciphers {
            let mut plain = body.to_vec();
            if cipher
                .decrypt_in_place_detached(nonce, head, &mut plain, tag)
                .is_ok()
            {
                let sender = u64::from_le_bytes(head[ENVELOPE_LEN..].try_into().expect("8 bytes"));
                let salt: [u8; 8] = nonce[..8].try_into().expect("8 bytes");
                let boot = u64::from_le_bytes(nonce[8..16].try_into().expect("8 bytes"));
                let counter = u64::from_le_bytes(nonce[16..].try_into().expect("8 bytes"));
                return if self.guard.admit(sender, boot, salt, counter) {
                    Ok(Cow::Owned(plain))
                } else {
                    Err(DropReason::Replay)
                };
            }
        }
        Err(DropReason::Auth)
    }
}

/// One process of a sender and the counters of it seen lately.
#[derive(Clone, Copy, Debug)]
struct Seen {
    boot: u64,
    salt: [u8; 8],
    /// The highest counter seen.
    top: u64,
    /// Bit `i` set: counter `top - i` was seen.
    window: u64,
}

impl Seen {
    /// Whether `counter` is new, marking it seen.
    fn admit(&mut self, counter: u64) -> bool {
        if counter > self.top {
            let ahead = counter - self.top;
            self.window = if ahead >= WINDOW {
                0
            } else {
                self.window << ahead
            };
            self.window |= 1;
            self.top = counter;
            return true;
        }
        let behind = self.top - counter;
        if behind >= WINDOW || self.window & (1 << behind) != 0 {
            return false;
        }
        self.window |= 1 << behind;
        true
    }
}

/// Processes of one sender remembered at once: the current one and the few before it.
pub const PROCESSES_PER_SENDER: usize = 4;

/// One sender's recent processes (most recently heard first), and when it was last heard.
#[derive(Debug)]
struct Sender {
    processes: Vec<Seen>,
    last_heard: u64,
}

/// Refuses authentic datagrams already received. It keeps a window per process of a
/// sender (its last [`PROCESSES_PER_SENDER`]), and at most [`MAX_SENDERS`] senders, the
/// one heard from least recently going first; only authentic datagrams add one. Which
/// process of a sender is the current one is the core's business (a newer boot wins
/// there), not the guard's: a process that restarted with a lower boot must still get
/// through to be told so.
#[derive(Debug, Default)]
struct ReplayGuard {
    senders: HashMap<u64, Sender>,
    /// Counts admissions: when each sender was last heard.
    tick: u64,
}

impl ReplayGuard {
    fn admit(&mut self, from: u64, boot: u64, salt: [u8; 8], counter: u64) -> bool {
        self.tick += 1;
        if !self.senders.contains_key(&from) && self.senders.len() >= MAX_SENDERS {
            let stalest = self
                .senders
                .iter()
                .min_by_key(|(_, s)| s.last_heard)
                .map(|(k, _)| *k);
            if let Some(stalest) = stalest {
                self.senders.remove(&stalest);
            }
        }
        let sender = self.senders.entry(from).or_insert_with(|| Sender {
            processes: Vec::new(),
            last_heard: 0,
        });
        sender.last_heard = self.tick;
        let known = sender
            .processes
            .iter()
            .position(|p| p.boot == boot && p.salt == salt);
        match known {
            Some(k) => {
                let admitted = sender.processes[k].admit(counter);
                sender.processes[..=k].rotate_right(1);
                admitted
            }
            None => {
                sender.processes.truncate(PROCESSES_PER_SENDER - 1);
                sender.processes.insert(
                    0,
                    Seen {
                        boot,
                        salt,
                        top: counter,
                        window: 1,
                    },
                );
                true
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.senders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;

    fn ring(bytes: &[u8]) -> Keyring {
        Keyring::new(bytes.iter().map(|b| Key::from_bytes([*b; 32])))
    }

    fn at(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A sealer for a node at port `port` of 127.0.0.1.
    fn sealer(keys: &[u8], plaintext: Plaintext, port: u16, boot: u64, salt: u8) -> Sealer {
        Sealer::with_salt(&ring(keys), plaintext, at(port), boot, [salt; 8]).unwrap()
    }

    #[test]
    fn sealed_datagram_opens_with_the_key_and_with_nothing_else() {
        let plain = wire::encode(&wire::Message::MembersRequest);
        let mut a = sealer(&[1], Plaintext::Refuse, 1, 10, 1);
        let sealed = a.seal(&plain).into_owned();
        assert_eq!(sealed.len(), plain.len() + SEAL_OVERHEAD);
        assert!(
            !sealed.windows(plain.len()).any(|w| w == plain),
            "sent in the clear"
        );
        let mut b = sealer(&[1], Plaintext::Refuse, 2, 20, 2);
        assert_eq!(b.open(&sealed).unwrap().as_ref(), plain.as_slice());
        let mut c = sealer(&[2], Plaintext::Refuse, 3, 30, 3);
        assert_eq!(c.open(&sealed).unwrap_err(), DropReason::Auth);
        // A node without keys hands it to the core, which refuses it.
        assert_eq!(wire::decode(&sealed).unwrap_err(), DropReason::Auth);
    }

    #[test]
    fn any_changed_byte_fails_authentication() {
        let plain = wire::encode(&wire::Message::MembersRequest);
        let sealed = sealer(&[1], Plaintext::Refuse, 1, 10, 1)
            .seal(&plain)
            .into_owned();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            let mut b = sealer(&[1], Plaintext::Refuse, 2, 20, 2);
            let err = b.open(&bad).unwrap_err();
            // The version byte is read before authentication; the kind and magic decide
            // whether it is sealed at all (then plaintext is refused).
            assert!(
                matches!(err, DropReason::Auth | DropReason::Version),
                "byte {i}: {err:?}"
            );
        }
    }

    #[test]
    fn replays_are_refused_whichever_process_of_a_sender_they_come_from() {
        let plain = wire::encode(&wire::Message::MembersRequest);
        let mut old = sealer(&[1], Plaintext::Refuse, 1, 10, 1);
        let mut new = sealer(&[1], Plaintext::Refuse, 1, 11, 2);
        let mut b = sealer(&[1], Plaintext::Refuse, 3, 20, 3);
        let first = old.seal(&plain).into_owned();
        let second = old.seal(&plain).into_owned();
        // Out of order within the window is fine; each once, wherever it comes from (the
        // guard keys on the sender named inside, not on the source address).
        assert!(b.open(&second).is_ok());
        assert!(b.open(&first).is_ok());
        assert_eq!(b.open(&first).unwrap_err(), DropReason::Replay);
        assert_eq!(b.open(&second).unwrap_err(), DropReason::Replay);
        // A newer process of the sender has a window of its own; the older one's keeps
        // refusing its replays (which process is current is for the core to say).
        let third = old.seal(&plain).into_owned();
        assert!(b.open(&new.seal(&plain)).is_ok());
        assert_eq!(b.open(&first).unwrap_err(), DropReason::Replay);
        assert!(b.open(&third).is_ok());
        assert_eq!(b.open(&third).unwrap_err(), DropReason::Replay);
        // Too far behind the newest counter.
        let late = new.seal(&plain).into_owned();
        for _ in 0..WINDOW {
            assert!(b.open(&new.seal(&plain)).is_ok());
        }
        assert_eq!(b.open(&late).unwrap_err(), DropReason::Replay);
    }

    #[test]
    fn plaintext_is_refused_unless_the_fleet_is_turning_keys_on() {
        let plain = wire::encode(&wire::Message::MembersRequest);
        for (mode, sends_plain, accepts_plain) in [
            (Plaintext::SendAndAccept, true, true),
            (Plaintext::Accept, false, true),
            (Plaintext::Refuse, false, false),
        ] {
            let mut s = sealer(&[1], mode, 1, 10, 1);
            assert_eq!(
                s.seal(&plain).as_ref() == plain.as_slice(),
                sends_plain,
                "{mode:?}"
            );
            assert_eq!(s.open(&plain).is_ok(), accepts_plain, "{mode:?}");
        }
    }

    #[test]
    fn a_rotating_keyring_opens_both_keys_and_seals_with_the_first() {
        let plain = wire::encode(&wire::Message::MembersRequest);
        let with_old = sealer(&[1], Plaintext::Refuse, 1, 10, 1)
            .seal(&plain)
            .into_owned();
        let with_new = sealer(&[2], Plaintext::Refuse, 2, 11, 2)
            .seal(&plain)
            .into_owned();
        let mut both = sealer(&[2, 1], Plaintext::Refuse, 3, 20, 3);
        assert!(both.open(&with_old).is_ok());
        assert!(both.open(&with_new).is_ok());
        let sealed = both.seal(&plain).into_owned();
        assert!(
            sealer(&[2], Plaintext::Refuse, 4, 30, 4)
                .open(&sealed)
                .is_ok()
        );
        assert_eq!(
            sealer(&[1], Plaintext::Refuse, 4, 30, 4)
                .open(&sealed)
                .unwrap_err(),
            DropReason::Auth
        );
    }

    #[test]
    fn keys_parse_from_hex_lines_and_never_show() {
        let text = format!(
            "# cluster keys\n{}\n\n{}\n",
            "ab".repeat(32),
            "01".repeat(32)
        );
        let keys = Keyring::parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(format!("{keys:?}"), "Keyring(2 keys)");
        assert_eq!(format!("{:?}", Key::from_bytes([0xab; 32])), "Key(..)");
        assert_eq!(Keyring::parse("# none\n").unwrap_err(), KeyError::Empty);
        assert_eq!(Key::from_hex("abc").unwrap_err(), KeyError::Length(3));
        assert_eq!(
            Key::from_hex(&"zz".repeat(32)).unwrap_err(),
            KeyError::NotHex
        );
    }

    #[test]
    fn the_replay_guard_forgets_the_sender_heard_least_recently_beyond_its_bound() {
        let mut guard = ReplayGuard::default();
        for sender in 0..MAX_SENDERS as u64 {
            assert!(guard.admit(sender, 1, [0; 8], 0));
        }
        // Sender 0 is heard again; sender 1 is now the stalest and goes for a new one.
        assert!(guard.admit(0, 1, [0; 8], 1));
        assert!(guard.admit(MAX_SENDERS as u64, 1, [0; 8], 0));
        assert_eq!(guard.len(), MAX_SENDERS);
        assert!(!guard.admit(0, 1, [0; 8], 1), "sender 0 was forgotten");
        assert!(guard.admit(1, 1, [0; 8], 0), "sender 1 was kept");
    }

    #[test]
    fn a_sender_keeps_a_window_for_each_of_its_last_processes() {
        let mut guard = ReplayGuard::default();
        for salt in 0..PROCESSES_PER_SENDER as u8 {
            assert!(guard.admit(9, 1, [salt; 8], 5));
        }
        // Alternating between processes replays nothing.
        for salt in 0..PROCESSES_PER_SENDER as u8 {
            assert!(!guard.admit(9, 1, [salt; 8], 5));
        }
        // One process more pushes out the one heard from least recently (salt 0).
        assert!(guard.admit(9, 1, [99; 8], 0));
        assert!(guard.admit(9, 1, [0; 8], 5), "the stalest process was kept");
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the opener, never open under a key they were not
        /// sealed with, and nothing opens twice.
        #[test]
        fn arbitrary_bytes_are_refused_with_a_reason(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1600)) {
            let mut b = sealer(&[1], Plaintext::Refuse, 2, 20, 2);
            proptest::prop_assert!(b.open(&data).is_err());
            let mut lax = sealer(&[1], Plaintext::Accept, 3, 30, 3);
            if lax.open(&data).is_ok() {
                // Only as plaintext, which `Accept` lets through to the core's own checks.
                proptest::prop_assert!(data.len() < ENVELOPE_LEN || data[3] != Kind::Sealed as u8 || data[..2] != MAGIC);
            }
        }
    }
}
