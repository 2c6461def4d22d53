//! Training data: parsers for the query files (pure functions over text; the host reads the
//! files), the published proportional sampling of the three pools, and a seeded shuffle.
//!
//! The published code draws with Python's unseeded `random.sample` and shuffles with numpy's
//! `seed(42)`, so its order depends on the process (defect 6). Here every draw comes from
//! [`SplitMix64`] seeded with the run's seed: the same seed gives the same stream everywhere.
//! To reproduce a published order exactly, pass an explicit ordered list (a JSONL manifest),
//! which is kept as it is.

use crate::types::{Example, Query};
use serde_json::Value;
use std::collections::BTreeSet;

/// The demo training queries shipped with the project (`data/demo_queries.jsonl`, written for
/// it): knowledge, advice, writing, coding, reasoning, and harmful requests to refuse.
pub const DEMO_QUERIES_JSONL: &str = include_str!("../data/demo_queries.jsonl");

/// The demo in-context examples (`data/demo_examples.json`, written for the project).
pub const DEMO_EXAMPLES_JSON: &str = include_str!("../data/demo_examples.json");

/// A small deterministic generator: SplitMix64 (Steele, Lea and Flood, 2014), the seeding
/// generator of the xoshiro family. One 64-bit state, a Weyl increment and a 64-bit mix; its
/// output passes BigCrush, and it is trivial to reimplement in any language, which keeps a
/// run's query order reproducible outside this crate too.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (`n` > 0), without modulo bias: draws falling in the
    /// incomplete last block of `n` values are rejected.
    pub fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }
}

/// Shuffles in place (Fisher–Yates, from the last position down).
pub fn shuffle<T>(items: &mut [T], rng: &mut SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i + 1);
        items.swap(i, j);
    }
}

/// `n` distinct items drawn uniformly, in draw order (like Python's `random.sample`).
pub fn sample<T: Clone>(items: &[T], n: usize, rng: &mut SplitMix64) -> Vec<T> {
    let mut index: Vec<usize> = (0..items.len()).collect();
    let n = n.min(items.len());
    for i in 0..n {
        let j = i + rng.below(items.len() - i);
        index.swap(i, j);
    }
    index[..n].iter().map(|&i| items[i].clone()).collect()
}

/// Parses a JSONL file of queries, one `{"id", "text", "tags"}` object per line (blank lines
/// skipped); `query` may stand for `text`, so an answers file (`{query, answer}`) reads as its
/// queries. `id` defaults to `q<line number>`, `tags` to none; ids must be unique.
pub fn parse_queries_jsonl(text: &str) -> Result<Vec<Query>, String> {
    let mut queries = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        let text = value
            .get("text")
            .or_else(|| value.get("query"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("line {}: no \"text\" (or \"query\") string", i + 1))?;
        let id = match value.get("id") {
            None | Some(Value::Null) => format!("q{}", i + 1),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        let tags = match value.get("tags") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(tags)) => tags
                .iter()
                .map(|t| t.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| format!("line {}: tags must be strings", i + 1))?,
            Some(_) => return Err(format!("line {}: tags must be a list", i + 1)),
        };
        if !ids.insert(id.clone()) {
            return Err(format!("line {}: duplicate id {id:?}", i + 1));
        }
        queries.push(Query {
            id,
            text: text.to_string(),
            tags,
        });
    }
    Ok(queries)
}

fn json_array(text: &str, file: &str) -> Result<Vec<Value>, String> {
    match serde_json::from_str(text) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(_) => Err(format!("{file}: expected a JSON array")),
        Err(e) => Err(format!("{file}: {e}")),
    }
}

fn field<'a>(item: &'a Value, name: &str, file: &str, i: usize) -> Result<&'a str, String> {
    item.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{file}: item {i} has no \"{name}\" string"))
}

/// The published `alpaca_train.json`: an array of `{instruction}`. Ids are `alpaca-<index>`,
/// tagged `alpaca`.
pub fn parse_alpaca(text: &str) -> Result<Vec<Query>, String> {
    let file = "alpaca_train.json";
    json_array(text, file)?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            Ok(Query {
                id: format!("alpaca-{i}"),
                text: field(item, "instruction", file, i)?.to_string(),
                tags: vec!["alpaca".to_string()],
            })
        })
        .collect()
}

