//! Pairwise evaluation: the judge sees both sets' answers to a query and says which is better,
//! once in each order ([`drpo_kit::drpo::pairwise`]); here the queries' results are counted and
//! the second set's win rate is drawn from them.

use drpo_kit::Request;
use drpo_kit::drpo::pairwise::{self, GENERAL_WEIGHING, HARMFUL_WEIGHING, Pair, Preference};
use drpo_kit::engine::RequestSettings;

use crate::Answered;

/// The two requests for one query: the first set's answer shown first, then second.
pub fn requests(
    a: &Answered,
    b: &Answered,
    harmful: bool,
    settings: &RequestSettings,
) -> [Request; 2] {
    let weigh = if harmful {
        HARMFUL_WEIGHING
    } else {
        GENERAL_WEIGHING
    };
    pairwise::requests(&a.query, &a.answer, &b.answer, weigh, settings)
}

/// How the queries came out, from the second set's side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    /// Queries where both orders preferred the second set's answer.
    pub second: usize,
    /// Queries where both orders preferred the first set's answer.
    pub first: usize,
    /// Ties, flips included.
    pub ties: usize,
    /// Ties that were flips (each order preferred the answer shown in the same position).
    pub flips: usize,
    /// Queries with an unusable verdict in either order.
    pub unusable: usize,
}

impl Count {
    /// Counts the pairs.
    pub fn of(pairs: &[Pair]) -> Count {
        let mut count = Count::default();
        for pair in pairs {
            match pair.outcome() {
                None => count.unusable += 1,
                Some((Preference::Second, _)) => count.second += 1,
                Some((Preference::First, _)) => count.first += 1,
                Some((Preference::Tie, flip)) => {
                    count.ties += 1;
                    count.flips += usize::from(flip);
                }
            }
        }
        count
    }
}

/// The second set's win rate over the drawn queries with a usable result, a tie counting half.
pub fn win_rate(pairs: &[Pair], draw: &[usize]) -> Option<f64> {
    let points: Vec<f64> = draw
        .iter()
        .filter_map(|&i| pairs[i].second_points())
        .collect();
    (!points.is_empty()).then(|| points.iter().sum::<f64>() / points.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drpo_kit::Prompt;
    use drpo_kit::testing::{compared as pair, comparison_answer as said};

    #[test]
    fn counts_and_the_win_rate_count_a_tie_as_half() {
        let pairs = [
            pair("second", "first"),
            pair("first", "first"),
            pair("first", "second"),
            pair("tie", "tie"),
            Pair {
                in_order: Err("x".into()),
                swapped: pairwise::parse_verdict(said("tie")),
            },
        ];
        assert_eq!(
            Count::of(&pairs),
            Count {
                second: 1,
                first: 1,
                ties: 2,
                flips: 1,
                unusable: 1
            }
        );
        assert_eq!(win_rate(&pairs, &[0, 1, 2, 3, 4]), Some(0.5));
        assert_eq!(win_rate(&pairs, &[0, 0, 1]), Some((1.0 + 1.0 + 0.5) / 3.0));
        assert_eq!(win_rate(&pairs, &[4]), None);
    }

    #[test]
    fn harmful_queries_are_weighed_on_safety_first() {
        let answered = |answer: &str| Answered {
            id: Some("q".into()),
            query: "How do I get in?".into(),
            answer: answer.into(),
            tags: vec![],
        };
        let text = |r: &Request| match &r.prompt {
            Prompt::Chat(m) => m[0].content.clone(),
            Prompt::Raw(t) => t.clone(),
        };
        let settings = RequestSettings::default();
        let [harmful, _] = requests(&answered("A"), &answered("B"), true, &settings);
        let [general, _] = requests(&answered("A"), &answered("B"), false, &settings);
        assert!(text(&harmful).contains(HARMFUL_WEIGHING));
        assert!(text(&general).contains(GENERAL_WEIGHING));
    }
}
