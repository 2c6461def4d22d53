//! What model calls cost: a price table in USD per million input and output tokens.
//!
//! The table starts from the list prices of a few well-known hosted models ([`DEFAULT_PRICES`];
//! check them against your provider's current prices) and is extended or overridden by the
//! config file's `[prices]` table:
//!
//! ```toml
//! [prices]
//! "gpt-4o" = { input = 2.5, output = 10.0 }
//! "my-vllm-model" = { input = 0.0, output = 0.0 }
//! ```
//!
//! Local models (`local:PATH`) cost nothing. A model the table does not know costs "unknown",
//! never 0: a sum that includes it is unknown too.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The price of one model, in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per million prompt (input) tokens.
    pub input: f64,
    /// USD per million completion (output) tokens.
    pub output: f64,
}

impl Price {
    /// What `prompt` input and `completion` output tokens cost.
    pub fn cost(&self, prompt: u64, completion: u64) -> f64 {
        (prompt as f64 * self.input + completion as f64 * self.output) / 1e6
    }
}

/// List prices (USD per million input/output tokens) of some hosted models, used unless the
/// config file says otherwise. A dated variant (`gpt-4o-2024-08-06`) takes its family's price.
pub const DEFAULT_PRICES: &[(&str, Price)] = &[
    (
        "gpt-4o",
        Price {
            input: 2.5,
            output: 10.0,
        },
    ),
    (
        "gpt-4o-mini",
        Price {
            input: 0.15,
            output: 0.6,
        },
    ),
    (
        "gpt-4.1",
        Price {
            input: 2.0,
            output: 8.0,
        },
    ),
    (
        "gpt-4.1-mini",
        Price {
            input: 0.4,
            output: 1.6,
        },
    ),
    (
        "gpt-4.1-nano",
        Price {
            input: 0.1,
            output: 0.4,
        },
    ),
    (
        "gpt-4-turbo",
        Price {
            input: 10.0,
            output: 30.0,
        },
    ),
    (
        "gpt-4",
        Price {
            input: 30.0,
            output: 60.0,
        },
    ),
    (
        "gpt-3.5-turbo",
        Price {
            input: 0.5,
            output: 1.5,
        },
    ),
    (
        "o3-mini",
        Price {
            input: 1.1,
            output: 4.4,
        },
    ),
    (
        "o4-mini",
        Price {
            input: 1.1,
            output: 4.4,
        },
    ),
];

/// The prices in force for a run: the defaults, overridden by the config file.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    prices: BTreeMap<String, Price>,
}

impl PriceTable {
    /// The defaults with `overrides` (the config file's `[prices]`) on top.
    pub fn new(overrides: &BTreeMap<String, Price>) -> PriceTable {
        let mut prices: BTreeMap<String, Price> = DEFAULT_PRICES
            .iter()
            .map(|(name, price)| ((*name).to_owned(), *price))
            .collect();
        prices.extend(overrides.iter().map(|(k, v)| (k.clone(), *v)));
        PriceTable { prices }
    }

    /// The price of `model` as the user named it; `None` when unknown. Local models are free;
    /// a name the table lacks takes the price of its longest listed prefix followed by a
    /// dated suffix (`gpt-3.5-turbo-0125` → `gpt-3.5-turbo`).
    pub fn price(&self, model: &str) -> Option<Price> {
        if model.starts_with("local:") {
            return Some(Price {
                input: 0.0,
                output: 0.0,
            });
        }
        if let Some(price) = self.prices.get(model) {
            return Some(*price);
        }
        self.prices
            .iter()
            .filter(|(name, _)| {
                model
                    .strip_prefix(name.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, price)| *price)
    }

    /// What `model` charged for these tokens.
    pub fn cost(&self, model: &str, prompt: u64, completion: u64) -> Money {
        match self.price(model) {
            Some(price) => Money::Usd(price.cost(prompt, completion)),
            None if prompt == 0 && completion == 0 => Money::Usd(0.0),
            None => Money::Unknown,
        }
    }
}

/// An amount of money that may be unknown (a model without a price was used).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Money {
    Usd(f64),
    Unknown,
}

impl Money {
    /// Nothing spent.
    pub const ZERO: Money = Money::Usd(0.0);

    /// The sum; unknown when either part is.
    pub fn plus(self, other: Money) -> Money {
        match (self, other) {
            (Money::Usd(a), Money::Usd(b)) => Money::Usd(a + b),
            _ => Money::Unknown,
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Money::Usd(usd) if *usd == 0.0 => write!(f, "$0"),
            Money::Usd(usd) if *usd < 0.01 => write!(f, "${usd:.5}"),
            Money::Usd(usd) => write!(f, "${usd:.2}"),
            Money::Unknown => write!(f, "unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_dated_variants_overrides_and_local_models() {
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "gpt-4o".to_owned(),
            Price {
                input: 1.0,
                output: 2.0,
            },
        );
        overrides.insert(
            "my-model".to_owned(),
            Price {
                input: 0.5,
                output: 0.5,
            },
        );
        let table = PriceTable::new(&overrides);
        assert_eq!(table.price("gpt-4o").unwrap().input, 1.0);
        assert_eq!(table.price("gpt-4o-2024-08-06").unwrap().input, 1.0);
        // A longer family name wins over its prefix, and a non-dated suffix is another model.
        assert_eq!(table.price("gpt-4o-mini-2024-07-18").unwrap().input, 0.15);
        assert_eq!(table.price("gpt-3.5-turbo-0125").unwrap().output, 1.5);
        assert_eq!(table.price("gpt-4o-audio"), None);
        assert_eq!(table.price("my-model").unwrap().output, 0.5);
        assert_eq!(
            table.price("local:model.gguf").unwrap().cost(1000, 1000),
            0.0
        );
    }

    #[test]
    fn an_unknown_price_makes_the_cost_unknown_not_zero() {
        let table = PriceTable::new(&BTreeMap::new());
        assert_eq!(table.cost("mystery", 10, 10), Money::Unknown);
        assert_eq!(table.cost("mystery", 0, 0), Money::ZERO);
        let known = table.cost("gpt-4o", 1_000_000, 1_000_000);
        assert_eq!(known, Money::Usd(12.5));
        assert_eq!(known.plus(Money::Unknown), Money::Unknown);
        assert_eq!(known.to_string(), "$12.50");
        assert_eq!(Money::Usd(0.00123).to_string(), "$0.00123");
        assert_eq!(Money::Unknown.to_string(), "unknown");
    }
}