/// The published `lima_subsample_train.json`: an array of `{query, category}`. Ids are
/// `lima-<index>`, tagged `lima` and the category.
pub fn parse_lima(text: &str) -> Result<Vec<Query>, String> {
    let file = "lima_subsample_train.json";
    json_array(text, file)?
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut tags = vec!["lima".to_string()];
            if let Some(category) = item.get("category").and_then(Value::as_str) {
                tags.push(category.to_string());
            }
            Ok(Query {
                id: format!("lima-{i}"),
                text: field(item, "query", file, i)?.to_string(),
                tags,
            })
        })
        .collect()
}

/// The published `mal_train.txt`: one harmful request per line, trimmed; blank lines skipped.
/// Ids are `mal-<line index>`, tagged `harmful`.
pub fn parse_mal(text: &str) -> Vec<Query> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| Query {
            id: format!("mal-{i}"),
            text: line.trim().to_string(),
            tags: vec!["harmful".to_string()],
        })
        .collect()
}

/// A JSON object's entries in file order (serde_json's own map would sort them, and the
/// published examples file is an object whose order decides the examples used without
/// retrieval).
struct OrderedEntries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for OrderedEntries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OrderedEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedEntries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(OrderedEntries(entries))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// In-context examples: an array of `{query, answer}`, or the published object
/// `{query: answer}`, kept in file order.
pub fn parse_examples(text: &str) -> Result<Vec<Example>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("examples: {e}"))?;
    match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                Ok(Example {
                    query: field(item, "query", "examples", i)?.to_string(),
                    answer: field(item, "answer", "examples", i)?.to_string(),
                })
            })
            .collect(),
        Value::Object(_) => {
            let OrderedEntries(entries) =
                serde_json::from_str(text).map_err(|e| format!("examples: {e}"))?;
            entries
                .into_iter()
                .map(|(query, answer)| match answer {
                    Value::String(answer) => Ok(Example { query, answer }),
                    _ => Err(format!("examples: the answer to {query:?} is not a string")),
                })
                .collect()
        }
        _ => Err("examples: expected an array or an object".to_string()),
    }
}

/// How many queries each pool gives for `n` in all (step 2 of the published stream):
/// `floor(n / total * size)` each, then the shortfall handed out one at a time in the order
/// alpaca, lima, harmful, skipping full pools. `n` is capped at the total.
pub fn pool_counts(n: usize, sizes: [usize; 3]) -> [usize; 3] {
    let total: usize = sizes.iter().sum();
    let n = n.min(total);
    if total == 0 {
        return [0; 3];
    }
    let mut counts = sizes.map(|s| n * s / total);
    let mut short = n - counts.iter().sum::<usize>();
    while short > 0 {
        for (count, size) in counts.iter_mut().zip(sizes) {
            if short > 0 && *count < size {
                *count += 1;
                short -= 1;
            }
        }
    }
    counts
}

/// Interleaves pools in chunks (step 4 of the published stream): each round takes
/// `max(floor(10 * len / total), 1)` queries from each pool in turn until all are used.
pub fn interleave<Q: Clone>(pools: Vec<Vec<Q>>) -> Vec<Q> {
    let total: usize = pools.iter().map(Vec::len).sum();
    if total == 0 {
        return Vec::new();
    }
    let chunks: Vec<usize> = pools
        .iter()
        .map(|p| (10 * p.len() / total).max(1))
        .collect();
    let mut positions = vec![0usize; pools.len()];
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        for (i, pool) in pools.iter().enumerate() {
            let end = (positions[i] + chunks[i]).min(pool.len());
            out.extend_from_slice(&pool[positions[i]..end]);
            positions[i] = end;
        }
    }
    out
}

/// The published training stream from the three pools: proportional counts for `n`, a seeded
/// draw from each pool (alpaca, lima, harmful, in that order from one generator), chunked
/// interleaving in the order lima, harmful, alpaca, then a seeded shuffle of the whole list.
pub fn published_stream<Q: Clone>(
    alpaca: &[Q],
    lima: &[Q],
    harmful: &[Q],
    n: usize,
    seed: u64,
) -> Vec<Q> {
    let [na, nl, nh] = pool_counts(n, [alpaca.len(), lima.len(), harmful.len()]);
    let mut rng = SplitMix64::new(seed);
    let alpaca = sample(alpaca, na, &mut rng);
    let lima = sample(lima, nl, &mut rng);
    let harmful = sample(harmful, nh, &mut rng);
    let mut stream = interleave(vec![lima, harmful, alpaca]);
    shuffle(&mut stream, &mut rng);
    stream
}

