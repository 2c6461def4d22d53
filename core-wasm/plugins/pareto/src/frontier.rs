//! The Pareto frontier over aspects, with no model calls: what a prompt scored per aspect,
//! which prompts no other beats on every aspect, which frontier prompt to improve next, and
//! which two to merge.

use std::collections::{BTreeMap, BTreeSet};

use drpo_kit::engine::Evaluation;

/// A prompt's scores on the queries it was judged on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AspectMeans {
    /// Per aspect: the mean of its scores over the queries whose selection chose it (a query
    /// whose judgement was unusable counts 0 for each aspect chosen for it).
    pub aspects: BTreeMap<String, f64>,
    /// The mean reward over the queries.
    pub reward: f64,
}

impl AspectMeans {
    /// The means of a prompt's evaluations, each query counting on the aspects chosen for it
    /// (the same for every prompt judged on it: the selection is made once per query).
    pub fn of(evaluations: &[Evaluation]) -> Self {
        let mut sums: BTreeMap<String, (f64, u32)> = BTreeMap::new();
        for evaluation in evaluations {
            for name in evaluation.aspects() {
                let score = evaluation
                    .judgement
                    .scores
                    .iter()
                    .find(|s| s.aspect.name == name)
                    .map_or(0.0, |s| s.mean);
                let entry = sums.entry(name.to_owned()).or_default();
                entry.0 += score;
                entry.1 += 1;
            }
        }
        let reward =
            evaluations.iter().map(|e| e.reward).sum::<f64>() / evaluations.len().max(1) as f64;
        AspectMeans {
            aspects: sums
                .into_iter()
                .map(|(name, (sum, n))| (name, sum / f64::from(n)))
                .collect(),
            reward,
        }
    }

    fn score(&self, aspect: &str) -> f64 {
        self.aspects.get(aspect).copied().unwrap_or(0.0)
    }
}

fn aspect_names<'a>(all: impl IntoIterator<Item = &'a AspectMeans>) -> BTreeSet<&'a str> {
    all.into_iter()
        .flat_map(|m| m.aspects.keys().map(String::as_str))
        .collect()
}

/// Whether `a` dominates `b`: at least as good on every aspect either has, better on one.
pub fn dominates(a: &AspectMeans, b: &AspectMeans) -> bool {
    let names = aspect_names([a, b]);
    let at_least = names.iter().all(|n| a.score(n) >= b.score(n));
    let better = names.iter().any(|n| a.score(n) > b.score(n));
    at_least && better
}

/// The indices of the prompts no other dominates, in order; of prompts with equal scores on
/// every aspect only the first is kept.
pub fn frontier(all: &[AspectMeans]) -> Vec<usize> {
    (0..all.len())
        .filter(|&i| {
            !all.iter().enumerate().any(|(j, other)| {
                dominates(other, &all[i]) || (j < i && other.aspects == all[i].aspects)
            })
        })
        .collect()
}

/// The two frontier prompts to merge: for each aspect, the frontier prompt that scores highest
/// on it (the first on ties); the first two distinct such prompts, in frontier order. `None`
/// when one prompt is best on every aspect.
pub fn merge_pair(all: &[AspectMeans], front: &[usize]) -> Option<(usize, usize)> {
    let mut leaders: Vec<usize> = Vec::new();
    for name in aspect_names(all) {
        let mut best: Option<usize> = None;
        for &i in front {
            if best.is_none_or(|b| all[i].score(name) > all[b].score(name)) {
                best = Some(i);
            }
        }
        if let Some(best) = best
            && !leaders.contains(&best)
        {
            leaders.push(best);
        }
    }
    leaders.sort_unstable();
    match leaders[..] {
        [a, b, ..] => Some((a, b)),
        _ => None,
    }
}

/// The aspects on which `a` scores higher than `b`, with both scores, as the merge prompt shows
/// them.
pub fn strengths(a: &AspectMeans, b: &AspectMeans) -> Vec<(String, f64, f64)> {
    aspect_names([a, b])
        .into_iter()
        .filter(|n| a.score(n) > b.score(n))
        .map(|n| (n.to_owned(), a.score(n), b.score(n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn means(pairs: &[(&str, f64)]) -> AspectMeans {
        AspectMeans {
            aspects: pairs.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect(),
            reward: pairs.iter().map(|(_, s)| s).sum::<f64>() / pairs.len() as f64,
        }
    }

    #[test]
    fn dominance_needs_every_aspect_and_one_strictly() {
        let a = means(&[("Clarity", 4.0), ("Depth", 3.0)]);
        let b = means(&[("Clarity", 4.0), ("Depth", 2.0)]);
        let c = means(&[("Clarity", 2.0), ("Depth", 5.0)]);
        assert!(dominates(&a, &b) && !dominates(&b, &a));
        assert!(!dominates(&a, &c) && !dominates(&c, &a));
        assert!(!dominates(&a, &a.clone()), "equal is not better");
        let missing = means(&[("Clarity", 4.0)]);
        assert!(dominates(&a, &missing), "a missing aspect counts 0");
    }

    #[test]
    fn the_frontier_keeps_the_undominated_once() {
        let all = [
            means(&[("Clarity", 3.0), ("Depth", 3.0)]),
            means(&[("Clarity", 4.0), ("Depth", 2.0)]),
            means(&[("Clarity", 2.0), ("Depth", 4.0)]),
            means(&[("Clarity", 4.0), ("Depth", 2.0)]),
            means(&[("Clarity", 1.0), ("Depth", 1.0)]),
        ];
        assert_eq!(frontier(&all), [0, 1, 2]);
        assert_eq!(merge_pair(&all, &frontier(&all)), Some((1, 2)));
        assert_eq!(
            strengths(&all[1], &all[2]),
            [("Clarity".to_owned(), 4.0, 2.0)]
        );
        let one_best = [
            means(&[("Clarity", 4.0), ("Depth", 4.0)]),
            means(&[("Clarity", 1.0), ("Depth", 1.0)]),
        ];
        assert_eq!(frontier(&one_best), [0]);
        assert_eq!(merge_pair(&one_best, &[0]), None);
    }
}
