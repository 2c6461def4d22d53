//! Size limits on what a plugin records: one node, one log line, one error, and everything a
//! run records (its nodes, log lines and outcome together).
//!
//! The host keeps what a plugin records — in the run log, in `log.txt`, and the nodes in memory
//! for `result.json`, the viewer and the trace — so without these limits the host's memory and
//! disk would follow the plugin's data rather than its memory limit. They are checked when a
//! record arrives, before it is compared with a replayed one or written, so a replay under the
//! same limits (they are in `config.json`) meets the same refusals at the same calls.
//!
//! What happens past a limit is what the plugin can be told: `record-node` and `log` return
//! nothing, so a node past its limit, or a record past the run's total, ends the run with an
//! error naming the limit and its flag; a log line past its limit is cut, with a note saying
//! so, since the line's start still says what the plugin meant; an error string past its limit
//! is cut the same way.

use crate::bindings::types::{Node, Outcome};
use crate::runlog::{CallRequest, encoded_len};

/// The limits, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    /// One node, as encoded in the run log (`--max-node-kib`).
    pub node_bytes: u64,
    /// One log line (`--max-log-line-kib`).
    pub log_line_bytes: u64,
    /// One error string the plugin returns, or a panic message (`--max-error-kib`).
    pub error_bytes: u64,
    /// Every node, log line and the outcome of a run together (`--max-records-mib`).
    pub total_bytes: u64,
}

/// The default limit of one node: a node carries a prompt and the details of its scoring (a
/// query, an answer, a few rationales), a few KiB in the shipped strategies.
pub const DEFAULT_NODE_KIB: u64 = 1024;
/// The default limit of one log line.
pub const DEFAULT_LOG_LINE_KIB: u64 = 64;
/// The default limit of one error string.
pub const DEFAULT_ERROR_KIB: u64 = 64;
/// The default limit of a run's records: the shipped strategies record a few MiB in their
/// longest runs (nodes of a few KiB, at most a few thousand of them), and the host holds the
/// nodes in memory while the run lasts and again while it writes the results.
pub const DEFAULT_RECORDS_MIB: u64 = 64;

impl Default for RecordLimits {
    fn default() -> Self {
        RecordLimits {
            node_bytes: DEFAULT_NODE_KIB << 10,
            log_line_bytes: DEFAULT_LOG_LINE_KIB << 10,
            error_bytes: DEFAULT_ERROR_KIB << 10,
            total_bytes: DEFAULT_RECORDS_MIB << 20,
        }
    }
}

/// Checks a run's records against its limits as they arrive, and counts them.
#[derive(Debug, Default)]
pub(crate) struct RecordMeter {
    limits: RecordLimits,
    recorded: u64,
}

impl RecordMeter {
    /// A meter for `limits`, nothing recorded yet.
    pub(crate) fn new(limits: RecordLimits) -> RecordMeter {
        RecordMeter {
            limits,
            recorded: 0,
        }
    }

    /// Admits a `record-node` or `log` call (other calls pass untouched): a log line past its
    /// limit is cut; a node past its limit, or a record past the run's total, is refused with
    /// the reason.
    pub(crate) fn admit(&mut self, request: &mut CallRequest) -> Result<(), String> {
        let bytes = match request {
            CallRequest::RecordNode(node) => self.node_size(node)?,
            CallRequest::Log { message, .. } => {
                cut(
                    message,
                    self.limits.log_line_bytes,
                    "a log line",
                    "--max-log-line-kib",
                );
                message.len() as u64
            }
            _ => return Ok(()),
        };
        self.count(bytes, request.import_name())
    }

    /// Admits the outcome of `run` (its strings count into the run's records).
    pub(crate) fn admit_outcome(&mut self, outcome: &Outcome) -> Result<(), String> {
        self.count(encoded_len(outcome), "outcome")
    }

    /// Cuts an error string to its limit.
    pub(crate) fn cut_error(&self, mut text: String) -> String {
        cut(
            &mut text,
            self.limits.error_bytes,
            "an error",
            "--max-error-kib",
        );
        text
    }