/// The user's training data, as the host holds it for a run: what it hands a strategy's
/// `queries(limit)` call. Generic over the query type, so the host keeps its own.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainingData<Q = Query> {
    /// An ordered list (a JSONL file, or the demo queries): kept in its order.
    Listed(Vec<Q>),
    /// The published layout's three pools, drawn from with [`published_stream`].
    Published {
        /// `alpaca_train.json`.
        alpaca: Vec<Q>,
        /// `lima_subsample_train.json`.
        lima: Vec<Q>,
        /// `mal_train.txt`: requests to refuse.
        harmful: Vec<Q>,
    },
}

impl<Q> Default for TrainingData<Q> {
    /// No queries.
    fn default() -> Self {
        TrainingData::Listed(Vec::new())
    }
}

impl<Q: Clone> TrainingData<Q> {
    /// At most `limit` queries (all when `None`): the first of a list, or the published draw
    /// from the pools with `seed`.
    pub fn draw(&self, limit: Option<u32>, seed: u64) -> Vec<Q> {
        let limit = limit.map_or(usize::MAX, |n| n as usize);
        match self {
            TrainingData::Listed(queries) => queries.iter().take(limit).cloned().collect(),
            TrainingData::Published {
                alpaca,
                lima,
                harmful,
            } => {
                let total = alpaca.len() + lima.len() + harmful.len();
                published_stream(alpaca, lima, harmful, limit.min(total), seed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(prefix: &str, n: usize) -> Vec<Query> {
        (0..n)
            .map(|i| Query {
                id: format!("{prefix}-{i}"),
                text: format!("{prefix} {i}"),
                tags: vec![],
            })
            .collect()
    }

    #[test]
    fn splitmix_reference_values() {
        // First outputs for seed 1234567, from the reference implementation.
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = SplitMix64::new(7);
        let mut seen = [false; 6];
        for _ in 0..600 {
            seen[r.below(6)] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(r.below(1), 0);
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<u32> = (0..50).collect();
        let mut b = a.clone();
        shuffle(&mut a, &mut SplitMix64::new(3));
        shuffle(&mut b, &mut SplitMix64::new(3));
        assert_eq!(a, b);
        assert_ne!(a, (0..50).collect::<Vec<_>>());
        let mut c = (0..50).collect::<Vec<u32>>();
        shuffle(&mut c, &mut SplitMix64::new(4));
        assert_ne!(a, c);
        a.sort();
        assert_eq!(a, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn sample_draws_distinct_items() {
        let items: Vec<u32> = (0..10).collect();
        let mut s = sample(&items, 4, &mut SplitMix64::new(1));
        assert_eq!(s.len(), 4);
        s.sort();
        s.dedup();
        assert_eq!(s.len(), 4);
        assert_eq!(sample(&items, 20, &mut SplitMix64::new(1)).len(), 10);
    }

    #[test]
    fn published_counts() {
        assert_eq!(pool_counts(180, [86, 52, 42]), [86, 52, 42]);
        // f = 20/180: 9 + 5 + 4 = 18, shortfall 2 to alpaca then lima.
        assert_eq!(pool_counts(20, [86, 52, 42]), [10, 6, 4]);
        assert_eq!(pool_counts(1, [86, 52, 42]), [1, 0, 0]);
        assert_eq!(pool_counts(500, [86, 52, 42]), [86, 52, 42]);
        assert_eq!(pool_counts(3, [0, 0, 5]), [0, 0, 3]);
        assert_eq!(pool_counts(3, [0, 0, 0]), [0, 0, 0]);
    }

    #[test]
    fn interleave_uses_published_chunks() {
        // 52/42/86 → chunks of 2, 2 and 4.
        let out = interleave(vec![pool("lima", 52), pool("mal", 42), pool("alpaca", 86)]);
        assert_eq!(out.len(), 180);
        let head: Vec<&str> = out[..10].iter().map(|q| q.id.as_str()).collect();
        assert_eq!(
            head,
            [
                "lima-0", "lima-1", "mal-0", "mal-1", "alpaca-0", "alpaca-1", "alpaca-2",
                "alpaca-3", "lima-2", "lima-3"
            ]
        );
        assert!(interleave::<Query>(vec![vec![], vec![]]).is_empty());
    }

    #[test]
    fn a_list_gives_its_first_queries_and_the_pools_the_published_draw() {
        let listed = TrainingData::Listed(pool("q", 5));
        assert_eq!(listed.draw(Some(2), 9), pool("q", 2));
        assert_eq!(listed.draw(None, 9), pool("q", 5));
        assert_eq!(listed.draw(Some(50), 9), pool("q", 5));
        let (a, l, m) = (pool("a", 40), pool("l", 10), pool("m", 10));
        let published = TrainingData::Published {
            alpaca: a.clone(),
            lima: l.clone(),
            harmful: m.clone(),
        };
        assert_eq!(
            published.draw(Some(20), 3),
            published_stream(&a, &l, &m, 20, 3)
        );
        assert_eq!(published.draw(None, 3).len(), 60);
    }

    #[test]
    fn published_stream_is_proportional_and_seeded() {
        let (a, l, m) = (pool("alpaca", 86), pool("lima", 52), pool("mal", 42));
        let s = published_stream(&a, &l, &m, 20, 0);
        assert_eq!(s.len(), 20);
        let count = |p: &str| s.iter().filter(|q| q.id.starts_with(p)).count();
        assert_eq!((count("alpaca"), count("lima"), count("mal")), (10, 6, 4));
        assert_eq!(s, published_stream(&a, &l, &m, 20, 0));
        assert_ne!(s, published_stream(&a, &l, &m, 20, 1));
        let all = published_stream(&a, &l, &m, 180, 5);
        let mut ids: Vec<&str> = all.iter().map(|q| q.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 180);
    }

    #[test]
    fn jsonl_queries() {
        let text =
            "{\"id\": \"a\", \"text\": \"Hi?\", \"tags\": [\"x\"]}\n\n{\"text\": \"Bye?\"}\n";
        let q = parse_queries_jsonl(text).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!((q[0].id.as_str(), q[0].tags.len()), ("a", 1));
        assert_eq!((q[1].id.as_str(), q[1].text.as_str()), ("q3", "Bye?"));
        assert!(
            parse_queries_jsonl("{\"id\": \"a\"}")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(parse_queries_jsonl("nope").is_err());
        assert!(
            parse_queries_jsonl("{\"id\":\"a\",\"text\":\"x\"}\n{\"id\":\"a\",\"text\":\"y\"}")
                .unwrap_err()
                .contains("duplicate")
        );
        assert!(parse_queries_jsonl("{\"text\":\"x\",\"tags\":[1]}").is_err());
        let answered = parse_queries_jsonl("{\"query\": \"Why?\", \"answer\": \"So.\"}").unwrap();
        assert_eq!(answered[0].text, "Why?");
    }

    #[test]
    fn published_layout() {
        let a = parse_alpaca(r#"[{"instruction": "Where is Lima?"}, {"instruction": "Sum 2+2."}]"#)
            .unwrap();
        assert_eq!(
            (a[1].id.as_str(), a[1].text.as_str()),
            ("alpaca-1", "Sum 2+2.")
        );
        let l = parse_lima(r#"[{"query": "How?", "category": "wikihow"}]"#).unwrap();
        assert_eq!(l[0].tags, ["lima", "wikihow"]);
        let m = parse_mal("  do harm  \n\nmore harm\n");
        assert_eq!(m.len(), 2);
        assert_eq!((m[1].id.as_str(), m[0].text.as_str()), ("mal-2", "do harm"));
        assert_eq!(m[0].tags, ["harmful"]);
        assert!(parse_alpaca(r#"[{"query": "x"}]"#).is_err());
        assert!(parse_lima("{}").is_err());
    }

    #[test]
    fn demo_data_is_complete() {
        let queries = parse_queries_jsonl(DEMO_QUERIES_JSONL).unwrap();
        assert!(queries.len() >= 60);
        for tag in [
            "knowledge",
            "advice",
            "writing",
            "coding",
            "reasoning",
            "harmful",
        ] {
            let n = queries
                .iter()
                .filter(|q| q.tags.iter().any(|t| t == tag))
                .count();
            assert!(n >= 8, "{tag}: {n}");
        }
        let examples = parse_examples(DEMO_EXAMPLES_JSON).unwrap();
        assert!(examples.len() >= 8);
        for e in &examples {
            assert!(e.answer.starts_with("<START>\n") && e.answer.ends_with("\n<END>"));
        }
    }

    #[test]
    fn examples_both_shapes() {
        let arr = parse_examples(r#"[{"query": "q", "answer": "a"}]"#).unwrap();
        assert_eq!(arr[0].answer, "a");
        let obj = parse_examples(r#"{"zz": "a1", "aa": "a2"}"#).unwrap();
        assert_eq!((obj[0].query.as_str(), obj[1].query.as_str()), ("zz", "aa"));
        assert!(parse_examples(r#"{"q1": 3}"#).is_err());
        assert!(parse_examples("3").is_err());
    }
}
