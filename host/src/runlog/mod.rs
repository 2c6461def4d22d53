//! The run log: an append-only, hash-chained record of every host call a plugin made.
//!
//! # File format
//!
//! ```text
//! magic  "DRPOLOG\x01"                         8 bytes
//! frame* [len: u32 LE][payload: len bytes][hash: 32 bytes]
//! ```
//!
//! `payload` is one [`Entry`] encoded with `bincode` (standard configuration, serde). `hash` is
//! `sha256(previous hash || payload)`, where the previous hash of the first frame is
//! `sha256(magic)`. Each frame therefore vouches for itself and for every frame before it: any
//! changed byte is found at the first frame whose hash no longer matches. Frames are flushed to
//! the operating system as they are written, so a killed process loses at most the frame it was
//! writing; such a torn tail is recognised as such (it is incomplete, not corrupt) and `resume`
//! cuts it off.
//!
//! The first frame is always a [`Header`]; then, in runs recorded since the preflight exists, a
//! [`Preflight`]; then one [`CallRecord`] per completed import call, in the order the plugin made
//! them; a finished run ends with an [`Entry::End`].

mod entries;
mod reader;
mod writer;

pub use entries::{
    CallRecord, CallRequest, CallResponse, End, EndStatus, Entry, Header, Preflight, Provenance,
    RoleModel, RoleSettings,
};
pub use reader::{LogContents, LogError, read_log};
pub use writer::RunLogWriter;

use sha2::{Digest, Sha256};

/// The first eight bytes of every run log.
pub const MAGIC: &[u8; 8] = b"DRPOLOG\x01";

/// The version of the frame payloads; bumped whenever [`Entry`] changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// A frame hash.
pub type Hash = [u8; 32];

fn genesis_hash() -> Hash {
    Sha256::digest(MAGIC).into()
}

fn chain_hash(previous: &Hash, payload: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher.update(payload);
    hasher.finalize().into()
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

#[cfg(test)]
mod tests;
