//! What an auditor runs on run directories: `log` (every recorded frame, readable or as
//! JSONL), `verify` (chain, plugin, replay and signature, with an exit code a CI job can use),
//! `diff` (where two runs part, and what each spent), and `keygen` (a key pair to sign runs).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};

use super::recorded::{RecordedRun, Replayed, header_lines, preflight_line, read_run, replay_run};
use super::{load, runtime, short_hash};
use crate::bindings::types::{Completion, LlmError, Prompt, Request, Role};
use crate::catalog::Catalog;
use crate::cli::{LogArgs, VerifyArgs};
use crate::config::RunConfig;
use crate::rundir::{RunDir, call_headline, level_name};
use crate::runlog::{
    CallRecord, CallRequest, CallResponse, End, EndStatus, Entry, Evidence, Frames, LogError,
};
use crate::runtime::{first_difference, first_value_difference};
use crate::signing::{RunSignature, SignatureProblem};
use crate::spending::accounting::Spend;
use crate::spending::pricing::PriceTable;
use crate::terminal;
use crate::verdict::{self, Exit};

/// Which calls `log` shows; every frame when no filter is set.
struct Filter {
    role: Option<Role>,
    call: Option<u64>,
    grep: Option<String>,
}

impl Filter {
    fn from_args(args: &LogArgs) -> anyhow::Result<Filter> {
        let role = args
            .role
            .as_deref()
            .map(|name| {
                Role::named(name).with_context(|| {
                    format!(
                        "--role {}: no such role; the roles are {}",
                        terminal::line(name),
                        Role::ALL.map(Role::name).join(", ")
                    )
                })
            })
            .transpose()?;
        Ok(Filter {
            role,
            call: args.call,
            grep: args.grep.clone(),
        })
    }

    fn any(&self) -> bool {
        self.role.is_some() || self.call.is_some() || self.grep.is_some()
    }

    /// Whether `call` (whose JSON form is `json`) passes every filter set.
    fn keeps(&self, call: &CallRecord, json: &Value) -> bool {
        let role_matches = self.role.is_none_or(|role| match &call.request {
            CallRequest::Complete(batch) => batch.iter().any(|request| request.role == role),
            _ => false,
        });
        role_matches
            && self.call.is_none_or(|index| call.index == index)
            && self
                .grep
                .as_deref()
                .is_none_or(|text| json.to_string().contains(text))
    }
}

/// `drpo-host log DIR`: the run log's frames in order, read one at a time (a log of any size
/// needs no more memory than its largest frame), after the chain is checked up to each.
pub fn log(args: &LogArgs) -> anyhow::Result<()> {
    let filter = Filter::from_args(args)?;
    let dir = RunDir::new(&args.dir);
    let mut frames = Frames::open(&dir.run_log())?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut write = |text: String| -> anyhow::Result<bool> {
        match writeln!(out, "{text}") {
            Ok(()) => Ok(true),
            // A reader that stops early (`| head`) ends the listing, not in an error.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(error) => Err(error).context("cannot write to stdout"),
        }
    };
    for entry in frames.by_ref() {
        let entry = entry?;
        let shown = match &entry {
            Entry::Call(call) => {
                let json = call_json(call);
                filter.keeps(call, &json).then(|| match args.json {
                    true => json.to_string(),
                    false => call_text(call),
                })
            }
            _ if filter.any() => None,
            other if args.json => Some(frame_json(other).to_string()),
            other => Some(frame_text(&dir.run_log(), other)),
        };
        if let Some(text) = shown
            && !write(text)?
        {
            return Ok(());
        }
    }
    if filter.any() {
        return Ok(());
    }
    let torn = frames.torn_tail_bytes();
    let hash = hex::encode(frames.last_hash());
    let closing = match (args.json, torn) {
        (true, torn) => {
            json!({"frame": "chain", "final_hash": hash, "torn_tail_bytes": torn}).to_string()
        }
        (false, Some(bytes)) => format!(
            "incomplete last frame: {bytes} bytes an interrupted write left (`drpo-host resume` \
             cuts them off)\nchain hash of the last complete frame: {hash}"
        ),
        (false, None) => format!("final chain hash: {hash}"),
    };
    write(closing)?;
    Ok(())
}

