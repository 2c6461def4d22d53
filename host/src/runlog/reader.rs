//! Reading and verifying a run log.

use std::path::{Path, PathBuf};

use sha2::Digest;

use super::{
    CallRecord, Entry, FORMAT_VERSION, Hash, MAGIC, MAX_FRAME_BYTES, Preflight, bincode_config,
    chain_hash, chain_hasher, genesis_hash,
};

/// A run log read and verified up to its last complete frame.
#[derive(Debug)]
pub struct LogContents {
    /// The entries of every complete, verified frame.
    pub entries: Vec<Entry>,
    /// Byte length of the verified part (magic and complete frames).
    pub valid_len: u64,
    /// Hash of the last complete frame.
    pub last_hash: Hash,
    /// Bytes after the last complete frame that cannot hold a complete frame: a frame whose
    /// writing was interrupted (the process was killed; see the module's "Torn tails"). `None`
    /// when the log ends cleanly.
    pub torn_tail_bytes: Option<u64>,
}

impl LogContents {
    /// The recorded import calls, in order.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.entries
            .iter()
            .filter_map(|entry| match entry {
                Entry::Call(call) => Some(call.clone()),
                _ => None,
            })
            .collect()
    }

    /// The preflight, in logs recorded since it exists.
    pub fn preflight(&self) -> Option<&Preflight> {
        self.entries.iter().find_map(|entry| match entry {
            Entry::Preflight(preflight) => Some(preflight),
            _ => None,
        })
    }

    /// Every model request the run paid for: the preflight's (as one call), then the plugin's
    /// import calls.
    pub fn billed_calls(&self) -> Vec<CallRecord> {
        super::billed_calls(self.preflight(), &self.calls())
    }
}

/// Why a run log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    // Not `source`: the cause is in the message, and a source would print it a second time.
    #[error("cannot read run log {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a drpo run log (it does not start with the run-log magic bytes)")]
    NotARunLog { path: PathBuf },
    #[error(
        "run log {path} was written in run-log format {found} (by drpo-host {host_version}); this \
         drpo-host reads format {FORMAT_VERSION}: inspect or replay it with the drpo-host that \
         wrote it"
    )]
    OtherFormat {
        path: PathBuf,
        found: u32,
        host_version: String,
    },
    #[error(
        "run log {path} is corrupt or was altered: frame {frame} (at byte {offset}) {reason}; \
         the frames before it are intact"
    )]
    Corrupt {
        path: PathBuf,
        frame: u64,
        offset: u64,
        reason: String,
    },
}

/// Reads and verifies the whole log at `path`.
///
/// Every frame's hash is checked against the chain; the first mismatch or undecodable frame is
/// reported with its index and byte offset, and so is anything after the end frame. An
/// incomplete last frame is not an error here: it is reported in
/// [`LogContents::torn_tail_bytes`] for the caller to judge. Only bytes that cannot hold a
/// complete frame count as incomplete (see the module's "Torn tails"), so a changed length
/// field is never taken for an interrupted write.
pub fn read_log(path: &Path) -> Result<LogContents, LogError> {
    let bytes = std::fs::read(path).map_err(|error| LogError::Io {
        path: path.to_owned(),
        error,
    })?;
    read_bytes(path, &bytes)
}

