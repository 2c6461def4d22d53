//! The preflight: before a search spends anything, one small request per distinct remote model
//! and prompt form the run will use, with a schema where the role needs one. It settles how each
//! server is reached (the prompt form, the structured-output rung; see
//! [`crate::provider::openai`]) and stops a run whose role cannot answer before the other roles
//! have spent anything.
//!
//! Which roles need a schema is the shipped strategies' rule: the metrics, judge and optimizer
//! roles answer in JSON, the base model in free text.

use std::time::Instant;

use super::Calls;
use crate::bindings::types::{LlmError, Message, Prompt, Request, Role, Sampling};
use crate::provider::Router;
use crate::runlog::{Preflight, RoleSettings};

/// A role that cannot answer: the run must not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "preflight: the {roles} role cannot answer: {provider}: {reason}; nothing else was sent \
     (check the model name, --api-base and the key, or skip this check with --no-preflight)"
)]
pub struct RoleUnavailable {
    /// The role names that share the failing model, e.g. "judge" or "metrics/judge".
    pub roles: String,
    /// The provider's identity (endpoint and model).
    pub provider: String,
    /// The error of the check request: the URL, the status and an excerpt of the body.
    pub reason: String,
}

/// Checks the remote models serving `roles` (all of them with `skip`, none), settling how each is
/// reached. The record holds the requests, their results and what each role's provider settled,
/// also when nothing was checked. A check refused by a budget is not a failure: the run will
/// stop on its budget anyway.
pub async fn run(calls: &Calls, roles: &[Role], skip: bool) -> Result<Preflight, RoleUnavailable> {
    let router = calls.router();
    let started = Instant::now();
    let mut requests = Vec::new();
    let mut checked: Vec<Vec<Role>> = Vec::new();
    if !skip {
        for (provider, served) in router.providers_of(roles) {
            if !provider.is_remote() {
                continue;
            }
            if served.contains(&Role::Base) {
                requests.push(base_check());
                checked.push(served.clone());
            }
            if let Some(&role) = served.iter().find(|r| **r != Role::Base) {
                requests.push(structured_check(role));
                checked.push(served.clone());
            }
        }
    }
    let results = calls.check(requests.clone()).await;
    for ((request, result), served) in requests.iter().zip(&results).zip(&checked) {
        match result {
            Ok(_) | Err(LlmError::BudgetExhausted) => {}
            Err(LlmError::Rejected(reason) | LlmError::Unavailable(reason)) => {
                return Err(RoleUnavailable {
                    roles: served
                        .iter()
                        .map(|&r| r.name())
                        .collect::<Vec<_>>()
                        .join("/"),
                    provider: router.provider(request.role).identity(),
                    reason: reason.clone(),
                });
            }
        }
    }
    for (provider, served) in router.providers_of(roles) {
        let settled = provider.settings().describe();
        if !settled.is_empty() {
            let names: Vec<&str> = served.iter().map(|&r| r.name()).collect();
            eprintln!(
                "preflight: {} ({}): {settled}",
                provider.identity(),
                names.join("/")
            );
        }
    }
    Ok(Preflight {
        base_form: router.base_form(),
        requests,
        results,
        settings: Role::ALL
            .iter()
            .map(|&role| RoleSettings {
                role: role.name().to_owned(),
                settings: router.provider(role).settings(),
            })
            .collect(),
        elapsed_us: started.elapsed().as_micros() as u64,
    })
}

/// Has each role's provider take over what an earlier part of the run settled.
pub fn restore(router: &Router, preflight: &Preflight) {
    for recorded in &preflight.settings {
        if let Some(role) = Role::named(&recorded.role) {
            router.provider(role).restore(recorded.settings);
        }
    }
}

fn sampling(max_tokens: u32) -> Sampling {
    Sampling {
        temperature: 0.0,
        top_p: 1.0,
        max_tokens,
        n: 1,
        seed: 0,
        stop: Vec::new(),
    }
}

/// The base model's check: a system and a user message, sent in the run's base form.
fn base_check() -> Request {
    Request {
        role: Role::Base,
        prompt: Prompt::Chat(vec![
            Message {
                role: "system".into(),
                content: "Answer in a few words.\n\n".into(),
            },
            Message {
                role: "user".into(),
                content: "Name a colour.".into(),
            },
        ]),
        sampling: sampling(8),
        json_schema: None,
    }
}

/// A structured role's check: a tiny schema, asked the way the provider settles, for two
/// choices (the optimizer asks for several in one request; a server that ignores `n` is found
/// here rather than in the search).
fn structured_check(role: Role) -> Request {
    Request {
        role,
        prompt: Prompt::Chat(vec![Message {
            role: "user".into(),
            content: "Is water wet? Answer with a JSON object whose field `yes` is true or false."
                .into(),
        }]),
        sampling: Sampling {
            n: 2,
            ..sampling(24)
        },
        json_schema: Some(
            r#"{"type":"object","properties":{"yes":{"type":"boolean"}},"required":["yes"],"additionalProperties":false}"#
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bindings::types::{Completion, Usage};
    use crate::provider::scripted::ScriptedProvider;

    #[test]
    fn models_in_process_are_not_sent_a_check() {
        let provider = ScriptedProvider::new(|_| {
            Ok(Completion {
                choices: vec!["x".into()],
                usage: Usage {
                    prompt_tokens: 1,
                    completion_tokens: 1,
                },
            })
        });
        let seen = provider.requests();
        let calls = Calls::unlimited(Router::uniform(Arc::new(provider)));
        let preflight = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(run(&calls, &Role::ALL, false))
            .unwrap();
        assert!(preflight.requests.is_empty());
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(preflight.settings.len(), 4);
    }
}
