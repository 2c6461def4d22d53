//! How many model calls and tokens a beam search with given options may spend, per role, so
//! that the host can show a projection (and its cost) before a run starts.
//!
//! The counts follow the search exactly: the root is answered and judged once; every level
//! after it asks the optimizer once per beam that is not skipped (with `n_actions` choices), and
//! once more where every candidate was a prompt for the query, then answers and judges each child; aspect selection is one call per new query unless the
//! metrics cache already holds it. The fewest calls are made when every beam is skipped and no
//! extra level is granted; the most when no beam is ever skipped and every extra level is.
//! With `reward: pairwise`, every optimized beam also answers and judges its own prompt again,
//! and each candidate is compared with it in two more judge requests.
//! A validation split adds each validated prompt's answers and judgements on the held-out
//! queries, and their aspect selections ([`drpo_kit::HeldOut::extra_calls`]). The size of each
//! request is the engine's ([`request_sizes`]).

use drpo_kit::drpo::engine::request_sizes;
use drpo_kit::{Role, RoleEstimate};

use crate::options::{Options, Reward};

/// The projection for a beam search with `options`, in [`drpo_kit::Role::ALL`] order.
pub fn estimate(options: &Options) -> Vec<RoleEstimate> {
    let levels_min = options
        .depth
        .saturating_sub(1)
        .min(options.num_training_examples.saturating_sub(1)) as u64;
    let levels_max = (options.depth + options.max_depth_increase)
        .saturating_sub(1)
        .min(options.num_training_examples.saturating_sub(1)) as u64;

    // Widest search: every active beam proposes n_actions children (and keeps its own prompt
    // beside them under the pairwise reward), beam_size of them survive.
    let pairwise = options.reward == Reward::Pairwise;
    let (mut children_max, mut optimizer_max, mut comparisons_max) = (1u64, 0u64, 0u64);
    let mut active = 1u64;
    for _ in 0..levels_max {
        // Each beam's request, and once more where every candidate was about the query.
        optimizer_max += 2 * active;
        let candidates = active * options.n_actions.max(1) as u64;
        let children = if pairwise {
            comparisons_max += 2 * candidates;
            candidates + active
        } else {
            candidates
        };
        children_max += children;
        active = children.min(options.beam_size.max(1) as u64);
    }
    // Narrowest: every beam is skipped and keeps its prompt, one child per level.
    let children_min = 1 + levels_min;
    let new_queries = 1 + levels_max;
    let metrics_max = new_queries.saturating_sub(options.metrics_cache.len() as u64);

    // With `validation_every`, the beam's prompts are judged on the held-out queries after
    // every that many levels, at most `beam_size` prompts each time.
    let level_validations = match options.validation_every {
        0 => 0,
        every => levels_max / u64::from(every),
    };
    let validated = level_validations
        .saturating_mul(u64::from(options.beam_size))
        .saturating_mul(u64::from(options.held_out.validation));
    let search = [
        (children_min, children_max.saturating_add(validated)),
        (0, metrics_max),
        (children_min, children_max.saturating_add(validated)),
        (0, optimizer_max),
    ];
    let settings = options.request_settings();
    let counts = search
        .into_iter()
        .zip(options.held_out.extra_calls())
        .map(|((min, max), (extra_min, extra_max))| {
            (min.saturating_add(extra_min), max.saturating_add(extra_max))
        })
        .zip(Role::ALL)
        .map(|(calls, role)| settings.requests_of(role, calls))
        .zip([0, 0, comparisons_max, 0])
        .map(|((min, max), comparisons)| (min, max.saturating_add(comparisons)));
    let lineage = levels_max as usize + 1;
    request_sizes(&settings, &options.initial_system_prompt, lineage)
        .into_iter()
        .zip(counts)
        .map(|(size, (min_calls, max_calls))| RoleEstimate {
            min_calls,
            max_calls,
            ..size
        })
        .collect()
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
        // 20 aspect selections. Without extra levels that is exactly the widest search, but for
        // the optimizer, which may be asked twice per beam (74) where its candidates are all
        // about the query.
        let options = Options {
            depth: 20,
            beam_size: 2,
            n_actions: 3,
            max_depth_increase: 0,
            ..Options::default()
        };
        assert_eq!(
            calls(&options),
            vec![(20, 112), (0, 20), (20, 112), (0, 74)]
        );
        // With the default 10 extra levels, the same run lies within the bounds.
        let widened = estimate(&Options {
            max_depth_increase: 10,
            ..options
        });
        assert!(widened[0].min_calls <= 112 && 112 < widened[0].max_calls);
        assert!(widened[3].max_calls > 74);
    }

    #[test]
    fn a_small_search_is_counted_exactly() {
        // depth 3, beam 2, 2 actions, no extra levels: root (1) + level 1 (1 beam → 2 children)
        // + level 2 (2 beams → 4 children) = 7 answers; optimizer 1 + 2 = 3 requests, each
        // perhaps asked again: 6.
        let options = Options {
            depth: 3,
            beam_size: 2,
            n_actions: 2,
            max_depth_increase: 0,
            ..Options::default()
        };
        assert_eq!(calls(&options), vec![(3, 7), (0, 3), (3, 7), (0, 6)]);
    }

    #[test]
    fn the_pairwise_reward_counts_the_kept_prompt_and_two_comparisons_per_candidate() {
        // depth 3, beam 2, 2 actions: level 1 (1 beam → 2 candidates and the kept prompt), level
        // 2 (2 beams → 4 candidates and 2 kept) = 1 + 3 + 6 = 10 answers and absolute
        // judgements, and 2 × (2 + 4) = 12 comparisons. search/tests.rs measures the same run.
        let options = Options {
            depth: 3,
            beam_size: 2,
            n_actions: 2,
            max_depth_increase: 0,
            reward: Reward::Pairwise,
            ..Options::default()
        };
        assert_eq!(calls(&options), vec![(3, 10), (0, 3), (3, 22), (0, 6)]);
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
