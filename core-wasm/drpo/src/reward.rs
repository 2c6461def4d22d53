//! The reward of an answer, the skip rule, path aggregation and the depth extension.

use crate::parse::Judgement;

/// Mean score above which a prompt is considered good enough to keep unchanged (strictly).
pub const SKIP_MEAN: f64 = 4.5;

/// The reward of a judged answer: the mean of its aspect scores (each the mean over the judge's
/// repeats, when it was asked more than once), 0 when no score is usable.
pub fn reward(judgement: &Judgement) -> f64 {
    if judgement.scores.is_empty() {
        return 0.0;
    }
    let sum: f64 = judgement.scores.iter().map(|s| s.mean).sum();
    sum / judgement.scores.len() as f64
}

/// Why a node's prompt is kept as it is instead of being optimized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Every aspect scored 5.
    AllFives,
    /// The mean score is above [`SKIP_MEAN`].
    HighMean,
    /// The judgement is unusable (no JSON, or a selected aspect without a usable score), so
    /// there is no feedback to optimize from.
    ///
    /// The published code treats this exactly like a success: it keeps the prompt *and* grants
    /// an extra level (defect 5), so a judge that fails to answer in JSON silently lengthens the
    /// run as if the prompt were excellent. Here the prompt is still kept (the optimizer has no
    /// rationales to work from, and the node's reward of 0 already ranks its path down), but by
    /// default no level is granted: the depth budget is meant for queries the prompt already
    /// handles well, and a missing judgement says nothing about that. The option
    /// `unusable_judgement_extends_depth` restores the published behaviour for comparisons.
    NoJudgement,
}

impl SkipReason {
    /// Whether this skip asks for one more level.
    pub fn extends_depth(self, unusable_judgement_extends_depth: bool) -> bool {
        match self {
            SkipReason::AllFives | SkipReason::HighMean => true,
            SkipReason::NoJudgement => unusable_judgement_extends_depth,
        }
    }

    /// The log line for this skip.
    pub fn message(self) -> &'static str {
        match self {
            SkipReason::AllFives => "all scores are 5; keeping the prompt",
            SkipReason::HighMean => "mean score is above 4.5; keeping the prompt",
            SkipReason::NoJudgement => "no usable judgement; keeping the prompt",
        }
    }

    /// A short machine-friendly name for node details.
    pub fn name(self) -> &'static str {
        match self {
            SkipReason::AllFives => "all_fives",
            SkipReason::HighMean => "high_mean",
            SkipReason::NoJudgement => "no_judgement",
        }
    }
}

/// What to do with a node when its level is expanded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Ask the optimizer for new prompts.
    Optimize,
    /// Keep the prompt (one child with the same prompt).
    Skip(SkipReason),
}

/// The published skip rule, checked in the published order: no usable score, then all fives,
/// then a mean strictly above 4.5.
pub fn decide(judgement: &Judgement) -> Decision {
    if !judgement.is_usable() {
        Decision::Skip(SkipReason::NoJudgement)
    } else if judgement.scores.iter().all(|s| s.mean == 5.0) {
        Decision::Skip(SkipReason::AllFives)
    } else if reward(judgement) > SKIP_MEAN {
        Decision::Skip(SkipReason::HighMean)
    } else {
        Decision::Optimize
    }
}

/// A path's score from its per-step rewards (the root's own evaluation is not one of them):
/// the mean when the beam is wider than 1, the last reward otherwise; 0 for an empty path.
pub fn aggregate(rewards: &[f64], beam_size: u32) -> f64 {
    match rewards.last() {
        None => 0.0,
        Some(last) if beam_size <= 1 => *last,
        Some(_) => rewards.iter().sum::<f64>() / rewards.len() as f64,
    }
}

/// The path-length limit and its growth: each skip level may add one level, up to
/// `max_increase` in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DepthLimit {
    initial: u32,
    max_increase: u32,
    current: u32,
}

