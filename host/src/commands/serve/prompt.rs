//! What the base model is asked for a client's chat: the published inference format that
//! `generate` uses (the optimized prompt, the retrieved examples, the query), built by the same
//! function ([`drpo::icl::inference_request`]), so that a single-turn request gets the answer
//! `generate` gives the same query.
//!
//! A client's system messages follow `--client-system`. Earlier turns of a conversation go
//! between the system message and the last user message, as they were sent.

use drpo::icl;
use drpo::types::{Example, Message, Prompt, Sampling};

use super::api::{ApiError, ChatRequest};
use crate::bindings::types;
use crate::cli::ClientSystem;

/// A request's sampling when it names none: as `generate`'s defaults.
const DEFAULT_TEMPERATURE: f64 = 0.0;
const DEFAULT_TOP_P: f64 = 0.95;

/// The aligned model's prompt: the system prompt and the examples it retrieves from.
pub struct Aligned {
    pub system_prompt: String,
    pub examples: Vec<Example>,
    /// The embeddings of the examples' queries, when examples are retrieved by similarity;
    /// `None`: every request gets the first k.
    pub example_vectors: Option<Vec<Vec<f32>>>,
    pub k: usize,
    /// One raw text instead of chat messages (`--raw`).
    pub raw: bool,
    pub client_system: ClientSystem,
}

impl Aligned {
    /// Whether a request's examples are retrieved by the similarity of its query.
    pub fn retrieves(&self) -> bool {
        self.example_vectors.is_some() && !self.examples.is_empty()
    }

    /// The examples for a query with embedding `query_vector`: the k nearest, or the first k
    /// when examples are not retrieved.
    pub fn examples_for(&self, query_vector: Option<&[f32]>) -> Vec<&Example> {
        match (query_vector, &self.example_vectors) {
            (Some(query), Some(vectors)) => icl::top_k(query, vectors, self.k)
                .into_iter()
                .map(|i| &self.examples[i])
                .collect(),
            _ => self.examples.iter().take(self.k).collect(),
        }
    }

    /// The base model's request for `chat`, with `examples`, answering at most `max_tokens`
    /// tokens when the client named no limit.
    pub fn request(
        &self,
        chat: &ChatRequest,
        examples: &[&Example],
        max_tokens: u32,
    ) -> Result<types::Request, ApiError> {
        let (last, earlier) = chat.messages.split_last().expect("checked: not empty");
        let client_system: Vec<&str> = earlier
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| m.content.as_str())
            .collect();
        let system_prompt = match (client_system.is_empty(), self.client_system) {
            (true, _) => self.system_prompt.clone(),
            (false, ClientSystem::Reject) => {
                return Err(ApiError::invalid(
                    "messages",
                    "this server answers under its own system prompt and refuses a client's \
                     system message (it runs with --client-system reject)",
                ));
            }
            (false, ClientSystem::Replace) => client_system.join("\n\n"),
            (false, ClientSystem::Append) => format!(
                "{}\n\n{}",
                self.system_prompt.trim(),
                client_system.join("\n\n")
            ),
        };
        let history: Vec<Message> = earlier
            .iter()
            .filter(|m| m.role != "system")
            .map(|m| Message::new(&m.role, m.content.clone()))
            .collect();
        if self.raw && !history.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "this server prompts its model with one raw text (--raw) and answers a single \
                 user message; this conversation has earlier turns",
            ));
        }
        let sampling = Sampling {
            temperature: chat.temperature.unwrap_or(DEFAULT_TEMPERATURE) as f32,
            top_p: chat.top_p.unwrap_or(DEFAULT_TOP_P) as f32,
            max_tokens: chat.max_tokens.unwrap_or(max_tokens),
            n: chat.n,
            seed: chat.seed.unwrap_or(0),
            stop: chat.stop.clone(),
        };
        let mut request =
            icl::inference_request(&system_prompt, examples, &last.content, self.raw, sampling);
        if let Prompt::Chat(messages) = &mut request.prompt {
            let query = messages.pop().expect("a system and a user message");
            messages.extend(history);
            messages.push(query);
        }
        Ok(to_contract(request))
    }
}

