//! `beam.wasm`: the DRPO beam-search strategy as a WebAssembly component.
//!
//! A thin adapter: it converts between the WIT bindings of `drpo:strategy` and the plain types
//! of the `drpo` library, implements [`drpo::types::Host`] over the host's imports, and hands
//! everything else to [`drpo::search::run`]. All DRPO logic lives in the library, where it is
//! unit-tested natively.

mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "strategy",
    });
}

use bindings::drpo::strategy::host;
use bindings::drpo::strategy::types as wit;
use drpo::types as lib;

/// The exported component.
struct Beam;

impl bindings::Guest for Beam {
    fn describe() -> wit::Info {
        wit::Info {
            name: "beam".to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: "DRPO (Dynamic Rewarding with Prompt Optimization) beam search: from an \
initial system prompt, each level answers one training query with the base model, judges the \
answer on the aspects a metrics model picked for that query, and has an optimizer write \
n_actions better prompts for every beam that is not already good (mean score above 4.5); the \
best beam_size paths by mean reward survive. Returns the best prompt, its path's mean reward, \
the path and the new metrics-cache entries."
                .to_string(),
            options_schema: drpo::options::Options::schema(),
        }
    }

    fn run(options: String) -> Result<wit::Outcome, String> {
        let options = drpo::options::Options::from_json(&options)?;
        let queries: Vec<lib::Query> = host::queries().into_iter().map(query).collect();
        let examples: Vec<lib::Example> = host::examples().into_iter().map(example).collect();
        let result = drpo::search::run(&mut WitHost, &options, &queries, &examples)?;
        let outcome = result.to_outcome();
        Ok(wit::Outcome {
            best_prompt: outcome.best_prompt,
            best_score: outcome.best_score,
            best_path: outcome.best_path,
            details: outcome.details,
        })
    }

    fn estimate(options: String) -> Result<Vec<wit::RoleEstimate>, String> {
        let options = drpo::options::Options::from_json(&options)?;
        Ok(drpo::estimate::estimate(&options)
            .into_iter()
            .map(|e| wit::RoleEstimate {
                role: role(e.role),
                min_calls: e.min_calls,
                max_calls: e.max_calls,
                prompt_tokens_per_call: e.prompt_tokens_per_call,
                max_completion_tokens_per_call: e.max_completion_tokens_per_call,
            })
            .collect())
    }
}

bindings::export!(Beam with_types_in bindings);

/// The library's [`lib::Host`] over the component's imports.
struct WitHost;

impl lib::Host for WitHost {
    fn complete(
        &mut self,
        batch: Vec<lib::Request>,
    ) -> Vec<Result<lib::Completion, lib::LlmError>> {
        let batch: Vec<wit::Request> = batch.into_iter().map(request).collect();
        host::complete(&batch)
            .into_iter()
            .map(|r| r.map(completion).map_err(llm_error))
            .collect()
    }

    fn embed(&mut self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, lib::LlmError> {
        host::embed(&texts).map_err(llm_error)
    }

    fn record_node(&mut self, node: lib::Node) {
        host::record_node(&wit::Node {
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
        host::log(level, &message);
    }
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