    fn node_size(&self, node: &Node) -> Result<u64, String> {
        let bytes = encoded_len(node);
        if bytes > self.limits.node_bytes {
            return Err(format!(
                "node {} is {bytes} bytes; a node may hold at most {} (--max-node-kib, config \
                 key max_node_kib)",
                node.id,
                size(self.limits.node_bytes)
            ));
        }
        Ok(bytes)
    }

    fn count(&mut self, bytes: u64, what: &str) -> Result<(), String> {
        let total = self.recorded.saturating_add(bytes);
        if total > self.limits.total_bytes {
            return Err(format!(
                "the run's records (nodes, log lines and outcome) would reach {total} bytes with \
                 this {what} of {bytes} bytes; a run may record at most {} (--max-records-mib, \
                 config key max_records_mib)",
                size(self.limits.total_bytes)
            ));
        }
        self.recorded = total;
        Ok(())
    }
}

/// Cuts `text` to at most `limit` bytes (at a character boundary), followed by a note naming
/// the limit, `what` it bounds and its `flag`.
fn cut(text: &mut String, limit: u64, what: &str, flag: &str) {
    let Ok(limit) = usize::try_from(limit) else {
        return;
    };
    if text.len() <= limit {
        return;
    }
    let original = text.len();
    text.truncate(text.floor_char_boundary(limit));
    text.push_str(&format!(
        " [… cut: {original} bytes; {what} may hold at most {} ({flag})]",
        size(limit as u64)
    ));
    text.shrink_to_fit();
}

/// A byte count for messages: in KiB or MiB when it is a whole number of them.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::LogLevel;

    fn limits() -> RecordLimits {
        RecordLimits {
            node_bytes: 200,
            // Odd, so that a cut falls inside a two-byte character.
            log_line_bytes: 9,
            error_bytes: 8,
            // Five nodes of 150 prompt bytes (about 165 bytes each, encoded) fit, a sixth does not.
            total_bytes: 900,
        }
    }

    fn node(prompt_bytes: usize) -> CallRequest {
        CallRequest::RecordNode(Node {
            id: 7,
            parent: None,
            depth: 0,
            prompt: "p".repeat(prompt_bytes),
            reward: 0.0,
            details: "{}".into(),
        })
    }

    #[test]
    fn a_node_past_its_limit_is_refused_by_size_and_flag() {
        let mut meter = RecordMeter::new(limits());
        assert!(meter.admit(&mut node(100)).is_ok());
        let refusal = meter.admit(&mut node(300)).unwrap_err();
        assert!(refusal.contains("node 7 is"), "{refusal}");
        assert!(
            refusal.contains("at most 200 bytes (--max-node-kib"),
            "{refusal}"
        );
    }

    #[test]
    fn a_long_log_line_is_cut_at_a_character_boundary_with_a_note() {
        let mut meter = RecordMeter::new(limits());
        let mut log = CallRequest::Log {
            level: LogLevel::Info,
            message: "ééééééé".into(),
        };
        meter.admit(&mut log).unwrap();
        let CallRequest::Log { message, .. } = log else {
            unreachable!()
        };
        assert!(message.starts_with("éééé ["), "{message}");
        assert!(message.contains("cut: 14 bytes"), "{message}");
        assert!(message.contains("--max-log-line-kib"), "{message}");
    }

    #[test]
    fn the_records_of_a_run_are_bounded_together() {
        let mut meter = RecordMeter::new(limits());
        for _ in 0..5 {
            meter.admit(&mut node(150)).unwrap();
        }
        let refusal = meter.admit(&mut node(150)).unwrap_err();
        assert!(refusal.contains("--max-records-mib"), "{refusal}");
        let outcome = Outcome {
            best_prompt: Some("b".repeat(900)),
            best_score: None,
            best_path: vec![],
            details: "{}".into(),
        };
        assert!(meter.admit_outcome(&outcome).is_err());
    }

    #[test]
    fn an_error_is_cut_to_its_limit() {
        let meter = RecordMeter::new(limits());
        assert_eq!(meter.cut_error("short".into()), "short");
        let cut = meter.cut_error("0123456789abcdef".into());
        assert!(cut.starts_with("01234567 [… cut: 16 bytes"), "{cut}");
        assert!(cut.contains("--max-error-kib"), "{cut}");
    }
}