/// The DRPO library's request as the contract's (the run log's vocabulary).
fn to_contract(request: drpo::types::Request) -> types::Request {
    let message = |m: Message| types::Message {
        role: m.role,
        content: m.content,
    };
    let sampling = request.sampling;
    types::Request {
        role: types::Role::Base,
        prompt: match request.prompt {
            Prompt::Chat(messages) => {
                types::Prompt::Chat(messages.into_iter().map(message).collect())
            }
            Prompt::Raw(text) => types::Prompt::Raw(text),
        },
        sampling: types::Sampling {
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            max_tokens: sampling.max_tokens,
            n: sampling.n,
            seed: sampling.seed,
            stop: sampling.stop,
        },
        json_schema: request.json_schema,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::serve::api::ClientMessage;

    fn aligned(client_system: ClientSystem, raw: bool) -> Aligned {
        Aligned {
            system_prompt: "Answer with care.".into(),
            examples: vec![
                Example {
                    query: "What is rust?".into(),
                    answer: "A language.".into(),
                },
                Example {
                    query: "How do I boil an egg?".into(),
                    answer: "In water.".into(),
                },
            ],
            example_vectors: Some(vec![vec![1.0, 0.0], vec![0.0, 1.0]]),
            k: 1,
            raw,
            client_system,
        }
    }

    fn chat(messages: &[(&str, &str)]) -> ChatRequest {
        ChatRequest {
            messages: messages
                .iter()
                .map(|(role, content)| ClientMessage {
                    role: role.to_string(),
                    content: content.to_string(),
                })
                .collect(),
            max_tokens: None,
            temperature: None,
            top_p: None,
            n: 1,
            seed: None,
            stop: vec!["STOP".into()],
            stream: false,
            include_usage: false,
        }
    }

    fn messages(request: &types::Request) -> Vec<(String, String)> {
        match &request.prompt {
            types::Prompt::Chat(messages) => messages
                .iter()
                .map(|m| (m.role.clone(), m.content.clone()))
                .collect(),
            types::Prompt::Raw(text) => vec![("raw".into(), text.clone())],
        }
    }

    #[test]
    fn a_single_question_gets_the_published_inference_format_and_the_nearest_example() {
        let aligned = aligned(ClientSystem::Append, false);
        let picked = aligned.examples_for(Some(&[0.1, 0.9]));
        assert_eq!(picked[0].query, "How do I boil an egg?");
        let request = aligned
            .request(&chat(&[("user", "Eggs?")]), &picked, 100)
            .unwrap();
        let (system, user) = icl::inference_prompt_parts("Answer with care.", &picked, "Eggs?");
        assert_eq!(
            messages(&request),
            vec![("system".into(), system), ("user".into(), user)]
        );
        assert_eq!(request.sampling.max_tokens, 100);
        assert_eq!(request.sampling.temperature, 0.0);
        let mut stop: Vec<String> = icl::STOP.iter().map(|s| s.to_string()).collect();
        stop.push("STOP".into());
        assert_eq!(request.sampling.stop, stop);
    }

    #[test]
    fn a_client_system_message_is_appended_replaces_or_is_refused_as_configured() {
        let conversation = chat(&[("system", "Speak French."), ("user", "Hi")]);
        let system_of = |policy| {
            let aligned = aligned(policy, false);
            aligned
                .request(&conversation, &[], 10)
                .map(|r| messages(&r)[0].1.clone())
        };
        assert_eq!(
            system_of(ClientSystem::Append).unwrap(),
            "Answer with care.\n\nSpeak French."
        );
        assert_eq!(system_of(ClientSystem::Replace).unwrap(), "Speak French.");
        let refused = system_of(ClientSystem::Reject).unwrap_err();
        assert!(refused.message.contains("--client-system reject"));
    }

    #[test]
    fn earlier_turns_go_between_the_system_message_and_the_query() {
        let conversation = chat(&[("user", "One?"), ("assistant", "Two."), ("user", "Three?")]);
        let request = aligned(ClientSystem::Append, false)
            .request(&conversation, &[], 10)
            .unwrap();
        let roles: Vec<String> = messages(&request).into_iter().map(|(r, _)| r).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(messages(&request)[3].1.contains("Three?"));
        let raw = aligned(ClientSystem::Append, true).request(&conversation, &[], 10);
        assert_eq!(raw.unwrap_err().param.as_deref(), Some("messages"));
        let single = aligned(ClientSystem::Append, true)
            .request(&chat(&[("user", "Q?")]), &[], 10)
            .unwrap();
        assert_eq!(messages(&single)[0].0, "raw");
    }
}
