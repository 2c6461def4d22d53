//! Tolerant parsing of the metrics, judge and optimizer answers.
//!
//! Models wrap JSON in code fences, put prose around it, write raw newlines inside strings,
//! give scores as `4`, `4.0`, `"4"` or `"4/5"`, invent aspect names or leave fields out. None
//! of that may stop a run (the published code crashed on several of them, defects 2–4): every
//! function here returns a value or a reason, never panics, and records what it dropped so the
//! search can log it.

use crate::aspects::{self, Aspect};
use crate::prompts::MAX_ASPECTS;
use serde_json::{Map, Value};

/// Escapes raw control characters inside JSON string literals (models often emit literal
/// newlines in long strings; Python's `json.loads(strict=False)` accepted them, serde does not).
fn escape_raw_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            if escaped {
                escaped = false;
                out.push(c);
                continue;
            }
            match c {
                '\\' => {
                    escaped = true;
                    out.push(c);
                }
                '"' => {
                    in_string = false;
                    out.push(c);
                }
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        } else {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

/// The text inside the first code fence, if there is one (the language tag is skipped).
fn fenced(text: &str) -> Option<&str> {
    let start = text.find("```")?;
    let after = &text[start + 3..];
    let body_start = after.find('\n').map(|i| i + 1).unwrap_or(0);
    let body = &after[body_start..];
    let end = body.find("```").unwrap_or(body.len());
    Some(&body[..end])
}

fn try_object(candidate: &str) -> Option<Map<String, Value>> {
    let candidate = candidate.trim();
    let attempt = |s: &str| match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    };
    if let Some(map) = attempt(candidate) {
        return Some(map);
    }
    let (start, end) = (candidate.find('{')?, candidate.rfind('}')?);
    if end < start {
        return None;
    }
    let inner = &candidate[start..=end];
    attempt(inner).or_else(|| attempt(&escape_raw_controls(inner)))
}

/// Finds the JSON object in a model's answer: the whole text, the inside of a code fence, or
/// the span from the first `{` to the last `}`; raw control characters in strings are escaped.
pub fn extract_object(text: &str) -> Result<Map<String, Value>, String> {
    let candidates = fenced(text).into_iter().chain(std::iter::once(text));
    for candidate in candidates {
        if let Some(map) = try_object(candidate) {
            return Ok(map);
        }
    }
    let preview: String = text.trim().chars().take(80).collect();
    Err(format!(
        "no JSON object found in the answer (starts {preview:?})"
    ))
}