impl DepthLimit {
    /// A limit starting at `depth` that may grow by `max_increase`.
    pub fn new(depth: u32, max_increase: u32) -> Self {
        DepthLimit {
            initial: depth,
            max_increase,
            current: depth,
        }
    }

    /// The current limit on a path's length (root included).
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Levels granted so far.
    pub fn increase(&self) -> u32 {
        self.current - self.initial
    }

    /// Grants one more level if the total increase allows it; returns whether it did. The
    /// search calls this at most once per level.
    pub fn extend(&mut self) -> bool {
        if self.current < self.initial.saturating_add(self.max_increase) {
            self.current += 1;
            true
        } else {
            false
        }
    }

    /// Whether a path of `length` states (root included) stops here: it reached the limit or
    /// used every query.
    pub fn is_terminal(&self, length: usize, queries: usize) -> bool {
        length >= self.current as usize || length >= queries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aspects::find;
    use crate::parse::AspectScore;

    fn judged(scores: &[u8]) -> Judgement {
        let names = ["Helpfulness", "Clarity", "Depth", "Safety", "Empathy"];
        Judgement {
            scores: scores
                .iter()
                .zip(names)
                .map(|(s, n)| AspectScore::new(find(n).unwrap(), *s, String::new()))
                .collect(),
            problems: Vec::new(),
        }
    }

    #[test]
    fn reward_is_the_mean_or_zero() {
        assert_eq!(reward(&judged(&[4, 3, 5])), 4.0);
        assert_eq!(reward(&judged(&[1])), 1.0);
        assert_eq!(reward(&Judgement::unusable("x")), 0.0);
    }

    #[test]
    fn skip_rule() {
        assert_eq!(
            decide(&judged(&[5, 5, 5])),
            Decision::Skip(SkipReason::AllFives)
        );
        assert_eq!(decide(&judged(&[5])), Decision::Skip(SkipReason::AllFives));
        // 4.6 > 4.5: skip.
        assert_eq!(
            decide(&judged(&[5, 5, 5, 4, 4])),
            Decision::Skip(SkipReason::HighMean)
        );
        // exactly 4.5 is not above it.
        assert_eq!(decide(&judged(&[5, 4])), Decision::Optimize);
        assert_eq!(decide(&judged(&[4, 4, 4])), Decision::Optimize);
        assert_eq!(
            decide(&Judgement::unusable("garbage")),
            Decision::Skip(SkipReason::NoJudgement)
        );
    }

    #[test]
    fn unusable_judgement_extends_only_when_asked() {
        assert!(!SkipReason::NoJudgement.extends_depth(false));
        assert!(SkipReason::NoJudgement.extends_depth(true));
        assert!(SkipReason::AllFives.extends_depth(false));
        assert!(SkipReason::HighMean.extends_depth(false));
    }

    #[test]
    fn aggregation_mean_or_last() {
        assert_eq!(aggregate(&[], 2), 0.0);
        assert_eq!(aggregate(&[3.0, 5.0], 2), 4.0);
        assert_eq!(aggregate(&[3.0, 5.0, 1.0], 1), 1.0);
        assert_eq!(aggregate(&[2.0], 1), 2.0);
    }

    #[test]
    fn depth_grows_to_its_limit() {
        let mut d = DepthLimit::new(20, 2);
        assert!(d.extend());
        assert!(d.extend());
        assert!(!d.extend());
        assert_eq!((d.current(), d.increase()), (22, 2));
        let mut none = DepthLimit::new(5, 0);
        assert!(!none.extend());
        assert_eq!(none.current(), 5);
    }

    #[test]
    fn terminal_by_depth_or_queries() {
        let d = DepthLimit::new(3, 0);
        assert!(!d.is_terminal(2, 10));
        assert!(d.is_terminal(3, 10));
        assert!(d.is_terminal(2, 2));
    }
}
