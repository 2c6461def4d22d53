//! Reading and verifying a run log.

use std::fs::File;
use std::io::{BufReader, Read};
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

/// Reads and verifies the whole log at `path` (the [`Frames`] of the file, collected).
///
/// Every frame's hash is checked against the chain; the first mismatch or undecodable frame is
/// reported with its index and byte offset, and so is anything after the end frame. An
/// incomplete last frame is not an error here: it is reported in
/// [`LogContents::torn_tail_bytes`] for the caller to judge. Only bytes that cannot hold a
/// complete frame count as incomplete (see the module's "Torn tails"), so a changed length
/// field is never taken for an interrupted write.
pub fn read_log(path: &Path) -> Result<LogContents, LogError> {
    collect(Frames::open(path)?)
}

/// [`read_log`] of a log already in memory; `path` names it in errors.
#[cfg(test)]
pub(super) fn read_bytes(path: &Path, bytes: &[u8]) -> Result<LogContents, LogError> {
    collect(Frames::new(path, bytes)?)
}

fn collect<R: Read>(mut frames: Frames<R>) -> Result<LogContents, LogError> {
    let entries = frames.by_ref().collect::<Result<Vec<_>, _>>()?;
    Ok(LogContents {
        entries,
        valid_len: frames.valid_len,
        last_hash: frames.previous,
        torn_tail_bytes: frames.torn_tail_bytes,
    })
}

/// The entries of a run log, read and verified one frame at a time, so that a log of any size
/// is read in the memory of its largest frame. Verified as [`read_log`] says; the iteration
/// ends at the end of the file or a torn tail ([`Frames::torn_tail_bytes`]), or after the
/// first error.
pub struct Frames<R> {
    path: PathBuf,
    input: R,
    /// Hash of the last verified frame.
    previous: Hash,
    /// Byte length of the verified part.
    valid_len: u64,
    /// Frames verified so far.
    count: u64,
    after_end: bool,
    finished: bool,
    torn_tail_bytes: Option<u64>,
}

impl Frames<BufReader<File>> {
    /// The frames of the log at `path`.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let file = File::open(path).map_err(|error| LogError::Io {
            path: path.to_owned(),
            error,
        })?;
        Frames::new(path, BufReader::new(file))
    }
}

impl<R: Read> Frames<R> {
    /// The frames read from `input`, after checking its magic bytes; `path` names it in errors.
    pub fn new(path: &Path, mut input: R) -> Result<Self, LogError> {
        let mut magic = [0u8; MAGIC.len()];
        let read = read_up_to(&mut input, &mut magic).map_err(|error| LogError::Io {
            path: path.to_owned(),
            error,
        })?;
        if read < MAGIC.len() || &magic != MAGIC {
            return Err(LogError::NotARunLog {
                path: path.to_owned(),
            });
        }
        Ok(Frames {
            path: path.to_owned(),
            input,
            previous: genesis_hash(),
            valid_len: MAGIC.len() as u64,
            count: 0,
            after_end: false,
            finished: false,
            torn_tail_bytes: None,
        })
    }

    /// Bytes after the last complete frame that cannot hold a complete frame (see
    /// [`LogContents::torn_tail_bytes`]); known once the iteration has ended.
    pub fn torn_tail_bytes(&self) -> Option<u64> {
        self.torn_tail_bytes
    }

    /// Hash of the last frame verified so far: once the iteration has ended without an error,
    /// the log's final chain hash.
    pub fn last_hash(&self) -> Hash {
        self.previous
    }

    fn corrupt(&self, reason: String) -> LogError {
        LogError::Corrupt {
            path: self.path.clone(),
            frame: self.count,
            offset: self.valid_len,
            reason,
        }
    }

    fn io(&self, error: std::io::Error) -> LogError {
        LogError::Io {
            path: self.path.clone(),
            error,
        }
    }

    /// The next frame's entry; `Ok(None)` at the end of the file or at a torn tail.
    fn next_entry(&mut self) -> Result<Option<Entry>, LogError> {
        let mut length = [0u8; 4];
        let read = read_up_to(&mut self.input, &mut length).map_err(|e| self.io(e))?;
        if read == 0 {
            return Ok(None);
        }
        if self.after_end {
            return Err(self.corrupt("follows the end of the run".into()));
        }
        if read < length.len() {
            self.torn_tail_bytes = Some(read as u64);
            return Ok(None);
        }
        let declared = u32::from_le_bytes(length) as usize;
        // The writer never writes a larger frame, so such a length field was changed, not torn.
        if declared > MAX_FRAME_BYTES {
            return Err(self.corrupt(format!(
                "has a length field of {declared} bytes, more than a frame may hold ({} MiB)",
                MAX_FRAME_BYTES >> 20
            )));
        }
        // Read as the bytes arrive, so a false length field claims no memory the file does not
        // fill.
        let mut rest = Vec::new();
        (&mut self.input)
            .take((declared + 32) as u64)
            .read_to_end(&mut rest)
            .map_err(|e| self.io(e))?;
        if rest.len() < declared + 32 {
            // The file ends inside the declared frame.
            let mut tail = length.to_vec();
            tail.extend_from_slice(&rest);
            return match whole_frame_len(&self.previous, &tail) {
                None => {
                    self.torn_tail_bytes = Some(tail.len() as u64);
                    Ok(None)
                }
                Some(len) => Err(self.corrupt(format!(
                    "declares a {declared}-byte payload, which runs past the end of the file, \
                     yet a complete frame with a {len}-byte payload is there (its length field \
                     was changed)"
                ))),
            };
        }
        let (payload, stored_hash) = rest.split_at(declared);
        let expected = chain_hash(&self.previous, payload);
        if stored_hash != expected {
            return Err(self.corrupt(
                "does not match its hash (its bytes, or a frame before it, were changed)".into(),
            ));
        }
        let (entry, used): (Entry, usize) =
            bincode::serde::decode_from_slice(payload, bincode_config())
                .map_err(|e| self.corrupt(format!("cannot be decoded: {e}")))?;
        // The header's encoding never changes, so it says which encoding the frames after it
        // have before any of them is decoded.
        if let Entry::Header(header) = &entry
            && header.format_version != FORMAT_VERSION
        {
            return Err(LogError::OtherFormat {
                path: self.path.clone(),
                found: header.format_version,
                host_version: header.host_version.clone(),
            });
        }
        if used != payload.len() {
            return Err(self.corrupt(format!(
                "has {} bytes after its entry",
                payload.len() - used
            )));
        }
        let misplaced = match (self.count, &entry) {
            (0, Entry::Header(_)) => None,
            (0, _) => Some("is not the header, which must come first"),
            (_, Entry::Header(_)) => Some("is a second header"),
            _ => None,
        };
        if let Some(reason) = misplaced {
            return Err(self.corrupt(reason.into()));
        }
        self.after_end = matches!(entry, Entry::End(_));
        self.previous = expected;
        self.valid_len += (FRAME_OVERHEAD + declared) as u64;
        self.count += 1;
        Ok(Some(entry))
    }
}

impl<R: Read> Iterator for Frames<R> {
    type Item = Result<Entry, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let next = self.next_entry().transpose();
        self.finished = !matches!(next, Some(Ok(_)));
        next
    }
}

/// Fills `buffer` from `input` as far as the input goes; the bytes read.
fn read_up_to(input: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Bytes a frame adds around its payload: the length field and the hash.
const FRAME_OVERHEAD: usize = 4 + 32;

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
