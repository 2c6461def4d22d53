//! The run directory: what a run leaves behind, and the observer that writes it as it goes.
//!
//! | file | what |
//! |---|---|
//! | `config.json` | the resolved [`RunConfig`](crate::config::RunConfig): repeat the run from it |
//! | `run.log` | the binary run log (see [`crate::runlog`]) |
//! | `log.txt` | a readable log: every call, the plugin's log lines, each scored node |
//! | `result.json` | the outcome and the whole search tree (schema: `docs/result.schema.json`) |
//! | `trace.txt` | the prompt at each step of the best path |
//! | `tree.html` | a self-contained viewer of the tree (see [`crate::viewer`]) |
//! | `run.lock` | locked by the `run` or `resume` writing to the directory; holds its pid |

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::bindings::types::{LogLevel, Prompt, Role};
use crate::progress::Progress;
use crate::report::RunReport;
use crate::runlog::{CallRecord, CallRequest, CallResponse};
use crate::runtime::Observer;
use crate::tree::{Refused, Tree};

/// Paths inside a run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn run_log(&self) -> PathBuf {
        self.root.join("run.log")
    }
    pub fn human_log(&self) -> PathBuf {
        self.root.join("log.txt")
    }
    pub fn result(&self) -> PathBuf {
        self.root.join("result.json")
    }
    pub fn trace(&self) -> PathBuf {
        self.root.join("trace.txt")
    }
    pub fn tree_html(&self) -> PathBuf {
        self.root.join("tree.html")
    }
    /// `run.sig`: the run's signature, when it was signed (see [`crate::signing`]).
    pub fn signature(&self) -> PathBuf {
        self.root.join("run.sig")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("run.lock")
    }

    /// Takes the directory's exclusive lock, which the operating system releases when the
    /// process ends (a killed run too), or says which process holds it. Two writers would
    /// interleave their frames, or one `resume` would cut off the frame another is writing.
    pub fn lock(&self) -> anyhow::Result<RunLock> {
        let path = self.lock_file();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.trim().parse::<u32>().ok())
                    .map(|pid| format!(" (pid {pid})"))
                    .unwrap_or_default();
                anyhow::bail!(
                    "{} is in use by another drpo-host `run` or `resume`{holder}; wait for it \
                     to end, or stop it, and try again",
                    self.root.display()
                );
            }
            Err(TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        // Truncated only under the lock: an unlocked truncate could erase the holder's pid.
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(RunLock { _file: file })
    }
}

/// The exclusive lock of a run directory, held until dropped.
pub struct RunLock {
    _file: File,
}

/// Writes `log.txt` line by line as calls complete, and collects the search tree.
pub struct RunObserver {
    log: Option<File>,
    tree: Tree,
    /// The nodes left out of `tree`, and why.
    refused: Vec<Refused>,
    /// Print the plugin's info-and-above lines on stderr.
    echo: bool,
    debug: bool,
    /// Shows progress; it sees every call this observer sees, and echoed lines go through it
    /// so they do not tear a progress bar.
    display: Option<Progress>,
}

impl RunObserver {
    /// Appends to `log.txt` in `dir` (a resumed run continues the same file).
    pub fn open(dir: &RunDir, echo: bool, debug: bool) -> std::io::Result<RunObserver> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.human_log())?;
        Ok(RunObserver {
            log: Some(log),
            tree: Tree::new(),
            refused: Vec::new(),
            echo,
            debug,
            display: None,
        })
    }

    /// Also passes every call to `display`, until [`RunObserver::close_display`].
    pub fn with_display(mut self, display: Progress) -> RunObserver {
        self.display = Some(display);
        self
    }

    /// Ends the progress display (a bar clears itself), before the outcome is printed.
    pub fn close_display(&mut self) {
        self.display = None;
    }

    /// An observer that only collects the tree (for `replay`).
    pub fn silent() -> RunObserver {
        RunObserver {
            log: None,
            tree: Tree::new(),
            refused: Vec::new(),
            echo: false,
            debug: false,
            display: None,
        }
    }

    /// The tree reported so far.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// The nodes refused so far, and why.
    pub fn refused(&self) -> &[Refused] {
        &self.refused
    }

    /// Prints one line of plugin-supplied text on the terminal, through the progress display
    /// when there is one (so a bar is not torn).
    fn print_line(&self, text: &str) {
        let text = crate::terminal::line(text);
        match &self.display {
            Some(display) => display.print_line(&text),
            None => eprintln!("{text}"),
        }
    }

    /// Writes one line to `log.txt`.
    pub fn line(&mut self, text: &str) {
        if let Some(log) = &mut self.log {
            // The human log is a convenience; the run log is the record. A failed write here
            // must not stop the run.
            let _ = writeln!(log, "{text}");
        }
    }
}

impl Observer for RunObserver {
    fn on_request(&mut self, request: &CallRequest) {
        if let Some(display) = &mut self.display {
            display.on_request(request);
        }
    }