/// A frame that is not a call, as JSON: its kind in `frame`, and its fields.
fn frame_json(entry: &Entry) -> Value {
    let (kind, value) = match entry {
        Entry::Header(header) => ("header", serde_json::to_value(header)),
        Entry::Preflight(preflight) => ("preflight", serde_json::to_value(preflight)),
        Entry::End(end) => ("end", serde_json::to_value(end)),
        Entry::Call(call) => return call_json(call),
    };
    let mut object = json!({ "frame": kind });
    if let Ok(Value::Object(fields)) = value {
        object.as_object_mut().expect("an object").extend(fields);
    }
    object
}

/// A call as JSON: index, import, the roles it asked (for `complete`), request, response,
/// tokens used, time, cache flags and what each server said about its answer.
fn call_json(call: &CallRecord) -> Value {
    let (prompt_tokens, completion_tokens) = usage(call);
    let roles: Vec<&str> = match &call.request {
        CallRequest::Complete(batch) => batch.iter().map(|r| r.role.name()).collect(),
        _ => Vec::new(),
    };
    json!({
        "frame": "call",
        "index": call.index,
        "import": call.request.import_name(),
        "roles": roles,
        "request": call.request,
        "response": call.response,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        "elapsed_us": call.provenance.elapsed_us,
        "cache_hits": call.provenance.cache_hits,
        "evidence": call.provenance.evidence,
    })
}

/// The tokens a call's answers report, prompt and completion, summed.
fn usage(call: &CallRecord) -> (u64, u64) {
    match &call.response {
        CallResponse::Complete(results) => {
            results
                .iter()
                .flatten()
                .fold((0, 0), |(prompt, completion), answer| {
                    (
                        prompt + u64::from(answer.usage.prompt_tokens),
                        completion + u64::from(answer.usage.completion_tokens),
                    )
                })
        }
        _ => (0, 0),
    }
}

/// A frame that is not a call, for a reader.
fn frame_text(log: &Path, entry: &Entry) -> String {
    match entry {
        Entry::Header(header) => {
            let mut lines = vec![format!("run log        {}", log.display())];
            lines.extend(header_lines(header));
            lines.join("\n")
        }
        Entry::Preflight(preflight) => preflight_line(preflight),
        Entry::End(End { status, elapsed_ms }) => {
            let seconds = *elapsed_ms as f64 / 1000.0;
            match status {
                EndStatus::Finished(outcome) => {
                    let mut text = format!("end            finished in {seconds:.1}s");
                    if let Some(score) = outcome.best_score {
                        text += &format!(", best score {score:.4}");
                    }
                    if let Some(prompt) = &outcome.best_prompt {
                        text += &format!("\n  best prompt:\n{}", block(prompt, 4));
                    }
                    text
                }
                EndStatus::Failed(message) => format!(
                    "end            failed after {seconds:.1}s: {}",
                    terminal::error(message)
                ),
            }
        }
        Entry::Call(call) => call_text(call),
    }
}

