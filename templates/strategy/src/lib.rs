//! A complete strategy to start from: judge the initial prompt on the first training query,
//! ask the optimizer once for `candidates` better prompts from that judgement, judge them on
//! the same query, and return the best. Replace `search` with your own idea; keep it generic
//! over `Host` so that `cargo test` can run it against `drpo_kit::testing::ScriptedHost`.

use drpo_kit::engine::Scorer;
use drpo_kit::prelude::*;
use serde::Deserialize;
use serde_json::json;

/// The options, as `run` receives them (defaults from `schema`).
#[derive(Deserialize)]
struct Options {
    /// How many new prompts to ask for.
    candidates: u32,
    /// Seed, token limits, the optimizer's temperature and the initial prompt.
    #[serde(flatten)]
    requests: Settings,
}

fn schema() -> OptionsSchema {
    let schema = OptionsSchema::new("My strategy's options").integer(
        "candidates",
        3,
        1,
        "New prompts the optimizer writes.",
    );
    Settings::add_to(schema, 0.7)
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
    fn describe() -> Info {
        Info {
            name: "my-strategy".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Asks the optimizer once for better prompts and keeps the best.".into(),
            options_schema: schema().to_json(),
        }
    }

    fn run(host: &mut ComponentHost, options: &str) -> Result<Outcome, String> {
        let options: Options = schema().parse(options)?;
        let queries = host.queries();
        search(host, &options, &queries)
    }
}

export_strategy!(MyStrategy);
