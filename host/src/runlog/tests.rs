use super::*;
use crate::bindings::types::{LogLevel, Outcome};

fn header() -> Entry {
    Entry::Header(Header {
        format_version: FORMAT_VERSION,
        host_version: "test".into(),
        wit_package: "drpo:strategy@0.2.0".into(),
        plugin_sha256: "ab".repeat(32),
        plugin_name: "testkit".into(),
        plugin_version: "0.1.0".into(),
        options: "{}".into(),
        seed: 7,
        models: vec![],
        started_unix_ms: 1,
    })
}

fn call(index: u64) -> Entry {
    Entry::Call(CallRecord {
        index,
        request: CallRequest::Log {
            level: LogLevel::Info,
            message: format!("line {index}"),
        },
        response: CallResponse::Unit,
        provenance: Provenance::default(),
    })
}

fn end() -> Entry {
    Entry::End(End {
        status: EndStatus::Finished(Outcome {
            best_prompt: Some("p".into()),
            best_score: Some(1.5),
            best_path: vec![0, 1],
            details: "{}".into(),
        }),
        elapsed_ms: 3,
    })
}

fn write_log(dir: &std::path::Path, entries: &[Entry]) -> std::path::PathBuf {
    let path = dir.join("run.log");
    let mut writer = RunLogWriter::create(&path, &entries[0]).unwrap();
    for entry in &entries[1..] {
        writer.append(entry).unwrap();
    }
    path
}

/// The byte offset of every frame of a well-formed log, and its length at the end.
fn frame_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = vec![MAGIC.len()];
    let mut offset = MAGIC.len();
    while offset < bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        offset += 4 + len + 32;
        starts.push(offset);
    }
    starts
}

fn read(bytes: &[u8]) -> Result<LogContents, LogError> {
    reader::read_bytes(std::path::Path::new("run.log"), bytes)
}

/// The frame and byte offset a corruption error names.
fn corrupt_at(result: Result<LogContents, LogError>) -> (u64, u64) {
    match result {
        Err(LogError::Corrupt { frame, offset, .. }) => (frame, offset),
        other => panic!("expected a corrupt log, got {other:?}"),
    }
}

#[test]
fn entries_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let entries = vec![header(), call(0), call(1), end()];
    let path = write_log(dir.path(), &entries);
    let contents = read_log(&path).unwrap();
    assert_eq!(contents.entries, entries);
    assert_eq!(contents.torn_tail_bytes, None);
    assert_eq!(contents.valid_len, std::fs::metadata(&path).unwrap().len());
}

#[test]
fn a_log_of_another_format_is_named_so_before_its_frames_are_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let Entry::Header(mut older) = header() else {
        unreachable!()
    };
    older.format_version = FORMAT_VERSION - 1;
    older.host_version = "0.0.9".into();
    // A later frame that would not read (its bytes changed), as an older format's may not.
    let path = dir.path().join("run.log");
    let mut writer = RunLogWriter::create(&path, &Entry::Header(older)).unwrap();
    writer.append(&call(0)).unwrap();
    drop(writer);
    let mut bytes = std::fs::read(&path).unwrap();
    let starts = frame_starts(&bytes);
    let payload = starts[1] + 4;
    bytes[payload] = 0xff;
    let error = read(&bytes).unwrap_err();
    assert!(
        matches!(error, LogError::OtherFormat { found, .. } if found == FORMAT_VERSION - 1),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("drpo-host 0.0.9"), "{message}");
}

#[test]
fn corruption_names_the_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), &[header(), call(0), call(1), end()]);
    let mut bytes = std::fs::read(&path).unwrap();
    let contents = read_log(&path).unwrap();
    // Change the last byte of the third frame's payload (the second call).
    let frame_end = frame_starts(&bytes)[3];
    bytes[frame_end - 33] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let error = read_log(&path).unwrap_err().to_string();
    assert!(error.contains("frame 2"), "{error}");
    assert_eq!(contents.entries.len(), 4);
}

#[test]
fn a_torn_tail_is_reported_and_can_be_cut_off_and_continued() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), &[header(), call(0), call(1)]);
    let full = std::fs::read(&path).unwrap();
    // Simulate a crash in the middle of writing the last frame.
    std::fs::write(&path, &full[..full.len() - 10]).unwrap();
    let contents = read_log(&path).unwrap();
    assert_eq!(contents.entries, vec![header(), call(0)]);
    assert!(contents.torn_tail_bytes.is_some());

    let mut writer =
        RunLogWriter::reopen(&path, contents.valid_len, contents.last_hash, 2).unwrap();
    writer.append(&call(1)).unwrap();
    writer.append(&end()).unwrap();
    let repaired = read_log(&path).unwrap();
    assert_eq!(repaired.entries, vec![header(), call(0), call(1), end()]);
    assert_eq!(repaired.torn_tail_bytes, None);
    assert_eq!(std::fs::read(&path).unwrap()[..full.len()], full[..]);
}

