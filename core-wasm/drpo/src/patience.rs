//! Early stopping: a search ends once its best score has gone a number of levels without
//! improving (the "no improvement" stop of GEPA and of most training loops), and says so in its
//! outcome.

use serde_json::{Value, json};

/// The patience rule of one search: `levels` levels in a row without a better best score end
/// it (0: never).
#[derive(Clone, Debug, PartialEq)]
pub struct Patience {
    levels: u32,
    best: Option<(f64, u32)>,
    stale: u32,
    ended_at: Option<u32>,
}

impl Patience {
    /// The rule for `levels` levels without improvement (0 switches it off).
    pub fn new(levels: u32) -> Self {
        Self {
            levels,
            best: None,
            stale: 0,
            ended_at: None,
        }
    }

    /// Takes the best score after `level`; true when the search should end there. Only a
    /// strictly higher score counts as an improvement.
    pub fn observe(&mut self, level: u32, best: f64) -> bool {
        match self.best {
            Some((so_far, _)) if best <= so_far => self.stale += 1,
            _ => {
                self.best = Some((best, level));
                self.stale = 0;
            }
        }
        let out = self.levels > 0 && self.stale >= self.levels;
        if out {
            self.ended_at = Some(level);
        }
        out
    }

    /// Why the search ended early, in words, if this rule ended it.
    pub fn message(&self) -> Option<String> {
        let ended = self.ended_at?;
        let (best, at) = self.best?;
        Some(format!(
            "patience: no better score for {} level(s) since level {at} (best {best:.4}); ended \
             after level {ended}",
            self.levels
        ))
    }

    /// The outcome's `patience` details: `null` when the rule is off, else the levels it
    /// allows, the level it ended the search after (`null`: it did not), and the level of the
    /// best score.
    pub fn details(&self) -> Value {
        if self.levels == 0 {
            return Value::Null;
        }
        json!({
            "levels": self.levels,
            "ended_after_level": self.ended_at,
            "best_level": self.best.map(|(_, level)| level),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_ends_after_the_given_levels_without_a_higher_score() {
        let mut patience = Patience::new(2);
        assert!(!patience.observe(1, 3.0));
        assert!(
            !patience.observe(2, 3.0),
            "equal is no improvement, but one level is allowed"
        );
        assert!(
            !patience.observe(3, 3.5),
            "an improvement starts the count again"
        );
        assert!(!patience.observe(4, 3.25));
        assert!(patience.observe(5, 3.5));
        assert_eq!(
            patience.details(),
            json!({"levels": 2, "ended_after_level": 5, "best_level": 3})
        );
        assert_eq!(
            patience.message().unwrap(),
            "patience: no better score for 2 level(s) since level 3 (best 3.5000); ended after \
             level 5"
        );
    }

    #[test]
    fn no_patience_never_ends_a_search() {
        let mut patience = Patience::new(0);
        assert!((1..50).all(|level| !patience.observe(level, 1.0)));
        assert_eq!(patience.details(), Value::Null);
        assert_eq!(patience.message(), None);
    }

    #[test]
    fn a_search_that_improves_is_not_ended() {
        let mut patience = Patience::new(1);
        for level in 1..10 {
            assert!(!patience.observe(level, f64::from(level)));
        }
        assert_eq!(patience.details()["ended_after_level"], Value::Null);
    }
}