    fn on_call(&mut self, record: &CallRecord, replayed: bool) {
        let refusal = match &record.request {
            CallRequest::RecordNode(node) => self.tree.insert(node.clone()).err(),
            _ => None,
        };
        if let Some(display) = &mut self.display {
            // The display counts levels and nodes of the tree, so a refused node is only a call.
            match refusal {
                None => display.on_call(record, replayed),
                Some(_) => display.on_refused_node(),
            }
        }
        let origin = if replayed { " (replayed)" } else { "" };
        let index = record.index;
        match (&record.request, &record.response) {
            (CallRequest::Complete(batch), CallResponse::Complete(results)) => {
                self.line(&format!("[call {index}] {}", call_headline(record, origin)));
                for (request, result) in batch.iter().zip(results) {
                    if self.debug {
                        self.line(&format!(
                            "  prompt ({}): {}",
                            request.role.name(),
                            prompt_text(&request.prompt)
                        ));
                    }
                    if let Err(error) = result {
                        self.line(&format!("  {} failed: {error:?}", request.role.name()));
                    }
                }
            }
            (CallRequest::RecordNode(node), _) => {
                self.line(&format!(
                    "[node {}] depth {} parent {} reward {:.3}\n{}",
                    node.id,
                    node.depth,
                    node.parent.map_or("-".into(), |p| p.to_string()),
                    node.reward,
                    indent(&node.prompt),
                ));
                if let Some(refusal) = refusal {
                    self.line(&format!("[warning] {refusal}; it is left out of the tree"));
                    // One warning on the terminal: a plugin may send any number of bad nodes.
                    if self.echo && !replayed && self.refused.is_empty() {
                        self.print_line(&format!(
                            "warning: {refusal}; it is left out of the tree (this and any others \
                             in log.txt)"
                        ));
                    }
                    self.refused.push(refusal);
                }
            }
            (CallRequest::Log { level, message }, _) => {
                self.line(&format!("[{}] {message}", level_name(*level)));
                if self.echo && !replayed && !matches!(level, LogLevel::Trace | LogLevel::Debug) {
                    self.print_line(message);
                }
            }
            _ => self.line(&format!("[call {index}] {}", call_headline(record, origin))),
        }
    }
}

/// One line on a call: its import, `origin` (e.g. " (replayed)"), and what it asked and got in
/// counts (requests per role, answers, failures, cache hits, time; texts; queries; examples).
pub fn call_headline(record: &CallRecord, origin: &str) -> String {
    let import = record.request.import_name();
    match (&record.request, &record.response) {
        (CallRequest::Complete(batch), CallResponse::Complete(results)) => {
            let ok = results.iter().filter(|r| r.is_ok()).count();
            let hits = record.provenance.cache_hits.iter().filter(|h| **h).count();
            format!(
                "{import}{origin}: {} request(s) ({}), {ok} answered, {} failed, {hits} from cache, {:.2}s",
                batch.len(),
                role_counts(batch.iter().map(|r| r.role)),
                results.len() - ok,
                record.provenance.elapsed_us as f64 / 1e6,
            )
        }
        (CallRequest::Embed(texts), _) => format!("{import}{origin}: {} text(s)", texts.len()),
        (CallRequest::Queries { .. }, CallResponse::Queries(queries)) => {
            format!("{import}{origin}: {} queries", queries.len())
        }
        (CallRequest::Examples, CallResponse::Examples(examples)) => {
            format!("{import}{origin}: {} examples", examples.len())
        }
        _ => format!("{import}{origin}"),
    }
}

/// Writes what a finished run found: `result.json`, `trace.txt` and `tree.html`.
pub fn write_result(dir: &RunDir, report: &RunReport) -> anyhow::Result<()> {
    write_file(
        &dir.result(),
        &(serde_json::to_string_pretty(report)? + "\n"),
    )?;
    write_file(&dir.trace(), &report.trace())?;
    write_viewer(dir, report)?;
    write_examples(dir, &report.details)
}

/// Writes `tree.html`.
pub fn write_viewer(dir: &RunDir, report: &RunReport) -> anyhow::Result<()> {
    write_file(&dir.tree_html(), &crate::viewer::render(report))
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// The file an example-optimizing strategy's examples are written to.
pub const EXAMPLES_FILE: &str = "examples.json";

/// Writes `examples.json` in the published `{query: answer}` shape (in the strategy's order)
/// when the outcome's details are optimized examples (`kind` `icl-examples`, an `examples`
/// list of `{query, answer}`).
fn write_examples(dir: &RunDir, details: &serde_json::Value) -> anyhow::Result<()> {
    if details["kind"] != "icl-examples" {
        return Ok(());
    }
    let mut examples = serde_json::Map::new();
    for (i, example) in details["examples"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let (Some(query), Some(answer)) = (example["query"].as_str(), example["answer"].as_str())
        else {
            anyhow::bail!("the outcome's example {i} has no query and answer strings");
        };
        examples.insert(query.to_owned(), serde_json::Value::from(answer));
    }
    let path = dir.root().join(EXAMPLES_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&examples)? + "\n")
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

pub(crate) fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    }
}

fn role_counts(roles: impl Iterator<Item = Role>) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for role in roles {
        let name = role.name();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => counts.push((name, 1)),
        }
    }
    counts
        .iter()
        .map(|(name, count)| format!("{name}×{count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn prompt_text(prompt: &Prompt) -> String {
    match prompt {
        Prompt::Raw(text) => text.clone(),
        Prompt::Chat(messages) => messages
            .iter()
            .map(|m| format!("<{}> {}", m.role, m.content))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_locked_run_directory_refuses_a_second_lock_naming_itself_and_the_holder() {
        let work = tempfile::tempdir().unwrap();
        let dir = RunDir::new(work.path());
        let held = dir.lock().unwrap();
        let message = dir.lock().err().unwrap().to_string();
        assert!(
            message.contains(&work.path().display().to_string())
                && message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(held);
        dir.lock().unwrap();
    }
}