/// [`read_log`] of a log already in memory; `path` names it in errors.
pub(super) fn read_bytes(path: &Path, bytes: &[u8]) -> Result<LogContents, LogError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(LogError::NotARunLog {
            path: path.to_owned(),
        });
    }
    let corrupt = |frame: u64, offset: usize, reason: String| LogError::Corrupt {
        path: path.to_owned(),
        frame,
        offset: offset as u64,
        reason,
    };

    let mut entries = Vec::new();
    let mut previous = genesis_hash();
    let mut offset = MAGIC.len();
    loop {
        let rest = &bytes[offset..];
        if rest.is_empty() {
            break;
        }
        let frame = entries.len() as u64;
        if matches!(entries.last(), Some(Entry::End(_))) {
            return Err(corrupt(frame, offset, "follows the end of the run".into()));
        }
        let declared = rest
            .get(..4)
            .map(|len| u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize);
        // The writer never writes a larger frame, so such a length field was changed, not torn.
        if let Some(len) = declared.filter(|&len| len > MAX_FRAME_BYTES) {
            return Err(corrupt(
                frame,
                offset,
                format!(
                    "has a length field of {len} bytes, more than a frame may hold ({} MiB)",
                    MAX_FRAME_BYTES >> 20
                ),
            ));
        }
        let Some((payload, stored_hash)) = declared.and_then(|len| split_frame(rest, len)) else {
            return match whole_frame_len(&previous, rest) {
                None => Ok(torn(entries, offset, previous, rest.len())),
                Some(len) => Err(corrupt(
                    frame,
                    offset,
                    format!(
                        "declares a {}-byte payload, which runs past the end of the file, yet \
                         a complete frame with a {len}-byte payload is there (its length field \
                         was changed)",
                        declared.unwrap_or_default()
                    ),
                )),
            };
        };
        let expected = chain_hash(&previous, payload);
        if stored_hash != expected {
            return Err(corrupt(
                frame,
                offset,
                "does not match its hash (its bytes, or a frame before it, were changed)".into(),
            ));
        }
        let (entry, used): (Entry, usize) =
            bincode::serde::decode_from_slice(payload, bincode_config())
                .map_err(|e| corrupt(frame, offset, format!("cannot be decoded: {e}")))?;
        // The header's encoding never changes, so it says which encoding the frames after it
        // have before any of them is decoded.
        if let Entry::Header(header) = &entry
            && header.format_version != FORMAT_VERSION
        {
            return Err(LogError::OtherFormat {
                path: path.to_owned(),
                found: header.format_version,
                host_version: header.host_version.clone(),
            });
        }
        if used != payload.len() {
            return Err(corrupt(
                frame,
                offset,
                format!("has {} bytes after its entry", payload.len() - used),
            ));
        }
        let expected_kind = match (frame, &entry) {
            (0, Entry::Header(_)) => None,
            (0, _) => Some("is not the header, which must come first"),
            (_, Entry::Header(_)) => Some("is a second header"),
            _ => None,
        };
        if let Some(reason) = expected_kind {
            return Err(corrupt(frame, offset, reason.into()));
        }
        entries.push(entry);
        previous = expected;
        offset += FRAME_OVERHEAD + payload.len();
    }
    Ok(LogContents {
        entries,
        valid_len: offset as u64,
        last_hash: previous,
        torn_tail_bytes: None,
    })
}

/// Bytes a frame adds around its payload: the length field and the hash.
const FRAME_OVERHEAD: usize = 4 + 32;

/// The payload and stored hash of a frame of payload length `len` at the start of `rest`, when
/// the whole frame is there.
fn split_frame(rest: &[u8], len: usize) -> Option<(&[u8], &[u8])> {
    let payload = rest.get(4..4usize.checked_add(len)?)?;
    let hash = rest.get(4 + len..(4 + len).checked_add(32)?)?;
    Some((payload, hash))
}

/// The payload length of a complete frame at the start of `rest` that chains from `previous`,
/// whatever its length field says; `None` when no prefix of `rest` is one. A writer killed
/// mid-frame leaves only a prefix of its frame, which (short of a sha256 collision) holds no
/// such frame; a frame whose length field was changed still does.
fn whole_frame_len(previous: &Hash, rest: &[u8]) -> Option<usize> {
    let mut hasher = chain_hasher(previous);
    let candidates = rest.len().checked_sub(FRAME_OVERHEAD)?;
    for len in 0..=candidates {
        if hasher.clone().finalize()[..] == rest[4 + len..FRAME_OVERHEAD + len] {
            return Some(len);
        }
        hasher.update([rest[4 + len]]);
    }
    None
}

fn torn(entries: Vec<Entry>, offset: usize, last_hash: Hash, tail: usize) -> LogContents {
    LogContents {
        entries,
        valid_len: offset as u64,
        last_hash,
        torn_tail_bytes: Some(tail as u64),
    }
}