/// A call for a reader: its headline, then what was asked and answered in full.
fn call_text(call: &CallRecord) -> String {
    let index = call.index;
    let mut lines = Vec::new();
    match (&call.request, &call.response) {
        (CallRequest::Complete(batch), CallResponse::Complete(results)) => {
            lines.push(format!("[call {index}] {}", call_headline(call, "")));
            for (i, (request, result)) in batch.iter().zip(results).enumerate() {
                lines.push(request_text(i + 1, batch.len(), request));
                lines.push(result_text(result));
                if let Some(Some(evidence)) = call.provenance.evidence.get(i) {
                    lines.push(evidence_text(evidence));
                }
            }
        }
        (CallRequest::Embed(texts), _) => {
            lines.push(format!("[call {index}] {}", call_headline(call, "")));
            for text in texts {
                lines.push(block(text, 4));
            }
        }
        (_, CallResponse::Queries(queries)) => {
            lines.push(format!("[call {index}] {}", call_headline(call, "")));
            for query in queries {
                lines.push(format!(
                    "  {} [{}]: {}",
                    terminal::line(&query.id),
                    terminal::line(&query.tags.join(", ")),
                    terminal::line(&query.text)
                ));
            }
        }
        (_, CallResponse::Examples(examples)) => {
            lines.push(format!("[call {index}] {}", call_headline(call, "")));
            for example in examples {
                lines.push(format!("  query:\n{}", block(&example.query, 4)));
                lines.push(format!("  answer:\n{}", block(&example.answer, 4)));
            }
        }
        (CallRequest::RecordNode(node), _) => {
            lines.push(format!(
                "[call {index}] record-node: node {} at depth {}, parent {}, reward {:.4}",
                node.id,
                node.depth,
                node.parent.map_or("none".into(), |p| p.to_string()),
                node.reward
            ));
            lines.push(format!("  prompt:\n{}", block(&node.prompt, 4)));
            lines.push(format!("  details: {}", terminal::line(&node.details)));
        }
        (CallRequest::Log { level, message }, _) => lines.push(format!(
            "[call {index}] log {}: {}",
            level_name(*level),
            terminal::indented(message)
        )),
        _ => lines.push(format!("[call {index}] {}", call_headline(call, ""))),
    }
    lines.join("\n")
}