#[test]
fn refuses_files_that_are_not_run_logs_and_misplaced_frames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.log");
    std::fs::write(&path, b"hello").unwrap();
    assert!(matches!(read_log(&path), Err(LogError::NotARunLog { .. })));

    let other = tempfile::tempdir().unwrap();
    let path = write_log(other.path(), &[call(0), call(1)]);
    let error = read_log(&path).unwrap_err().to_string();
    assert!(
        error.contains("frame 0") && error.contains("header"),
        "{error}"
    );
}

#[test]
fn timings_are_the_only_fields_cleared() {
    let mut entry = call(0);
    if let Entry::Call(record) = &mut entry {
        record.provenance.elapsed_us = 99;
    }
    assert_eq!(entry.without_timings(), call(0));
    assert_ne!(header().without_timings(), header());
}

#[test]
fn a_changed_length_field_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), &[header(), call(0), call(1), end()]);
    let original = std::fs::read(&path).unwrap();
    let starts = frame_starts(&original);
    // The highest bit of each frame's length makes it run past the end of the file, the way an
    // interrupted write does; the end frame's too.
    for (frame, &start) in starts[..4].iter().enumerate() {
        let mut bytes = original.clone();
        bytes[start + 3] ^= 0x80;
        std::fs::write(&path, &bytes).unwrap();
        let error = read_log(&path).unwrap_err();
        assert_eq!(
            corrupt_at(Err(error)),
            (frame as u64, start as u64),
            "length of frame {frame}"
        );
    }
    let message = read_log(&path).unwrap_err().to_string();
    assert!(
        message.contains("run.log") && message.contains("frame 3") && message.contains("length"),
        "{message}"
    );
}

#[test]
fn bytes_after_the_end_frame_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), &[header(), call(0), end()]);
    let mut bytes = std::fs::read(&path).unwrap();
    let end_of_run = bytes.len() as u64;
    bytes.extend_from_slice(&[7, 0]);
    assert_eq!(corrupt_at(read(&bytes)), (3, end_of_run));
}

#[test]
fn every_prefix_of_a_log_is_its_complete_frames_and_a_torn_tail() {
    let entries = [header(), call(0), call(1), end()];
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(write_log(dir.path(), &entries)).unwrap();
    let starts = frame_starts(&bytes);
    for cut in MAGIC.len()..=bytes.len() {
        let complete = starts.iter().filter(|&&start| start <= cut).count() - 1;
        let contents = read(&bytes[..cut]).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(contents.entries, entries[..complete], "cut at {cut}");
        assert_eq!(contents.valid_len, starts[complete] as u64, "cut at {cut}");
        let tail = cut - starts[complete];
        assert_eq!(
            contents.torn_tail_bytes,
            (tail > 0).then_some(tail as u64),
            "cut at {cut}"
        );
    }
}

/// Every single-bit change of a log is found, at the frame it is in: a log whose last frame is
/// complete has no torn tail to mistake it for, so `resume` never cuts a valid frame.
#[test]
fn every_flipped_bit_is_corruption_of_its_own_frame() {
    let dir = tempfile::tempdir().unwrap();
    for entries in [
        vec![header(), call(0), call(1), end()],
        vec![header(), call(0), call(1)],
    ] {
        let path = write_log(dir.path(), &entries);
        let original = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let starts = frame_starts(&original);
        for bit in 0..original.len() * 8 {
            let mut bytes = original.clone();
            bytes[bit / 8] ^= 1 << (bit % 8);
            let byte = bit / 8;
            if byte < MAGIC.len() {
                assert!(matches!(read(&bytes), Err(LogError::NotARunLog { .. })));
                continue;
            }
            let frame = starts.iter().rposition(|&start| start <= byte).unwrap();
            assert_eq!(
                corrupt_at(read(&bytes)),
                (frame as u64, starts[frame] as u64),
                "bit {bit}"
            );
        }
    }
}