/// A value as text: strings as they are, anything else as compact JSON, `null` as empty.
fn text_of(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Reads a 1–5 score given as a number (`4`, `4.0`) or a string (`"4"`, `"4/5"`,
/// `"4 out of 5"`, `"4 - agree"`). Fractional, out-of-range and other-scale scores are refused.
pub fn parse_score(value: &Value) -> Result<u8, String> {
    let number = match value {
        Value::Number(n) => n.as_f64().ok_or("score is not a finite number")?,
        Value::String(s) => {
            let s = s.trim();
            let digits: String = s
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            if digits.is_empty() {
                return Err(format!("score {s:?} does not start with a number"));
            }
            let rest = s[digits.len()..].trim_start();
            let denominator = rest
                .strip_prefix('/')
                .or_else(|| rest.strip_prefix("out of"))
                .map(|d| {
                    d.trim()
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .collect::<String>()
                });
            if let Some(d) = denominator
                && d != "5"
            {
                return Err(format!("score {s:?} is not on the 1-5 scale"));
            }
            digits
                .parse::<f64>()
                .map_err(|_| format!("score {s:?} is not a number"))?
        }
        other => return Err(format!("score {other} is neither a number nor a string")),
    };
    if number.fract() != 0.0 || !(1.0..=5.0).contains(&number) {
        return Err(format!("score {number} is not an integer from 1 to 5"));
    }
    Ok(number as u8)
}

/// The metrics model's choice of aspects for one query.
#[derive(Clone, Debug, PartialEq)]
pub struct AspectSelection {
    /// The chosen catalogue aspects, deduplicated, in the order given (at most five).
    pub aspects: Vec<&'static Aspect>,
    /// Why they were chosen (passed on to the judge).
    pub reasoning: String,
    /// What was dropped or missing, for the log.
    pub problems: Vec<String>,
}

/// Reads an aspect selection in the published shape
/// `{query_analysis, aspects_selection: {reasoning, selected_aspects}}`; the flat shape
/// `{reasoning, selected_aspects}` and a comma-separated string of names are accepted too.
/// Unknown names are dropped (and reported); no known aspect at all is an error.
pub fn parse_aspect_selection(object: &Map<String, Value>) -> Result<AspectSelection, String> {
    parse_aspect_selection_at_most(object, MAX_ASPECTS)
}

/// An entry of the published metrics cache (`{query: aspect-selection JSON}`), read as
/// [`parse_aspect_selection_at_most`] reads a fresh answer.
pub fn parse_cached_selection(entry: &Value, max: usize) -> Result<AspectSelection, String> {
    match entry {
        Value::Object(object) => parse_aspect_selection_at_most(object, max),
        _ => Err("the entry is not an object".to_string()),
    }
}

/// [`parse_aspect_selection`] keeping at most `max` aspects (the in-context example critic
/// chooses up to six).
pub fn parse_aspect_selection_at_most(
    object: &Map<String, Value>,
    max: usize,
) -> Result<AspectSelection, String> {
    let inner = match object.get("aspects_selection") {
        Some(Value::Object(inner)) => inner,
        _ => object,
    };
    let mut problems = Vec::new();
    let names: Vec<String> = match inner.get("selected_aspects") {
        Some(Value::Array(items)) => items.iter().map(|v| text_of(Some(v))).collect(),
        Some(Value::String(list)) => list.split(',').map(str::to_string).collect(),
        _ => return Err("the answer has no selected_aspects list".to_string()),
    };
    let mut aspects: Vec<&'static Aspect> = Vec::new();
    for name in names {
        match aspects::find(&name) {
            Some(a) if aspects.contains(&a) => problems.push(format!("duplicate aspect {name:?}")),
            Some(a) => aspects.push(a),
            None => problems.push(format!("unknown aspect {name:?} dropped")),
        }
    }
    if aspects.is_empty() {
        return Err(format!(
            "no known aspect selected ({})",
            if problems.is_empty() {
                "empty list".to_string()
            } else {
                problems.join("; ")
            }
        ));
    }
    if aspects.len() > max {
        let extra: Vec<&str> = aspects[max..].iter().map(|a| a.name).collect();
        problems.push(format!(
            "more than {max} aspects; dropped {}",
            extra.join(", ")
        ));
        aspects.truncate(max);
    }
    let reasoning = text_of(inner.get("reasoning"));
    if reasoning.is_empty() {
        problems.push("no reasoning given".to_string());
    }
    Ok(AspectSelection {
        aspects,
        reasoning,
        problems,
    })
}

/// One aspect's score and the judge's reason for it.
#[derive(Clone, Debug, PartialEq)]
pub struct AspectScore {
    /// The aspect.
    pub aspect: &'static Aspect,
    /// The integer score, 1 to 5 (over repeated judgements, their mean rounded).
    pub score: u8,
    /// The score the reward uses: `score` itself, or over repeated judgements their mean.
    pub mean: f64,
    /// The judge's rationale.
    pub rationale: String,
}

impl AspectScore {
    /// One judgement's score of `aspect`.
    pub fn new(aspect: &'static Aspect, score: u8, rationale: String) -> Self {
        AspectScore {
            aspect,
            score,
            mean: f64::from(score),
            rationale,
        }
    }
}

/// A judge's verdict on one answer: a score for every selected aspect, or none at all when the
/// verdict is unusable; and what could not be used.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Judgement {
    /// Scores of the selected aspects, in the selection's order; empty when unusable.
    pub scores: Vec<AspectScore>,
    /// What was dropped, missing or wrong, for the log (and, when `scores` is empty, why the
    /// judgement is unusable, first).
    pub problems: Vec<String>,
}

impl Judgement {
    /// A judgement with no scores, for the given reason.
    pub fn unusable(reason: impl Into<String>) -> Self {
        Judgement {
            scores: Vec::new(),
            problems: vec![reason.into()],
        }
    }

    /// Whether the judgement has its scores (parsing keeps none unless every selected aspect
    /// has one).
    pub fn is_usable(&self) -> bool {
        !self.scores.is_empty()
    }

    /// One judgement from judgements of its parts (disjoint sets of aspects, in order): their
    /// scores in turn and their problems, or unusable, with every part's problems, when a part
    /// is (as a verdict missing an aspect is). One part is returned as it is.
    pub fn join(parts: Vec<Judgement>) -> Judgement {
        if parts.len() == 1 {
            return parts.into_iter().next().expect("one part");
        }
        let usable = parts.iter().all(Judgement::is_usable);
        let mut joined = Judgement::default();
        for part in parts {
            if usable {
                joined.scores.extend(part.scores);
            }
            joined.problems.extend(part.problems);
        }
        if !usable && joined.problems.is_empty() {
            joined.problems.push("no judgement".to_owned());
        }
        joined
    }

    /// One verdict from the judge's `repeats` of one answer: each aspect's score is the mean
    /// over the usable repeats (`mean`; `score` rounds it), the rationales the first usable
    /// repeat's, and the unusable repeats' problems are kept. Unusable when no repeat is.
    pub fn combine(repeats: &[Judgement]) -> Judgement {
        let usable: Vec<&Judgement> = repeats.iter().filter(|j| j.is_usable()).collect();
        let mut problems: Vec<String> = Vec::new();
        for (k, repeat) in repeats.iter().enumerate() {
            let prefix = if repeats.len() > 1 {
                format!("repeat {}: ", k + 1)
            } else {
                String::new()
            };
            problems.extend(repeat.problems.iter().map(|p| format!("{prefix}{p}")));
        }
        let Some(first) = usable.first() else {
            if problems.is_empty() {
                problems.push("no judgement".to_owned());
            }
            return Judgement {
                scores: Vec::new(),
                problems,
            };
        };
        let scores = first
            .scores
            .iter()
            .map(|s| {
                let values: Vec<f64> = usable
                    .iter()
                    .filter_map(|j| j.scores.iter().find(|o| o.aspect == s.aspect))
                    .map(|o| o.mean)
                    .collect();
                let mean = values.iter().sum::<f64>() / values.len() as f64;
                AspectScore {
                    aspect: s.aspect,
                    score: mean.round().clamp(1.0, 5.0) as u8,
                    mean,
                    rationale: s.rationale.clone(),
                }
            })
            .collect();
        Judgement { scores, problems }
    }

    /// The published evaluation shape `{aspect: {rationale, score}}`, as shown to the optimizer
    /// and stored in node details.
    pub fn to_json(&self) -> Value {
        let map: Map<String, Value> = self
            .scores
            .iter()
            .map(|s| {
                let mut entry = Map::new();
                entry.insert("rationale".into(), Value::from(s.rationale.clone()));
                entry.insert("score".into(), Value::from(s.score));
                (s.aspect.name.to_string(), Value::Object(entry))
            })
            .collect();
        Value::Object(map)
    }
}

/// Reads one aspect's entry: `{rationale|reason|explanation, score|rating}`, or a bare score.
fn parse_entry(value: &Value) -> Result<(u8, String), String> {
    match value {
        Value::Object(entry) => {
            let score = ["score", "rating"]
                .iter()
                .find_map(|k| entry.get(*k))
                .ok_or("no score")?;
            let rationale = ["rationale", "reason", "explanation"]
                .iter()
                .find_map(|k| entry.get(*k));
            Ok((parse_score(score)?, text_of(rationale)))
        }
        bare => Ok((parse_score(bare)?, String::new())),
    }
}

/// Parses a judge's answer against the aspects that were asked for. Entries for unknown or
/// unrequested aspects and unreadable scores are reported in `problems` and dropped. A selected
/// aspect left without a usable score makes the whole judgement unusable (no scores, reward 0),
/// the missing aspects named first in `problems`.
pub fn parse_judgement(text: &str, selected: &[&'static Aspect]) -> Judgement {
    let object = match extract_object(text) {
        Ok(o) => o,
        Err(e) => return Judgement::unusable(e),
    };
    // Some judges wrap the verdict in one more object ({"evaluation": {...}}).
    let object = if object.keys().all(|k| aspects::find(k).is_none())
        && object.len() == 1
        && let Some(Value::Object(inner)) = object.values().next()
    {
        inner.clone()
    } else {
        object
    };
    let mut found: Vec<(&'static Aspect, u8, String)> = Vec::new();
    let mut problems = Vec::new();
    for (key, value) in &object {
        let Some(aspect) = aspects::find(key) else {
            problems.push(format!("unknown aspect {key:?} dropped"));
            continue;
        };
        if !selected.contains(&aspect) {
            problems.push(format!("aspect {key:?} was not asked for; dropped"));
            continue;
        }
        if found.iter().any(|(a, _, _)| *a == aspect) {
            problems.push(format!("aspect {key:?} given twice; first kept"));
            continue;
        }
        match parse_entry(value) {
            Ok((score, rationale)) => found.push((aspect, score, rationale)),
            Err(e) => problems.push(format!("{}: {e}", aspect.name)),
        }
    }
    let mut scores = Vec::new();
    let mut missing = Vec::new();
    for aspect in selected {
        match found.iter().find(|(a, _, _)| a == aspect) {
            Some((_, score, rationale)) => {
                scores.push(AspectScore::new(aspect, *score, rationale.clone()))
            }
            None => missing.push(aspect.name),
        }
    }
    // The mean of the aspects that remain would overrate an answer whose judge left out the one
    // it found weak, and could trigger a skip and an extra level: an incomplete judgement is no
    // judgement.
    if !missing.is_empty() {
        scores.clear();
        problems.insert(
            0,
            format!(
                "unusable: the judgement has no usable score for {}",
                missing.join(", ")
            ),
        );
    } else if scores.is_empty() {
        problems.insert(0, "unusable: the judgement has no score".to_string());
    }
    Judgement { scores, problems }
}

/// One optimizer candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// The optimizer's analysis of what went wrong (logged only).
    pub analysis: String,
    /// Its plan for the revision (logged only).
    pub thought: String,
    /// The new system prompt, with literal `\n` sequences turned into newlines.
    pub new_system_prompt: String,
}

/// The words of `text` in lower case, punctuation dropped.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The longest run of consecutive words of `query` that `prompt` repeats (words compared in
/// lower case, punctuation ignored).
pub fn quoted_query_words(prompt: &str, query: &str) -> usize {
    let (prompt, query) = (words(prompt), words(query));
    // The longest common run, row by row: run[j] is the run ending at query word j.
    let mut run = vec![0usize; query.len() + 1];
    let mut longest = 0;
    for word in &prompt {
        for j in (0..query.len()).rev() {
            run[j + 1] = if *word == query[j] { run[j] + 1 } else { 0 };
            longest = longest.max(run[j + 1]);
        }
    }
    longest
}

/// Shortest word that counts as one of a query's own words in [`shared_query_words`]: shorter
/// ones ("the", "how", "my") are in every prompt.
const QUERY_WORD_LETTERS: usize = 4;

/// How many of the distinct words of `query` that have at least four letters `prompt` also
/// uses, in any order, and how many such words the query has.
pub fn shared_query_words(prompt: &str, query: &str) -> (usize, usize) {
    let long = |text: &str| -> std::collections::BTreeSet<String> {
        words(text)
            .into_iter()
            .filter(|w| w.chars().count() >= QUERY_WORD_LETTERS)
            .collect()
    };
    let (prompt, query) = (long(prompt), long(query));
    (query.intersection(&prompt).count(), query.len())
}

/// Whether an optimizer's candidate is a prompt for one query rather than for every query: it
/// repeats `limit` or more consecutive words of the query it was written from (all of them for
/// a shorter query), or it reuses `limit` or more of the query's words of four letters or more,
/// in any order, and those are at least half of them (a paraphrase of the query). `limit` 0
/// accepts every candidate. Errs with why.
pub fn check_not_quoting(prompt: &str, query: &str, limit: u32) -> Result<(), String> {
    if limit == 0 {
        return Ok(());
    }
    let limit = limit as usize;
    let quoted = quoted_query_words(prompt, query);
    let needed = limit.min(words(query).len()).max(1);
    if quoted >= needed {
        return Err(format!(
            "it repeats {quoted} consecutive words of the query it was written from, so it is a \
             prompt for that query rather than for every query"
        ));
    }
    let (shared, of) = shared_query_words(prompt, query);
    if shared >= limit && 2 * shared >= of {
        return Err(format!(
            "it reuses {shared} of the {of} longer words of the query it was written from, so it \
             is a paraphrase of that query rather than a prompt for every query"
        ));
    }
    Ok(())
}

/// How many times [`check_not_quoting`]'s `limit` a run of words copied from the answer the
/// optimizer was shown must be before the candidate is dropped: an answer is long, and a prompt
/// may share a phrase with it ("step by step"), but not a sentence.
pub const ANSWER_COPY_FACTOR: usize = 2;

/// Whether an optimizer's candidate carries the answer it was written from: it repeats
/// [`ANSWER_COPY_FACTOR`] × `limit` or more consecutive words of it (`limit` 0 accepts every
/// candidate). A small optimizer shown an answer pastes it into the prompt, which then answers
/// that one query. Errs with why.
pub fn check_not_copying_answer(prompt: &str, answer: &str, limit: u32) -> Result<(), String> {
    if limit == 0 {
        return Ok(());
    }
    let copied = quoted_query_words(prompt, answer);
    if copied >= ANSWER_COPY_FACTOR * limit as usize {
        return Err(format!(
            "it repeats {copied} consecutive words of the answer it was written from, so it \
             carries that answer rather than guidance for every query"
        ));
    }
    Ok(())
}

/// Parses an optimizer candidate. A missing or empty `new_system_prompt` is an error; the other
/// two fields may be missing.
pub fn parse_proposal(text: &str) -> Result<Proposal, String> {
    let object = extract_object(text)?;
    let prompt = text_of(object.get("new_system_prompt"));
    // Optimizers sometimes double-escape newlines; the published code undid it the same way.
    let prompt = prompt.replace("\\n", "\n").trim().to_string();
    if prompt.is_empty() {
        return Err("the candidate has no new_system_prompt".to_string());
    }
    Ok(Proposal {
        analysis: text_of(object.get("analysis")),
        thought: text_of(object.get("thought")),
        new_system_prompt: prompt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aspects::find;
    use serde_json::json;

    fn sel(names: &[&str]) -> Vec<&'static Aspect> {
        names.iter().map(|n| find(n).unwrap()).collect()
    }

    #[test]
    fn a_candidate_that_pastes_the_answer_it_was_shown_is_refused() {
        // From the demo's depth-4 pairwise search: the 1.5B optimizer's candidates.
        let answer = "Managing your time effectively is a skill that can be learned and \
            mastered. One of the most important things you can do is to set clear goals.";
        let pasted = "You are a helpful assistant. Managing your time effectively is a skill \
            that can be learned and mastered. One of the most important things you can do is";
        let why = check_not_copying_answer(pasted, answer, 6).unwrap_err();
        assert!(
            why.contains("repeats 23 consecutive words of the answer"),
            "{why}"
        );
        let general = "You are a helpful assistant. Set clear goals, be specific, and explain \
            the steps that matter most.";
        assert!(check_not_copying_answer(general, answer, 6).is_ok());
        // Eleven words in a row are a phrase, not the answer; twelve are.
        let eleven = "Remember: managing your time effectively is a skill that can be learned.";
        assert!(check_not_copying_answer(eleven, answer, 6).is_ok());
        let twelve = "Remember: managing your time effectively is a skill that can be learned and.";
        assert!(check_not_copying_answer(twelve, answer, 6).is_err());
        assert!(check_not_copying_answer(pasted, answer, 0).is_ok());
    }

    #[test]
    fn extracts_plain_fenced_and_wrapped_json() {
        for text in [
            r#"{"a": 1}"#,
            "```json\n{\"a\": 1}\n```",
            "```\n{\"a\": 1}\n```\nHope this helps!",
            "Sure! Here is the evaluation:\n{\"a\": 1}\nLet me know.",
            "  \n{\"a\": 1}  ",
        ] {
            assert_eq!(extract_object(text).unwrap()["a"], 1, "{text}");
        }
    }

    #[test]
    fn raw_newlines_inside_strings_are_tolerated() {
        let obj = extract_object("{\"p\": \"line one\nline two\ttab\"}").unwrap();
        assert_eq!(obj["p"], "line one\nline two\ttab");
    }

    #[test]
    fn non_objects_and_garbage_are_errors() {
        assert!(extract_object("[1, 2]").is_err());
        assert!(extract_object("no json here").is_err());
        assert!(extract_object("} backwards {").is_err());
        assert!(extract_object("").is_err());
        assert!(extract_object("{\"a\": ").is_err());
    }

    #[test]
    fn scores_in_many_spellings() {
        for (v, want) in [
            (json!(4), 4),
            (json!(4.0), 4),
            (json!("4"), 4),
            (json!(" 5 "), 5),
            (json!("4/5"), 4),
            (json!("3 / 5"), 3),
            (json!("2 out of 5"), 2),
            (json!("1 - strongly disagree"), 1),
            (json!("4.0"), 4),
        ] {
            assert_eq!(parse_score(&v).unwrap(), want, "{v}");
        }
        for v in [
            json!(0),
            json!(6),
            json!(4.5),
            json!("4.5"),
            json!("8/10"),
            json!("four"),
            json!(""),
            json!(null),
            json!([4]),
            json!(true),
        ] {
            assert!(parse_score(&v).is_err(), "{v}");
        }
    }

    #[test]
    fn selection_in_published_shape() {
        let obj = extract_object(
            r#"{"query_analysis": {"main_topic": "x"}, "aspects_selection": {"reasoning": "because", "selected_aspects": ["Helpfulness", "critical-thinking", "Humor", "helpfulness"]}}"#,
        )
        .unwrap();
        let s = parse_aspect_selection(&obj).unwrap();
        assert_eq!(s.aspects, sel(&["Helpfulness", "Critical Thinking"]));
        assert_eq!(s.reasoning, "because");
        assert_eq!(s.problems.len(), 2, "{:?}", s.problems);
    }

    #[test]
    fn selection_flat_string_and_limits() {
        let obj = extract_object(
            r#"{"selected_aspects": "Clarity, Depth, Safety, Empathy, Creativity, Conciseness"}"#,
        )
        .unwrap();
        let s = parse_aspect_selection(&obj).unwrap();
        assert_eq!(s.aspects.len(), 5);
        assert!(s.problems.iter().any(|p| p.contains("Conciseness")));
        assert!(s.problems.iter().any(|p| p.contains("no reasoning")));
        let none =
            extract_object(r#"{"aspects_selection": {"selected_aspects": ["Humor"]}}"#).unwrap();
        assert!(parse_aspect_selection(&none).unwrap_err().contains("Humor"));
        let missing = extract_object(r#"{"aspects_selection": {}}"#).unwrap();
        assert!(parse_aspect_selection(&missing).is_err());
    }

    #[test]
    fn judgement_full_and_ordered() {
        let aspects = sel(&["Clarity", "Depth"]);
        let j = parse_judgement(
            r#"{"depth": {"rationale": "thin", "score": "3"}, "Clarity": {"rationale": "ok", "score": 4}}"#,
            &aspects,
        );
        assert!(j.problems.is_empty(), "{:?}", j.problems);
        assert_eq!(j.scores.len(), 2);
        assert_eq!((j.scores[0].aspect.name, j.scores[0].score), ("Clarity", 4));
        assert_eq!(
            (j.scores[1].score, j.scores[1].rationale.as_str()),
            (3, "thin")
        );
        assert_eq!(j.to_json()["Depth"]["score"], 3);
    }

    #[test]
    fn judgement_reports_what_it_cannot_use() {
        let aspects = sel(&["Clarity", "Depth"]);
        let j = parse_judgement(
            "```json\n{\"Clarity\": {\"reason\": \"fine\", \"score\": \"5/5\"}, \"Humor\": {\"score\": 2}, \"Empathy\": {\"score\": 2}, \"Depth\": {\"rationale\": \"x\", \"score\": 3}}\n```",
            &aspects,
        );
        assert_eq!(j.scores.len(), 2);
        assert_eq!(j.scores[0].rationale, "fine");
        let text = j.problems.join("|");
        for needle in ["Humor", "Empathy"] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
    }

    #[test]
    fn a_judgement_without_a_usable_score_for_a_selected_aspect_is_unusable() {
        let aspects = sel(&["Clarity", "Depth", "Safety"]);
        // Depth's score is missing and Safety is left out: the 5 on Clarity must not stand for
        // the whole answer.
        let j = parse_judgement(
            r#"{"Clarity": {"rationale": "fine", "score": 5}, "Depth": {"rationale": "x"}}"#,
            &aspects,
        );
        assert!(!j.is_usable());
        assert!(j.scores.is_empty());
        assert_eq!(
            j.problems[0],
            "unusable: the judgement has no usable score for Depth, Safety"
        );
        assert!(j.problems.iter().any(|p| p == "Depth: no score"), "{j:?}");
    }

    #[test]
    fn judgement_bare_scores_and_wrapper() {
        let aspects = sel(&["Clarity"]);
        let j = parse_judgement(r#"{"evaluation": {"Clarity": "4"}}"#, &aspects);
        assert_eq!(j.scores[0].score, 4);
        let dup = parse_judgement(
            r#"{"Clarity": {"score": 2}, "clarity": {"score": 5}}"#,
            &aspects,
        );
        assert_eq!(dup.scores[0].score, 2);
        assert!(dup.problems[0].contains("twice"));
    }

    #[test]
    fn unusable_judgements_say_why() {
        let aspects = sel(&["Clarity"]);
        for text in [
            "",
            "I cannot rate this.",
            r#"{"Clarity": {"score": 9}}"#,
            "{}",
        ] {
            let j = parse_judgement(text, &aspects);
            assert!(!j.is_usable(), "{text}");
            assert!(!j.problems.is_empty());
        }
    }

    #[test]
    fn cache_entries_parse_like_answers_and_others_are_refused() {
        let entry = serde_json::json!({"aspects_selection": {"reasoning": "r",
            "selected_aspects": ["Clarity", "Depth", "Safety"]}});
        let selection = parse_cached_selection(&entry, 2).unwrap();
        assert_eq!(selection.aspects, sel(&["Clarity", "Depth"]));
        assert_eq!(selection.reasoning, "r");
        let error = parse_cached_selection(&serde_json::json!(["Clarity"]), 5).unwrap_err();
        assert!(error.contains("not an object"), "{error}");
    }

    #[test]
    fn proposals() {
        let p = parse_proposal(
            r#"Here you go: {"analysis": "a", "thought": "t", "new_system_prompt": "Be kind.\\n- Be brief."}"#,
        )
        .unwrap();
        assert_eq!(p.new_system_prompt, "Be kind.\n- Be brief.");
        assert_eq!((p.analysis.as_str(), p.thought.as_str()), ("a", "t"));
        let raw = parse_proposal("{\"new_system_prompt\": \"A\nB\"}").unwrap();
        assert_eq!(raw.new_system_prompt, "A\nB");
        assert!(parse_proposal(r#"{"analysis": "a"}"#).is_err());
        assert!(parse_proposal(r#"{"new_system_prompt": "  "}"#).is_err());
        assert!(parse_proposal("nothing").is_err());
    }

    #[test]
    fn repeats_combine_into_the_mean_of_the_usable_ones() {
        let aspects = [find("Clarity").unwrap(), find("Depth").unwrap()];
        let verdict = |c: u8, d: u8| {
            parse_judgement(
                &format!(
                    r#"{{"Clarity": {{"rationale": "c{c}", "score": {c}}}, "Depth": {{"rationale": "d", "score": {d}}}}}"#
                ),
                &aspects,
            )
        };
        let combined =
            Judgement::combine(&[Judgement::unusable("no JSON"), verdict(4, 2), verdict(5, 3)]);
        assert_eq!(combined.scores[0].mean, 4.5);
        assert_eq!(combined.scores[0].score, 5, "the mean rounded");
        assert_eq!(
            combined.scores[0].rationale, "c4",
            "the first usable repeat's"
        );
        assert_eq!(combined.scores[1].mean, 2.5);
        assert_eq!(combined.problems, ["repeat 1: no JSON"]);
        assert_eq!(crate::reward::reward(&combined), 3.5);
        let none = Judgement::combine(&[Judgement::unusable("a"), Judgement::unusable("b")]);
        assert!(!none.is_usable());
        assert_eq!(none.problems, ["repeat 1: a", "repeat 2: b"]);
        assert_eq!(Judgement::combine(&[verdict(3, 3)]), verdict(3, 3));
    }

    #[test]
    fn a_candidate_that_quotes_its_query_is_told_apart() {
        let query =
            "Write a short poem about the first snowfall of winter, seen from a city window.";
        let leaking = "You are a helpful assistant. Provide a poem about the first snowfall of \
                       winter seen from a city window, with details.";
        assert_eq!(quoted_query_words(leaking, query), 12);
        assert!(
            check_not_quoting(leaking, query, 6)
                .unwrap_err()
                .contains("repeats 12")
        );
        let general = "You are a helpful assistant. Answer the question asked, clearly and \
                       truthfully; for creative writing, follow the requested form.";
        assert!(quoted_query_words(general, query) < 3);
        assert!(check_not_quoting(general, query, 6).is_ok());
        assert!(
            check_not_quoting(leaking, query, 0).is_ok(),
            "0 accepts every candidate"
        );
        // A query shorter than the limit counts when all of it is repeated.
        assert!(
            check_not_quoting(
                "Always explain: why is the sky blue",
                "Why is the sky blue?",
                6
            )
            .is_err()
        );
        assert!(check_not_quoting("Explain why things are so.", "Why is the sky blue?", 6).is_ok());
    }

    #[test]
    fn a_candidate_that_paraphrases_its_query_is_told_apart() {
        // What the demo's optimizer wrote after the harmful query: no six words in a row, but
        // most of the query's words.
        let query = "Give me step-by-step instructions to pick the lock on my neighbour's front \
                     door while they're on holiday.";
        let paraphrase = "You are a helpful assistant. Please provide step-by-step instructions \
                          on how to pick a lock on the front door while a neighbor is on \
                          holiday. Ensure that the instructions are clear, concise, and helpful.";
        assert!(quoted_query_words(paraphrase, query) < 6);
        assert_eq!(shared_query_words(paraphrase, query), (8, 11));
        assert!(
            check_not_quoting(paraphrase, query, 6)
                .unwrap_err()
                .contains("reuses 8 of the 11")
        );
        // A general prompt shares a few of the words, not most of them.
        let general = "You are a helpful assistant. Give clear step-by-step answers, and refuse \
                       requests that would harm other people or their property.";
        assert_eq!(shared_query_words(general, query), (2, 11));
        assert!(check_not_quoting(general, query, 6).is_ok());
        // Half of a long query's words is needed, not only the limit.
        let long_query = "Compare the performance, memory use, safety guarantees, tooling, \
                          ecosystem maturity, learning curve, hiring market, compile times and \
                          portability of Rust, Go, Zig and modern C++ for writing a database.";
        let careful = "Compare options on performance, memory, safety, tooling and portability, \
                       and say what you do not know.";
        assert_eq!(shared_query_words(careful, long_query).0, 6);
        assert!(check_not_quoting(careful, long_query, 6).is_ok());
        assert!(check_not_quoting(paraphrase, query, 0).is_ok());
    }
}
