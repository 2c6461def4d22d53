//! A complete strategy to start from: judge the initial prompt on the first training query,
//! ask the optimizer once for `candidates` better prompts from that judgement, judge them on
//! the same query, and return the best. Replace `search` with your own idea; keep it generic
//! over `StrategyHost` so that `cargo test` can run it against `drpo_kit::testing::ScriptedHost`.

use drpo_kit::engine::Scorer;
use drpo_kit::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The options, declared once: `describe` publishes the JSON Schema derived from this type
/// (each doc comment a description, `Default` the defaults, `range` the minimums), and `run`
/// receives them parsed.
#[derive(Deserialize, Serialize, JsonSchema)]
#[schemars(crate = "drpo_kit::schemars", title = "My strategy's options")]
#[serde(default)]
struct Options {
    /// New prompts the optimizer writes.
    #[schemars(range(min = 1))]
    candidates: u32,
    /// Seed, token limits, the optimizer's temperature and the initial prompt.
    #[serde(flatten)]
    requests: Settings,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            candidates: 3,
            requests: Settings::with_temperature(0.7),
        }
    }
}

impl StrategyOptions for Options {
    fn schema() -> Value {
        derived_schema::<Self>()
    }
}

fn search<H: Host>(host: &mut H, options: &Options, queries: &[Query]) -> Result<Outcome, String> {
    let query = queries.first().ok_or("no training queries")?.clone();
    let mut scorer = Scorer::new(
        options.requests.request_settings(options.candidates),
        Vec::new(),
    );
    let stopped = |why: Stop| format!("stopped: {why}");

    let start = options.requests.initial_system_prompt.clone();
    let root = scorer
        .evaluate(host, &[(start.clone(), query.clone())])
        .map_err(stopped)?;
    host.record(0, None, 0, &start, root[0].reward, &root[0].details());

    let prompts = scorer
        .propose(host, &root[0], &[start], options.candidates)
        .map_err(stopped)?;
    let candidates: Vec<(String, Query)> =
        prompts.into_iter().map(|p| (p, query.clone())).collect();
    let judged = scorer.evaluate(host, &candidates).map_err(stopped)?;

    let mut best = (0, root[0].reward, root[0].prompt.clone());
    for (i, evaluation) in judged.iter().enumerate() {
        let id = i as u32 + 1;
        host.record(
            id,
            Some(0),
            1,
            &evaluation.prompt,
            evaluation.reward,
            &evaluation.details(),
        );
        if evaluation.reward > best.1 {
            best = (id, evaluation.reward, evaluation.prompt.clone());
        }
    }
    host.info(format!("best node {} with reward {:.2}", best.0, best.1));
    let path = if best.0 == 0 {
        vec![0]
    } else {
        vec![0, best.0]
    };
    Ok(Outcome {
        best_prompt: Some(best.2),
        best_score: Some(best.1),
        best_path: path,
        details: json!({ "candidates": judged.len(), "judgements": scorer.judgements() })
            .to_string(),
    })
}

struct MyStrategy;

impl Strategy for MyStrategy {
    type Options = Options;
    const NAME: &'static str = "my-strategy";
    const DESCRIPTION: &'static str =
        "Asks the optimizer once for better prompts and keeps the best.";

    fn run<H: StrategyHost>(host: &mut H, options: Options) -> Result<Outcome, String> {
        let queries = host.queries(None);
        search(host, &options, &queries)
    }
}

export_strategy!(MyStrategy);
