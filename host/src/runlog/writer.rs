//! Appending frames.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{
    Entry, Hash, MAGIC, MAX_FRAME_BYTES, bincode_config, chain_hash, encoded_len, genesis_hash,
};

/// Appends entries to a run log, one flushed frame per entry.
pub struct RunLogWriter {
    file: File,
    path: PathBuf,
    last_hash: Hash,
    frames: u64,
}

impl RunLogWriter {
    /// Creates a new log at `path` (refusing to overwrite one) and writes its header.
    pub fn create(path: &Path, header: &Entry) -> io::Result<RunLogWriter> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| annotate(path, "create", e))?;
        file.write_all(MAGIC)?;
        let mut writer = RunLogWriter {
            file,
            path: path.to_owned(),
            last_hash: genesis_hash(),
            frames: 0,
        };
        writer.append(header)?;
        Ok(writer)
    }

    /// Reopens an existing log for appending after its first `valid_len` bytes (anything after
    /// them, a torn frame, is cut off). `last_hash` and `frames` describe the valid part, as
    /// returned by [`super::read_log`].
    pub fn reopen(
        path: &Path,
        valid_len: u64,
        last_hash: Hash,
        frames: u64,
    ) -> io::Result<RunLogWriter> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| annotate(path, "open", e))?;
        file.set_len(valid_len)?;
        Ok(RunLogWriter {
            file,
            path: path.to_owned(),
            last_hash,
            frames,
        })
    }

    /// Appends one entry and flushes it to the operating system, so that it survives the
    /// process being killed right after.
    pub fn append(&mut self, entry: &Entry) -> io::Result<()> {
        // Sized before it is encoded, so an entry too large for a frame is never held twice.
        let len = encoded_len(entry);
        if len > MAX_FRAME_BYTES as u64 {
            return Err(io::Error::other(format!(
                "a run-log entry of {len} bytes is larger than a frame may hold ({} MiB)",
                MAX_FRAME_BYTES >> 20
            )));
        }
        let mut frame = Vec::with_capacity(4 + len as usize + 32);
        frame.extend_from_slice(&(len as u32).to_le_bytes());
        bincode::serde::encode_into_std_write(entry, &mut frame, bincode_config())
            .map_err(|e| io::Error::other(format!("cannot encode a run-log entry: {e}")))?;
        let hash = chain_hash(&self.last_hash, &frame[4..]);
        frame.extend_from_slice(&hash);
        self.file
            .write_all(&frame)
            .map_err(|e| annotate(&self.path, "write", e))?;
        self.file.flush()?;
        self.last_hash = hash;
        self.frames += 1;
        Ok(())
    }

    /// The chain hash of the last frame written: once the end frame is, the log's final hash.
    pub fn last_hash(&self) -> Hash {
        self.last_hash
    }

    /// Number of frames in the log so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Forces the log to stable storage (used at the end of a run).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }
}

fn annotate(path: &Path, action: &str, error: io::Error) -> io::Error {
    io::Error::new(
        error.kind(),
        format!("cannot {action} run log {}: {error}", path.display()),
    )
}
