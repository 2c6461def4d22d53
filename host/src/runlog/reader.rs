//! Reading and verifying a run log.

use std::path::{Path, PathBuf};

use super::{CallRecord, Entry, Hash, MAGIC, Preflight, bincode_config, chain_hash, genesis_hash};

/// A run log read and verified up to its last complete frame.
#[derive(Debug)]
pub struct LogContents {
    /// The entries of every complete, verified frame.
    pub entries: Vec<Entry>,
    /// Byte length of the verified part (magic and complete frames).
    pub valid_len: u64,
    /// Hash of the last complete frame.
    pub last_hash: Hash,
    /// Bytes after the last complete frame: a frame whose writing was interrupted (the process
    /// was killed). `None` when the log ends cleanly.
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
        self.preflight()
            .map(Preflight::as_call)
            .into_iter()
            .chain(self.calls())
            .collect()
    }
}

/// Why a run log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot read run log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a drpo run log (it does not start with the run-log magic bytes)")]
    NotARunLog { path: PathBuf },
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
/// reported with its index and byte offset. An incomplete last frame is not an error here: it is
/// reported in [`LogContents::torn_tail_bytes`] for the caller to judge.
pub fn read_log(path: &Path) -> Result<LogContents, LogError> {
    let bytes = std::fs::read(path).map_err(|source| LogError::Io {
        path: path.to_owned(),
        source,
    })?;
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
        let Some(len_bytes) = rest.get(..4) else {
            return Ok(torn(entries, offset, previous, rest.len()));
        };
        let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        let Some(payload) = rest.get(4..4 + len) else {
            return Ok(torn(entries, offset, previous, rest.len()));
        };
        let Some(stored_hash) = rest.get(4 + len..4 + len + 32) else {
            return Ok(torn(entries, offset, previous, rest.len()));
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
        if matches!(entries.last(), Some(Entry::End(_))) {
            return Err(corrupt(frame, offset, "follows the end of the run".into()));
        }
        entries.push(entry);
        previous = expected;
        offset += 4 + len + 32;
    }
    Ok(LogContents {
        entries,
        valid_len: offset as u64,
        last_hash: previous,
        torn_tail_bytes: None,
    })
}

fn torn(entries: Vec<Entry>, offset: usize, last_hash: Hash, tail: usize) -> LogContents {
    LogContents {
        entries,
        valid_len: offset as u64,
        last_hash,
        torn_tail_bytes: Some(tail as u64),
    }
}
