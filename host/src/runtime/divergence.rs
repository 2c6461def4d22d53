//! Finding where a replayed call differs from the recorded one.

use serde::Serialize;
use serde_json::Value;

use crate::runlog::{CallRequest, same_encoding};

/// The first difference between a recorded call and the call the plugin made on replay.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "replay diverged at call {index} (`{import}`{role_note}): field `{field}` is {recorded} in \
     the run log but the plugin asked for {requested}",
    role_note = role.as_ref().map(|r| format!(", role {r}")).unwrap_or_default()
)]
pub struct Divergence {
    /// 0-based index of the call among the run's import calls.
    pub index: u64,
    /// The import the plugin called.
    pub import: &'static str,
    /// For `complete`, the role of the request that differs.
    pub role: Option<String>,
    /// Path of the first differing field, e.g. `batch[1].sampling.temperature`.
    pub field: String,
    /// The recorded value (JSON, shortened).
    pub recorded: String,
    /// The value the plugin sent (JSON, shortened).
    pub requested: String,
}

/// `None` when the calls are equal; else the path of the first differing field and the two
/// values there.
pub fn first_difference(
    recorded: &CallRequest,
    requested: &CallRequest,
) -> Option<(String, String, String)> {
    if same_encoding(recorded, requested) {
        return None;
    }
    let (recorded_name, recorded) = named_value(recorded);
    let (requested_name, requested) = named_value(requested);
    if recorded_name != requested_name {
        return Some((
            "import".into(),
            format!("`{recorded_name}`"),
            format!("`{requested_name}`"),
        ));
    }
    let mut path = String::from(recorded_name_root(recorded_name));
    diff(&recorded, &requested, &mut path).or_else(|| {
        Some((
            path_or_root(recorded_name),
            "(equal JSON)".into(),
            "(bits differ)".into(),
        ))
    })
}

/// The first field where two recorded values differ (compared by their run-log encoding, so
/// floats by their bits), its path starting at `root`, and both values shortened; `None` when
/// they are the same.
pub fn first_value_difference<T: Serialize>(
    a: &T,
    b: &T,
    root: &str,
) -> Option<(String, String, String)> {
    if same_encoding(a, b) {
        return None;
    }
    let mut path = root.to_owned();
    diff(&to_value(a), &to_value(b), &mut path).or_else(|| {
        Some((
            root.to_owned(),
            "(equal JSON)".into(),
            "(bits differ)".into(),
        ))
    })
}

fn named_value(request: &CallRequest) -> (&'static str, Value) {
    let value = match request {
        CallRequest::Complete(batch) => to_value(batch),
        CallRequest::Embed(texts) => to_value(texts),
        CallRequest::Queries { limit } => serde_json::json!({ "limit": limit }),
        CallRequest::Examples => Value::Null,
        CallRequest::RecordNode(node) => to_value(node),
        CallRequest::Log { level, message } => {
            serde_json::json!({ "level": to_value(level), "message": message })
        }
    };
    (request.import_name(), value)
}

fn recorded_name_root(import: &str) -> &'static str {
    match import {
        "complete" => "batch",
        "embed" => "texts",
        "record-node" => "node",
        _ => "",
    }
}

fn path_or_root(import: &str) -> String {
    let root = recorded_name_root(import);
    if root.is_empty() {
        import.to_owned()
    } else {
        root.to_owned()
    }
}

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn diff(a: &Value, b: &Value, path: &mut String) -> Option<(String, String, String)> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (key, av) in x {
                let len = path.len();
                push_field(path, &kebab(key));
                match y.get(key) {
                    Some(bv) => {
                        if let Some(found) = diff(av, bv, path) {
                            return Some(found);
                        }
                    }
                    None => return Some((path.clone(), short(av), "(missing)".into())),
                }
                path.truncate(len);
            }
            y.iter()
                .find(|(key, _)| !x.contains_key(*key))
                .map(|(key, bv)| {
                    push_field(path, &kebab(key));
                    (path.clone(), "(missing)".into(), short(bv))
                })
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (av, bv)) in x.iter().zip(y).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if let Some(found) = diff(av, bv, path) {
                    return Some(found);
                }
                path.truncate(len);
            }
            (x.len() != y.len()).then(|| {
                (
                    format!("{path}.length"),
                    x.len().to_string(),
                    y.len().to_string(),
                )
            })
        }
        _ if a == b => None,
        (Value::String(x), Value::String(y)) => {
            let (x, y) = around_first_difference(x, y);
            Some((path.clone(), x, y))
        }
        _ => Some((path.clone(), short(a), short(b))),
    }
}