fn request_text(position: usize, of: usize, request: &Request) -> String {
    let sampling = &request.sampling;
    let mut head = format!(
        "  request {position} of {of}: {}, temperature {}, top-p {}, at most {} tokens, {} \
         choice(s), seed {}",
        request.role.name(),
        sampling.temperature,
        sampling.top_p,
        sampling.max_tokens,
        sampling.n,
        sampling.seed
    );
    if !sampling.stop.is_empty() {
        head += &format!(", stop {}", terminal::line(&format!("{:?}", sampling.stop)));
    }
    if request.json_schema.is_some() {
        head += ", answer constrained to a JSON schema";
    }
    let prompt = match &request.prompt {
        Prompt::Raw(text) => format!("    raw prompt:\n{}", block(text, 6)),
        Prompt::Chat(messages) => messages
            .iter()
            .map(|m| {
                format!(
                    "    <{}>\n{}",
                    terminal::line(&m.role),
                    block(&m.content, 6)
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    };
    format!("{head}\n{prompt}")
}

fn result_text(result: &Result<Completion, LlmError>) -> String {
    match result {
        Ok(answer) => {
            let mut text = format!(
                "  answer: {} prompt + {} completion tokens",
                answer.usage.prompt_tokens, answer.usage.completion_tokens
            );
            for (i, choice) in answer.choices.iter().enumerate() {
                text += &format!("\n    choice {}:\n{}", i + 1, block(choice, 6));
            }
            text
        }
        Err(error) => format!("  failed: {}", terminal::error(&format!("{error:?}"))),
    }
}

fn evidence_text(evidence: &Evidence) -> String {
    let shown = |field: &Option<String>| {
        field
            .as_deref()
            .map_or("(not given)".to_owned(), terminal::line)
    };
    format!(
        "  served as model {}, reply id {}, system fingerprint {}",
        shown(&evidence.model),
        shown(&evidence.response_id),
        shown(&evidence.system_fingerprint)
    )
}

/// `text` over several lines, escaped for the terminal, each line indented by `by` spaces.
fn block(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    terminal::block(text)
        .lines()
        .map(|line| format!("{pad}{line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `drpo-host verify DIR`: the chain, the signature (when there is one, or a key is given), the
/// plugin's hash, and a full replay; one line, and an exit code per way of failing
/// ([`verdict`]).
pub async fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let dir = RunDir::new(&args.dir);
    let fail = |code: u8, message: String| -> anyhow::Result<()> {
        Err(Exit {
            code,
            message: format!("not verified: {}: {message}", dir.root().display()),
        }
        .into())
    };
    let recorded = match read_run(&dir) {
        Ok(recorded) => recorded,
        Err(error) => {
            return match error.downcast_ref::<LogError>() {
                Some(LogError::Corrupt { .. } | LogError::NotARunLog { .. }) => {
                    fail(verdict::TAMPERED, format!("{error:#}"))
                }
                _ => Err(error),
            };
        }
    };
    if recorded.end.is_none() {
        return fail(
            verdict::UNFINISHED,
            "the run has not ended (it was interrupted; `drpo-host resume` finishes it)".into(),
        );
    }
    let final_hash = recorded.contents.last_hash;
    let frames = recorded.contents.entries.len();
    let signed = match signature_of(&dir)? {
        None if args.public_key.is_some() => {
            return fail(
                verdict::UNSIGNED,
                format!(
                    "a public key was given, but the run is not signed (no {})",
                    dir.signature().display()
                ),
            );
        }
        None => None,
        Some(signature) => {
            match crate::signing::check(&signature, &final_hash, args.public_key.as_deref())? {
                Ok(()) => Some(signature.public_key),
                Err(problem @ SignatureProblem::OtherKey { .. }) => {
                    return fail(verdict::UNSIGNED, problem.to_string());
                }
                Err(problem) => return fail(verdict::TAMPERED, problem.to_string()),
            }
        }
    };

    let runtime = runtime()?;
    let path = match &args.plugin {
        Some(path) => Catalog::of_this_process().find(path)?,
        None => RunConfig::load(&dir.config())?.strategy,
    };
    let plugin = load(&runtime, &path)?;
    if plugin.sha256() != recorded.header.plugin_sha256 {
        return fail(
            verdict::OTHER_PLUGIN,
            format!(
                "{} has sha256 {}, the run was recorded with {}",
                path.display(),
                plugin.sha256(),
                recorded.header.plugin_sha256
            ),
        );
    }
    let calls = recorded.calls.len();
    if let Replayed::Diverged(error) = replay_run(&runtime, &dir, recorded, &plugin).await? {
        return fail(verdict::DIVERGED, format!("{error:#}"));
    }
    let signature = match (&signed, &args.public_key) {
        (Some(key), Some(_)) => format!("; signed with the key given ({})", short_hash(key)),
        (Some(key), None) => {
            format!("; signed with the key {key} (pass --public-key to check it is one you trust)")
        }
        (None, _) => "; not signed".into(),
    };
    println!(
        "verified: {}: {frames} frames chained to {}; plugin {} (sha256 {}); the replay \
         reproduced its {calls} calls{signature}",
        dir.root().display(),
        hex::encode(final_hash),
        path.display(),
        short_hash(plugin.sha256()),
    );
    Ok(())
}

/// The run's `run.sig`, when there is one.
fn signature_of(dir: &RunDir) -> anyhow::Result<Option<RunSignature>> {
    let path = dir.signature();
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not a run signature", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// `drpo-host diff A B`: the first recorded difference between two runs (in the header, or the
/// first call that differs: its index, import, role, field and both values), then what each
/// run asked, spent and found, side by side.
pub fn diff(a: &Path, b: &Path) -> anyhow::Result<()> {
    let runs = [RunDir::new(a), RunDir::new(b)];
    let [first, second] = [read_run(&runs[0])?, read_run(&runs[1])?];
    match first_run_difference(&first, &second) {
        Some(difference) => println!("{difference}"),
        None => println!("the runs recorded the same header and calls"),
    }
    println!();
    let columns = [summary(&runs[0], &first), summary(&runs[1], &second)];
    println!("{:<16} {:<34} B", "", "A");
    for (i, (name, value)) in columns[0].iter().enumerate() {
        println!("{name:<16} {value:<34} {}", columns[1][i].1);
    }
    Ok(())
}

/// Where two runs first differ: in the header (plugin, options, seed, models), or at a call.
fn first_run_difference(a: &RecordedRun, b: &RecordedRun) -> Option<String> {
    let header = |run: &RecordedRun| {
        let mut header = run.header.clone();
        header.started_unix_ms = 0;
        header
    };
    if let Some((field, was, now)) = first_value_difference(&header(a), &header(b), "header") {
        return Some(format!(
            "first difference: {}\n  A: {}\n  B: {}",
            terminal::line(&field),
            terminal::line(&was),
            terminal::line(&now)
        ));
    }
    for (x, y) in a.calls.iter().zip(&b.calls) {
        let index = x.index;
        let import = x.request.import_name();
        let role = match &x.request {
            CallRequest::Complete(batch) => batch
                .first()
                .map(|r| format!(", role {}", r.role.name()))
                .unwrap_or_default(),
            _ => String::new(),
        };
        let found = first_difference(&x.request, &y.request)
            .map(|(field, was, now)| (format!("request {field}"), was, now))
            .or_else(|| first_value_difference(&x.response, &y.response, "response"));
        if let Some((field, was, now)) = found {
            let cached = |call: &CallRecord| call.provenance.cache_hits.contains(&true);
            let note = match (cached(x), cached(y)) {
                (false, false) => "",
                _ => {
                    "\n  (the response cache answered part of this call in a run, and a cached \
                      answer bills no tokens)"
                }
            };
            return Some(format!(
                "first difference: call {index} (`{import}`{role}): {}\n  A: {}\n  B: {}{note}",
                terminal::line(&field),
                terminal::line(&was),
                terminal::line(&now)
            ));
        }
    }
    (a.calls.len() != b.calls.len()).then(|| {
        format!(
            "first difference: after call {}, run A has {} calls and run B {}",
            a.calls.len().min(b.calls.len()),
            a.calls.len(),
            b.calls.len()
        )
    })
}

/// A run's line of the side-by-side summary: strategy, calls, tokens, money and outcome.
fn summary(dir: &RunDir, run: &RecordedRun) -> Vec<(&'static str, String)> {
    let prices = RunConfig::load(&dir.config()).map_or_else(
        |_| PriceTable::new(&Default::default()),
        |config| PriceTable::new(&config.prices),
    );
    let spend = Spend::of(&run.contents.billed_calls(), &run.header.models, &prices);
    let (prompt, completion) = spend.total_tokens();
    let requests: u64 = spend.roles.iter().map(|role| role.requests).sum();
    let (outcome, score) = match &run.end {
        Some(End {
            status: EndStatus::Finished(outcome),
            ..
        }) => (
            "finished".to_owned(),
            outcome
                .best_score
                .map_or("none".into(), |score| format!("{score:.4}")),
        ),
        Some(End {
            status: EndStatus::Failed(_),
            ..
        }) => ("failed".into(), "none".into()),
        None => ("not ended".into(), "none".into()),
    };
    vec![
        ("run", dir.root().display().to_string()),
        (
            "strategy",
            terminal::line(&format!(
                "{} {}",
                run.header.plugin_name, run.header.plugin_version
            )),
        ),
        ("calls", run.calls.len().to_string()),
        ("model requests", requests.to_string()),
        ("tokens", format!("{prompt} + {completion}")),
        ("cost", spend.total_money().to_string()),
        ("outcome", outcome),
        ("best score", score),
    ]
}

/// `drpo-host keygen FILE`: a new ed25519 key pair to sign runs with.
pub fn keygen(secret: &Path) -> anyhow::Result<()> {
    let public = crate::signing::keygen(secret)?;
    println!(
        "secret key: {} (keep it private; `run --sign-key {}` signs a run with it)\npublic key: {} \
         (give it to whoever checks your runs: `verify --public-key`)",
        secret.display(),
        secret.display(),
        public.display()
    );
    Ok(())
}
