//! Conveniences over any [`Host`]: typed answers, node recording, logging.

use drpo::types::{
    Completion, Host, LlmError, LogLevel, Message, Node, Prompt, Request, Role, Sampling,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One choice of a completion parsed into `T`, or why it could not be (the text says what the
/// model wrote and what was wrong with it).
pub type Typed<T> = Result<T, String>;

/// Methods every [`Host`] gets for free.
pub trait HostExt: Host {
    /// Runs one batch and parses every choice into `T` (a serde type matching the request's
    /// JSON schema). JSON is found tolerantly: inside code fences or surrounding prose too.
    fn complete_typed<T: DeserializeOwned>(
        &mut self,
        batch: Vec<Request>,
    ) -> Vec<Result<Vec<Typed<T>>, LlmError>> {
        self.complete(batch)
            .into_iter()
            .map(|result| result.map(|c| c.choices.iter().map(|text| parse_typed(text)).collect()))
            .collect()
    }

    /// Runs a single request (a batch of one).
    fn complete_one(&mut self, request: Request) -> Result<Completion, LlmError> {
        self.complete(vec![request])
            .into_iter()
            .next()
            .unwrap_or_else(|| Err(LlmError::Unavailable("the host returned no answer".into())))
    }

    /// Reports a scored node of the search tree. `details` should be a JSON object; the viewer
    /// shows its `query`, `answer` and `aspects` (`[{name, score, rationale}]`) when present.
    fn record(
        &mut self,
        id: u32,
        parent: Option<u32>,
        depth: u32,
        prompt: &str,
        reward: f64,
        details: &Value,
    ) {
        self.record_node(Node {
            id,
            parent,
            depth,
            prompt: prompt.to_owned(),
            reward,
            details: details.to_string(),
        });
    }

    /// Logs at info level (shown on the terminal and in `log.txt`).
    fn info(&mut self, message: impl Into<String>) {
        self.log(LogLevel::Info, message.into());
    }

    /// Logs at warn level.
    fn warn(&mut self, message: impl Into<String>) {
        self.log(LogLevel::Warn, message.into());
    }

    /// Logs at debug level (`log.txt` only).
    fn debug(&mut self, message: impl Into<String>) {
        self.log(LogLevel::Debug, message.into());
    }
}

impl<H: Host + ?Sized> HostExt for H {}

/// A one-message chat request to `role`, greedy, one choice, seed 0 and at most `max_tokens`
/// generated tokens; change the fields for anything else.
pub fn chat_request(role: Role, user: impl Into<String>, max_tokens: u32) -> Request {
    Request {
        role,
        prompt: Prompt::Chat(vec![Message::new("user", user)]),
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens,
            n: 1,
            seed: 0,
            stop: Vec::new(),
        },
        json_schema: None,
    }
}

fn parse_typed<T: DeserializeOwned>(text: &str) -> Typed<T> {
    let value = match serde_json::from_str::<Value>(text.trim()) {
        Ok(value) => value,
        Err(_) => Value::Object(drpo::parse::extract_object(text)?),
    };
    serde_json::from_value(value).map_err(|e| format!("{e} in the answer {}", shorten(text)))
}

fn shorten(text: &str) -> String {
    const MAX: usize = 200;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{:?}…", &text[..end]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drpo::types::Usage;
    use serde::Deserialize;

    struct Echo(Vec<Request>);

    impl Host for Echo {
        fn complete(&mut self, batch: Vec<Request>) -> Vec<Result<Completion, LlmError>> {
            self.0.extend(batch.iter().cloned());
            batch
                .into_iter()
                .map(|r| match r.prompt {
                    Prompt::Chat(m) => Ok(Completion {
                        choices: vec![m[0].content.clone()],
                        usage: Usage::default(),
                    }),
                    Prompt::Raw(_) => Err(LlmError::Rejected("raw".into())),
                })
                .collect()
        }
        fn embed(&mut self, _: Vec<String>) -> Result<Vec<Vec<f32>>, LlmError> {
            Err(LlmError::Unavailable("none".into()))
        }
        fn record_node(&mut self, _: Node) {}
        fn log(&mut self, _: LogLevel, _: String) {}
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Answer {
        score: u8,
    }

    #[test]
    fn typed_answers_parse_plain_fenced_and_bad_json() {
        let mut host = Echo(Vec::new());
        let batch = [
            "{\"score\": 4}",
            "Sure:\n```json\n{\"score\": 2}\n```",
            "no json here",
            "{\"points\": 1}",
        ]
        .into_iter()
        .map(|text| chat_request(Role::Judge, text, 16))
        .collect();
        let answers = host.complete_typed::<Answer>(batch);
        assert_eq!(answers[0].as_ref().unwrap()[0], Ok(Answer { score: 4 }));
        assert_eq!(answers[1].as_ref().unwrap()[0], Ok(Answer { score: 2 }));
        assert!(answers[2].as_ref().unwrap()[0].is_err());
        let missing = answers[3].as_ref().unwrap()[0].as_ref().unwrap_err();
        assert!(
            missing.contains("score") && missing.contains("points"),
            "{missing}"
        );
    }

    #[test]
    fn errors_of_the_host_are_kept_per_request() {
        let mut host = Echo(Vec::new());
        let mut raw = chat_request(Role::Base, "x", 8);
        raw.prompt = Prompt::Raw("x".into());
        let answers = host.complete_typed::<Answer>(vec![raw]);
        assert_eq!(answers[0], Err(LlmError::Rejected("raw".into())));
        assert_eq!(host.0.len(), 1);
    }
}
