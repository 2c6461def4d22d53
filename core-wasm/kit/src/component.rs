//! The component side: the host's imports as a [`Host`] value, and the conversions between the
//! generated bindings and the DRPO library's plain types (field for field, as the WIT file
//! spells them).

use crate::bindings::drpo::strategy::host as imports;
use crate::bindings::drpo::strategy::types as wit;
use crate::{RoleEstimate, Strategy, StrategyHost, StrategyOptions};
use drpo::types as lib;

/// The host's imports, as seen from inside a running component. It implements [`lib::Host`],
/// so a search written generic over `H: Host` runs here and in native tests alike.
pub struct ComponentHost {
    _private: (),
}

impl StrategyHost for ComponentHost {
    fn queries(&mut self, limit: Option<u32>) -> Vec<lib::Query> {
        imports::queries(limit).into_iter().map(query).collect()
    }

    fn examples(&mut self) -> Vec<lib::Example> {
        imports::examples().into_iter().map(example).collect()
    }
}

impl lib::Host for ComponentHost {
    fn complete(
        &mut self,
        batch: Vec<lib::Request>,
    ) -> Vec<Result<lib::Completion, lib::LlmError>> {
        let batch: Vec<wit::Request> = batch.into_iter().map(request).collect();
        imports::complete(&batch)
            .into_iter()
            .map(|r| r.map(completion).map_err(llm_error))
            .collect()
    }

    fn embed(&mut self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, lib::LlmError> {
        imports::embed(&texts).map_err(llm_error)
    }

    fn record_node(&mut self, node: lib::Node) {
        imports::record_node(&wit::Node {
            id: node.id,
            parent: node.parent,
            depth: node.depth,
            prompt: node.prompt,
            reward: node.reward,
            details: node.details,
        });
    }

    fn log(&mut self, level: lib::LogLevel, message: String) {
        let level = match level {
            lib::LogLevel::Trace => wit::LogLevel::Trace,
            lib::LogLevel::Debug => wit::LogLevel::Debug,
            lib::LogLevel::Info => wit::LogLevel::Info,
            lib::LogLevel::Warn => wit::LogLevel::Warn,
            lib::LogLevel::Error => wit::LogLevel::Error,
        };
        imports::log(level, &message);
    }
}

/// The `describe` export of `S`; `version` is the plugin crate's.
pub fn describe<S: Strategy>(version: &str) -> wit::Info {
    wit::Info {
        name: S::NAME.to_owned(),
        version: version.to_owned(),
        description: S::DESCRIPTION.to_owned(),
        options_schema: S::Options::schema().to_string(),
    }
}

/// The `run` export of `S`.
pub fn run<S: Strategy>(options: &str) -> Result<wit::Outcome, String> {
    let options = S::Options::parse(options)?;
    let outcome = S::run(&mut ComponentHost { _private: () }, options)?;
    Ok(wit::Outcome {
        best_prompt: outcome.best_prompt,
        best_score: outcome.best_score,
        best_path: outcome.best_path,
        details: outcome.details,
    })
}

/// The `estimate` export of `S`: its [`Strategy::estimate`] and [`Strategy::levels`].
pub fn estimate<S: Strategy>(options: &str) -> Result<wit::Plan, String> {
    let options = S::Options::parse(options)?;
    let roles = S::estimate(&options)?
        .into_iter()
        .map(|e: RoleEstimate| wit::RoleEstimate {
            role: role(e.role),
            min_calls: e.min_calls,
            max_calls: e.max_calls,
            prompt_tokens_per_call: e.prompt_tokens_per_call,
            max_completion_tokens_per_call: e.max_completion_tokens_per_call,
        })
        .collect();
    Ok(wit::Plan {
        roles,
        levels: S::levels(&options),
    })
}

fn role(role: lib::Role) -> wit::Role {
    match role {
        lib::Role::Base => wit::Role::Base,
        lib::Role::Metrics => wit::Role::Metrics,
        lib::Role::Judge => wit::Role::Judge,
        lib::Role::Optimizer => wit::Role::Optimizer,
    }
}

fn request(r: lib::Request) -> wit::Request {
    wit::Request {
        role: role(r.role),
        prompt: match r.prompt {
            lib::Prompt::Raw(text) => wit::Prompt::Raw(text),
            lib::Prompt::Chat(messages) => wit::Prompt::Chat(
                messages
                    .into_iter()
                    .map(|m| wit::Message {
                        role: m.role,
                        content: m.content,
                    })
                    .collect(),
            ),
        },
        sampling: wit::Sampling {
            temperature: r.sampling.temperature,
            top_p: r.sampling.top_p,
            max_tokens: r.sampling.max_tokens,
            n: r.sampling.n,
            seed: r.sampling.seed,
            stop: r.sampling.stop,
        },
        json_schema: r.json_schema,
    }
}

fn completion(c: wit::Completion) -> lib::Completion {
    lib::Completion {
        choices: c.choices,
        usage: lib::Usage {
            prompt_tokens: c.usage.prompt_tokens,
            completion_tokens: c.usage.completion_tokens,
        },
    }
}

fn llm_error(e: wit::LlmError) -> lib::LlmError {
    match e {
        wit::LlmError::BudgetExhausted => lib::LlmError::BudgetExhausted,
        wit::LlmError::Rejected(why) => lib::LlmError::Rejected(why),
        wit::LlmError::Unavailable(why) => lib::LlmError::Unavailable(why),
    }
}

fn query(q: wit::Query) -> lib::Query {
    lib::Query {
        id: q.id,
        text: q.text,
        tags: q.tags,
    }
}

fn example(e: wit::Example) -> lib::Example {
    lib::Example {
        query: e.query,
        answer: e.answer,
    }
}
