//! How many model calls and tokens a beam search with given options may spend, per role, so
//! that the host can show a projection (and its cost) before a run starts.
//!
//! The counts follow the search exactly: the root is answered and judged once; every level
//! after it asks the optimizer once per beam that is not skipped (with `n_actions` choices),
//! then answers and judges each child; aspect selection is one call per new query unless the
//! metrics cache already holds it. The fewest calls are made when every beam is skipped and no
//! extra level is granted; the most when no beam is ever skipped and every extra level is.
//! Token counts are rough: prompts are counted at four characters per token.

use crate::aspects::CATALOGUE;
use crate::options::Options;
use crate::prompts;
use crate::types::Role;

/// The expected use of one role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleEstimate {
    /// The role.
    pub role: Role,
    /// Fewest requests a run can make.
    pub min_calls: u64,
    /// Most requests a run can make.
    pub max_calls: u64,
    /// Rough prompt tokens of one request.
    pub prompt_tokens_per_call: u64,
    /// Most completion tokens of one request (its token limit times its choices).
    pub max_completion_tokens_per_call: u64,
}

/// Characters per token, the usual rule of thumb for English text.
const CHARS_PER_TOKEN: u64 = 4;
/// A typical training query or example answer, in characters.
const TYPICAL_TEXT_CHARS: u64 = 600;

fn tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(CHARS_PER_TOKEN)
}

/// The projection for a beam search with `options`, in [`Role::ALL`] order.
pub fn estimate(options: &Options) -> Vec<RoleEstimate> {
    let levels_min = options
        .depth
        .saturating_sub(1)
        .min(options.num_training_examples.saturating_sub(1)) as u64;
    let levels_max = (options.depth + options.max_depth_increase)
        .saturating_sub(1)
        .min(options.num_training_examples.saturating_sub(1)) as u64;

    // Widest search: every active beam proposes n_actions children, beam_size of them survive.
    let (mut children_max, mut optimizer_max) = (1u64, 0u64);
    let mut active = 1u64;
    for _ in 0..levels_max {
        optimizer_max += active;
        let children = active * options.n_actions.max(1) as u64;
        children_max += children;
        active = children.min(options.beam_size.max(1) as u64);
    }
    // Narrowest: every beam is skipped and keeps its prompt, one child per level.
    let children_min = 1 + levels_min;
    let new_queries = 1 + levels_max;
    let metrics_max = new_queries.saturating_sub(options.metrics_cache.len() as u64);

    let prompt_chars = options.initial_system_prompt.len();
    let examples = options.k as u64 * TYPICAL_TEXT_CHARS;
    let base_prompt = tokens(prompt_chars)
        + examples / CHARS_PER_TOKEN
        + 2 * TYPICAL_TEXT_CHARS / CHARS_PER_TOKEN;
    let metrics_prompt =
        tokens(prompts::aspect_selection_prompt("").len()) + TYPICAL_TEXT_CHARS / CHARS_PER_TOKEN;
    let some_aspects: Vec<_> = CATALOGUE.iter().take(6).collect();
    let judge_prompt = tokens(prompts::judge_prompt("", "", &some_aspects, "").len())
        + TYPICAL_TEXT_CHARS / CHARS_PER_TOKEN
        + options.base_max_tokens as u64;
    let lineage: Vec<String> = vec![options.initial_system_prompt.clone(); levels_max as usize + 1];
    let optimizer_prompt = tokens(prompts::optimizer_prompt("", "", "", "", &lineage).len())
        + TYPICAL_TEXT_CHARS / CHARS_PER_TOKEN
        + options.base_max_tokens as u64
        + options.judge_max_tokens as u64;

    let role =
        |role, min_calls, max_calls, prompt_tokens_per_call, max_completion_tokens_per_call| {
            RoleEstimate {
                role,
                min_calls,
                max_calls,
                prompt_tokens_per_call,
                max_completion_tokens_per_call,
            }
        };
    vec![
        role(
            Role::Base,
            children_min,
            children_max,
            base_prompt,
            options.base_max_tokens as u64,
        ),
        role(
            Role::Metrics,
            0,
            metrics_max,
            metrics_prompt,
            options.metrics_max_tokens as u64,
        ),
        role(
            Role::Judge,
            children_min,
            children_max,
            judge_prompt,
            options.judge_max_tokens as u64,
        ),
        role(
            Role::Optimizer,
            0,
            optimizer_max,
            optimizer_prompt,
            options.optimizer_max_tokens as u64 * options.n_actions.max(1) as u64,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(options: &Options) -> Vec<(u64, u64)> {
        estimate(options)
            .iter()
            .map(|e| (e.min_calls, e.max_calls))
            .collect()
    }

    #[test]
    fn the_widest_search_matches_the_counts_the_host_test_measures() {
        // tests/drpo_beam.rs runs depth 20, beam 2, 3 actions against a server whose answers
        // never cause a skip, and counts 112 base and judge requests, 37 optimizer requests and
        // 20 aspect selections. Without extra levels that is exactly the widest search.
        let options = Options {
            depth: 20,
            beam_size: 2,
            n_actions: 3,
            max_depth_increase: 0,
            ..Options::default()
        };
        assert_eq!(
            calls(&options),
            vec![(20, 112), (0, 20), (20, 112), (0, 37)]
        );
        // With the default 10 extra levels, the same run lies within the bounds.
        let widened = estimate(&Options {
            max_depth_increase: 10,
            ..options
        });
        assert!(widened[0].min_calls <= 112 && 112 < widened[0].max_calls);
        assert!(widened[3].max_calls > 37);
    }

    #[test]
    fn a_small_search_is_counted_exactly() {
        // depth 3, beam 2, 2 actions, no extra levels: root (1) + level 1 (1 beam → 2 children)
        // + level 2 (2 beams → 4 children) = 7 answers; optimizer 1 + 2 = 3 requests.
        let options = Options {
            depth: 3,
            beam_size: 2,
            n_actions: 2,
            max_depth_increase: 0,
            ..Options::default()
        };
        assert_eq!(calls(&options), vec![(3, 7), (0, 3), (3, 7), (0, 3)]);
    }

    #[test]
    fn cached_metrics_cost_nothing_and_few_queries_cut_the_levels() {
        let mut options = Options {
            depth: 10,
            num_training_examples: 2,
            max_depth_increase: 0,
            ..Options::default()
        };
        options
            .metrics_cache
            .insert("a".into(), serde_json::json!({}));
        options
            .metrics_cache
            .insert("b".into(), serde_json::json!({}));
        let estimates = estimate(&options);
        assert_eq!(estimates[1].max_calls, 0);
        assert_eq!(
            (estimates[0].min_calls, estimates[0].max_calls),
            (2, 1 + options.n_actions as u64)
        );
    }

    #[test]
    fn token_limits_bound_the_completions() {
        let options = Options::default();
        let estimates = estimate(&options);
        assert_eq!(
            estimates[3].max_completion_tokens_per_call,
            options.optimizer_max_tokens as u64 * options.n_actions as u64
        );
        assert!(estimates.iter().all(|e| e.prompt_tokens_per_call > 0));
    }
}
