//! Builders shared by the host's unit tests.

use crate::bindings::types::{Message, Prompt, Request, Role, Sampling};

/// A request for `role` whose prompt is one user message `text`: greedy, at most 8 tokens,
/// one choice, seed 0, no schema.
pub(crate) fn chat_request(role: Role, text: &str) -> Request {
    Request {
        role,
        prompt: Prompt::Chat(vec![Message {
            role: "user".into(),
            content: text.into(),
        }]),
        sampling: Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 8,
            n: 1,
            seed: 0,
            stop: Vec::new(),
        },
        json_schema: None,
    }
}
