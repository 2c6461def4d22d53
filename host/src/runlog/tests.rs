use super::*;
use crate::bindings::types::{LogLevel, Outcome};

fn header() -> Entry {
    Entry::Header(Header {
        format_version: FORMAT_VERSION,
        host_version: "test".into(),
        wit_package: "drpo:strategy@0.1.0".into(),
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
fn every_changed_byte_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), &[header(), call(0), call(1), end()]);
    let original = std::fs::read(&path).unwrap();
    for offset in 0..original.len() {
        let mut bytes = original.clone();
        bytes[offset] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        match read_log(&path) {
            Err(LogError::Corrupt { .. } | LogError::NotARunLog { .. }) => {}
            // A changed length field can make the last frame look cut short; replay refuses
            // such a log as well, naming the frame.
            Ok(contents) if contents.torn_tail_bytes.is_some() => {}
            other => panic!("flipping byte {offset} went unnoticed: {other:?}"),
        }
    }
}

#[test]
fn corruption_names_the_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_log(dir.path(), &[header(), call(0), call(1), end()]);
    let mut bytes = std::fs::read(&path).unwrap();
    let contents = read_log(&path).unwrap();
    // Change the last byte of the third frame's payload (the second call).
    let frame_end = {
        let mut offset = MAGIC.len();
        for _ in 0..3 {
            let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
            offset += 4 + len + 32;
        }
        offset
    };
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