/// A changed bit inside a torn tail may leave it torn, but never moves the cut into the
/// complete frames before it.
#[test]
fn a_flipped_bit_in_a_torn_tail_cuts_no_complete_frame() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(write_log(dir.path(), &[header(), call(0), call(1)])).unwrap();
    let starts = frame_starts(&full);
    let last = starts[2];
    let torn = &full[..full.len() - 5];
    for bit in 0..torn.len() * 8 {
        let mut bytes = torn.to_vec();
        bytes[bit / 8] ^= 1 << (bit % 8);
        match read(&bytes) {
            Ok(contents) => {
                assert!(bit / 8 >= last, "bit {bit} before the tail went unnoticed");
                assert_eq!(contents.valid_len, last as u64, "bit {bit}");
            }
            Err(LogError::Corrupt { .. } | LogError::NotARunLog { .. }) => {}
            Err(other) => panic!("bit {bit}: {other}"),
        }
    }
}

/// Arbitrary bytes, and real logs with bytes overwritten, cut or inserted at random: the reader
/// never panics, and what it accepts adds up to the file.
#[test]
fn arbitrary_bytes_never_panic_the_reader() {
    use rand::{Rng, SeedableRng};
    let mut rng = chacha20::ChaCha20Rng::seed_from_u64(11);
    let mut below = |n: usize| (rng.next_u64() % n.max(1) as u64) as usize;
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::read(write_log(dir.path(), &[header(), call(0), call(1), end()])).unwrap();
    for round in 0..4000 {
        let mut bytes = match round % 3 {
            0 => {
                let mut bytes = MAGIC.to_vec();
                bytes.extend((0..below(200)).map(|_| below(256) as u8));
                bytes
            }
            _ => log.clone(),
        };
        for _ in 0..=below(3) {
            let at = below(bytes.len());
            match below(4) {
                0 => bytes
                    .iter_mut()
                    .skip(at)
                    .take(1)
                    .for_each(|b| *b = below(256) as u8),
                1 => bytes.truncate(at),
                2 => bytes.insert(at, below(256) as u8),
                _ => bytes[at..].iter_mut().take(4).for_each(|b| *b = 0xff),
            }
        }
        if let Ok(contents) = read(&bytes) {
            assert_eq!(
                contents.valid_len + contents.torn_tail_bytes.unwrap_or(0),
                bytes.len() as u64,
                "round {round}"
            );
        }
    }
}

#[test]
fn an_outcome_with_a_nan_score_has_the_same_encoding_as_itself() {
    let outcome = |score: f64| Outcome {
        best_prompt: None,
        best_score: Some(score),
        best_path: vec![],
        details: "{}".into(),
    };
    assert!(same_encoding(&outcome(f64::NAN), &outcome(f64::NAN)));
    assert!(!same_encoding(&outcome(f64::NAN), &outcome(1.0)));
    assert!(!same_encoding(&outcome(0.0), &outcome(-0.0)));
}

#[test]
fn a_length_field_past_the_largest_frame_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), &[header(), call(0)]);
    let mut bytes = std::fs::read(&path).unwrap();
    let second = frame_starts(&bytes)[1];
    let huge = u32::try_from(MAX_FRAME_BYTES + 1).unwrap();
    bytes[second..second + 4].copy_from_slice(&huge.to_le_bytes());
    // As long as the file: the length field alone must make the log corrupt, not torn.
    bytes.resize(second + 4 + MAX_FRAME_BYTES / 1024, 0);
    let Err(LogError::Corrupt { frame, reason, .. }) = read(&bytes) else {
        panic!("expected a corrupt log")
    };
    assert_eq!(frame, 1);
    assert!(
        reason.contains("more than a frame may hold (1024 MiB)"),
        "{reason}"
    );
}

/// A frame whose hash chains on (anyone can compute it) but whose payload declares a string of
/// an exabyte is reported as undecodable; the reader does not try to allocate it.
#[test]
fn a_payload_declaring_a_huge_string_is_corruption_not_an_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), &[header()]);
    let mut bytes = std::fs::read(&path).unwrap();
    let previous = chain_hash(&genesis_hash(), &bytes[MAGIC.len() + 4..bytes.len() - 32]);
    // Entry::Call, index 0, CallRequest::Log, level info, then the message's length: u64::MAX
    // as a varint (0xfd and eight bytes), with no message after it.
    let mut payload = vec![1, 0, 5, 2, 0xfd];
    payload.extend_from_slice(&(u64::MAX >> 4).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&payload);
    bytes.extend_from_slice(&chain_hash(&previous, &payload));
    let Err(LogError::Corrupt { frame, reason, .. }) = read(&bytes) else {
        panic!("expected a corrupt log")
    };
    assert_eq!(frame, 1);
    assert!(reason.contains("cannot be decoded"), "{reason}");
}

#[test]
fn an_entry_is_sized_as_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), &[header()]);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        encoded_len(&header()),
        (bytes.len() - MAGIC.len() - 4 - 32) as u64
    );
}