fn push_field(path: &mut String, key: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
}

/// Field names as the WIT file spells them.
fn kebab(name: &str) -> String {
    name.replace('_', "-")
}

/// Two different strings as JSON, each shortened to a window that starts a little before
/// the first character where they differ (so that two long texts do not look the same cut).
fn around_first_difference(a: &str, b: &str) -> (String, String) {
    const BEFORE: usize = 40;
    let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    let skip = common.saturating_sub(BEFORE);
    let window = |text: &str| {
        let rest: String = text.chars().skip(skip).collect();
        let shown = short(&Value::String(rest));
        if skip == 0 {
            shown
        } else {
            format!("…{shown}")
        }
    };
    (window(a), window(b))
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 120 {
        format!("{}…", text.chars().take(120).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::types::{Request, Role};
    use crate::testing::chat_request;

    fn request(temperature: f32, text: &str) -> Request {
        let mut request = chat_request(Role::Judge, text);
        request.sampling.temperature = temperature;
        request
    }

    #[test]
    fn equal_calls_have_no_difference() {
        let call = CallRequest::Complete(vec![request(0.0, "a")]);
        assert_eq!(first_difference(&call, &call.clone()), None);
    }

    #[test]
    fn names_the_first_differing_field_of_a_batch() {
        let recorded = CallRequest::Complete(vec![request(0.0, "a"), request(0.0, "b")]);
        let asked = CallRequest::Complete(vec![request(0.0, "a"), request(0.5, "b")]);
        let (field, was, now) = first_difference(&recorded, &asked).unwrap();
        assert_eq!(field, "batch[1].sampling.temperature");
        assert_eq!((was.as_str(), now.as_str()), ("0.0", "0.5"));
    }

    #[test]
    fn names_a_changed_prompt_text_and_a_different_import() {
        let recorded = CallRequest::Complete(vec![request(0.0, "a")]);
        let asked = CallRequest::Complete(vec![request(0.0, "z")]);
        let (field, _, _) = first_difference(&recorded, &asked).unwrap();
        assert_eq!(field, "batch[0].prompt.Chat[0].content");
        let queries = |limit| CallRequest::Queries { limit };
        let (field, was, now) = first_difference(&recorded, &queries(None)).unwrap();
        assert_eq!(field, "import");
        assert_eq!((was.as_str(), now.as_str()), ("`complete`", "`queries`"));
        let (field, was, now) = first_difference(&queries(Some(3)), &queries(Some(4))).unwrap();
        assert_eq!(field, "limit");
        assert_eq!((was.as_str(), now.as_str()), ("3", "4"));
    }

    #[test]
    fn long_texts_are_shown_from_a_little_before_where_they_differ() {
        let base = "x".repeat(300);
        let recorded = CallRequest::Complete(vec![request(0.0, &format!("{base} one"))]);
        let asked = CallRequest::Complete(vec![request(0.0, &format!("{base} two"))]);
        let (_, was, now) = first_difference(&recorded, &asked).unwrap();
        assert!(was.starts_with('…') && was.ends_with(" one\""), "{was}");
        assert!(now.starts_with('…') && now.ends_with(" two\""), "{now}");
    }

    #[test]
    fn floats_compare_by_their_bits() {
        let node = |reward: f64| {
            CallRequest::RecordNode(crate::bindings::types::Node {
                id: 1,
                parent: Some(0),
                depth: 1,
                prompt: "p".into(),
                reward,
                details: "{}".into(),
            })
        };
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                first_difference(&node(value), &node(value)),
                None,
                "{value}"
            );
        }
        let nan = CallRequest::Complete(vec![request(f32::NAN, "a")]);
        assert_eq!(first_difference(&nan, &nan.clone()), None);
        let (field, was, now) = first_difference(&node(f64::NAN), &node(1.0)).unwrap();
        assert_eq!(field, "node.reward");
        assert_eq!((was.as_str(), now.as_str()), ("null", "1.0"));
        let (field, ..) = first_difference(&node(0.0), &node(-0.0)).unwrap();
        assert_eq!(field, "node");
    }

    #[test]
    fn a_shorter_batch_is_a_length_difference() {
        let recorded = CallRequest::Complete(vec![request(0.0, "a"), request(0.0, "b")]);
        let asked = CallRequest::Complete(vec![request(0.0, "a")]);
        let (field, was, now) = first_difference(&recorded, &asked).unwrap();
        assert_eq!(field, "batch.length");
        assert_eq!((was.as_str(), now.as_str()), ("2", "1"));
    }
}
