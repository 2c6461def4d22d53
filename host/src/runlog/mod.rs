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
//! # Torn tails
//!
//! A killed writer leaves a prefix of the frame it was writing: fewer than four bytes, or a
//! length field whose frame runs past the end of the file. A changed length field can look the
//! same, and cutting there would drop valid frames (the end frame among them) and make `resume`
//! send paid requests again. So bytes that do not hold the frame their length field declares
//! are a torn tail only when *no* prefix of them is a complete frame: no length `n` such that
//! the `32` bytes after `4 + n` are the chain hash of the `n` bytes after the length field. A
//! real prefix of a frame never holds one (that would take a sha256 collision with the frame's
//! own hash), while a frame whose length field was changed still does, at its true length: that
//! is corruption, reported with the frame's index and byte offset. Any byte after the end frame
//! is corruption too, since nothing is written after it. Bytes appended to an unfinished log
//! that hold no complete frame cannot be told from a torn write; the hash chain still vouches
//! for every frame before them.
//!
//! The first frame is always a [`Header`]; then, in runs recorded since the preflight exists, a
//! [`Preflight`]; then one [`CallRecord`] per completed import call, in the order the plugin made
//! them; a finished run ends with an [`Entry::End`].

mod entries;
mod reader;
mod writer;

pub use crate::provider::Evidence;
pub use entries::{
    CallRecord, CallRequest, CallResponse, End, EndStatus, Entry, Header, Preflight, Provenance,
    RoleModel, RoleSettings, billed_calls,
};
pub use reader::{Frames, LogContents, LogError, read_log};
pub use writer::RunLogWriter;

use sha2::{Digest, Sha256};

/// The first eight bytes of every run log.
pub const MAGIC: &[u8; 8] = b"DRPOLOG\x01";

/// The version of the frame payloads; bumped whenever [`Entry`] changes incompatibly.
pub const FORMAT_VERSION: u32 = 2;

/// A frame hash.
pub type Hash = [u8; 32];

fn genesis_hash() -> Hash {
    Sha256::digest(MAGIC).into()
}

fn chain_hash(previous: &Hash, payload: &[u8]) -> Hash {
    let mut hasher = chain_hasher(previous);
    hasher.update(payload);
    hasher.finalize().into()
}

/// The hasher of the frame after `previous`, before its payload.
fn chain_hasher(previous: &Hash) -> Sha256 {
    let mut hasher = Sha256::new();
    hasher.update(previous);
    hasher
}

/// Whether two values encode to the same bytes in a run log. Replay compares with this rather
/// than `==`, so that floats match by their bits: a NaN equals itself, and `-0.0` differs from
/// `0.0`, as in the log's hash.
pub fn same_encoding<T: serde::Serialize>(a: &T, b: &T) -> bool {
    let encode = |value: &T| bincode::serde::encode_to_vec(value, bincode_config());
    matches!((encode(a), encode(b)), (Ok(a), Ok(b)) if a == b)
}

/// The bytes `value` takes in a run log's frame, without encoding it into memory.
pub fn encoded_len<T: serde::Serialize>(value: &T) -> u64 {
    bincode::serde::encode_into_std_write(value, &mut std::io::sink(), bincode_config())
        .map_or(u64::MAX, |bytes| bytes as u64)
}

/// The largest payload a frame may hold. The writer refuses a larger entry, and the reader
/// reports a length field past it as corruption; decoding a payload may claim no more memory
/// than this, so that a frame whose hash chains on but whose contents declare a huge string or
/// list is an error rather than an allocation of that size.
pub const MAX_FRAME_BYTES: usize = 1 << 30;

fn bincode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_FRAME_BYTES>()
}

#[cfg(test)]
mod tests;
