//! The shared-prefix KV cache: keys and values of prompt prefixes a model has already computed,
//! so that a prompt beginning with the same tokens, in the same batch or in a later call,
//! skips them in prefill.
//!
//! DRPO's traffic repeats itself: every base answer of a level starts with the same system
//! prompt, every aspect selection with the same instructions and catalogue, and the several
//! choices of one request with the whole prompt. Serving engines cache such prefixes (vLLM's
//! automatic prefix caching, SGLang's radix attention); this is the same idea for the local
//! decoder.
//!
//! Prompts are cut into blocks of [`BLOCK`] tokens. A block is keyed by its tokens and the block
//! before it, so a key names the whole prefix up to its end exactly (no hashes, so no
//! collisions), and the blocks form a tree rooted at the prompts' first tokens. Only whole
//! blocks are kept. A cache belongs to one loaded model, whose identity its entries therefore
//! carry implicitly.
//!
//! Memory is bounded by a token budget. When a new block would exceed it, the least recently
//! used block that no other block continues goes first (among blocks last used together, the
//! deepest): a block is never evicted before its continuations, which could not be reached
//! without it.
//!
//! Reusing a block is exact: a position's keys and values depend only on the tokens up to it,
//! and the decoder computes a row's values the same whatever the other rows of its batch and
//! wherever its forward pass starts (tests in `generate.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::llama::SlotValues;

/// Tokens per cached block.
pub const BLOCK: usize = 16;

/// Rough cost, in token rows, of one extra prefill forward pass (it reads every weight once
/// more): [`plan_groups`] splits a batch only where that saves more than this.
pub const PASS_COST: usize = 8;

/// One block of a cached prefix.
struct Node {
    /// The block before it (`None` for a prompt's first block).
    parent: Option<u64>,
    tokens: [u32; BLOCK],
    values: Arc<SlotValues>,
    /// Blocks that continue this one.
    children: usize,
    /// The clock of its last use.
    last_used: u64,
    /// Blocks before it.
    depth: usize,
}

/// Counts of what a model's prefills computed and reused, since it was loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefillStats {
    /// Tokens in the prompts prefilled (every choice's row counted).
    pub prompt_tokens: u64,
    /// Token positions run through the model in prefill forward passes: every row of a pass
    /// times its length, padding included (the compute actually spent).
    pub computed_tokens: u64,
    /// Prompt tokens whose keys and values came from the cache.
    pub reused_tokens: u64,
}

/// The cache of one model (see the module documentation).
pub struct PrefixCache {
    budget_blocks: usize,
    nodes: HashMap<u64, Node>,
    index: HashMap<(Option<u64>, [u32; BLOCK]), u64>,
    next_id: u64,
    clock: u64,
    /// What prefills computed and reused.
    pub stats: PrefillStats,
}

impl PrefixCache {
    /// An empty cache holding at most `budget_tokens` tokens (rounded down to whole blocks; 0
    /// keeps nothing).
    pub fn new(budget_tokens: usize) -> Self {
        Self {
            budget_blocks: budget_tokens / BLOCK,
            nodes: HashMap::new(),
            index: HashMap::new(),
            next_id: 0,
            clock: 0,
            stats: PrefillStats::default(),
        }
    }

    /// Whether the cache may keep anything.
    pub fn is_enabled(&self) -> bool {
        self.budget_blocks > 0
    }

    /// The most tokens it holds.
    pub fn budget_tokens(&self) -> usize {
        self.budget_blocks * BLOCK
    }

    /// Tokens held.
    pub fn tokens(&self) -> usize {
        self.nodes.len() * BLOCK
    }

    /// The cached blocks that begin `tokens`, in order, covering at most `limit` tokens; marks
    /// them used.
    pub fn lookup(&mut self, tokens: &[u32], limit: usize) -> Vec<Arc<SlotValues>> {
        self.clock += 1;
        let mut found = Vec::new();
        let mut parent = None;
        for block in tokens[..limit.min(tokens.len())].chunks_exact(BLOCK) {
            let Some(&id) = self.index.get(&(parent, block_key(block))) else {
                break;
            };
            let node = self.nodes.get_mut(&id).expect("indexed nodes exist");
            node.last_used = self.clock;
            found.push(node.values.clone());
            parent = Some(id);
        }
        found
    }

    /// Caches the whole blocks of `tokens` not cached yet, `values(i)` giving block `i`'s keys
    /// and values (asked only for the blocks missing), evicting as the budget requires.
    pub fn insert(&mut self, tokens: &[u32], mut values: impl FnMut(usize) -> SlotValues) {
        if !self.is_enabled() {
            return;
        }
        self.clock += 1;
        let mut parent = None;
        for (i, block) in tokens.chunks_exact(BLOCK).enumerate() {
            let key = (parent, block_key(block));
            let id = match self.index.get(&key) {
                Some(&id) => id,
                None => {
                    if self.nodes.len() >= self.budget_blocks && !self.evict_one(parent) {
                        return;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    if let Some(p) = parent {
                        self.nodes.get_mut(&p).expect("parents exist").children += 1;
                    }
                    self.nodes.insert(
                        id,
                        Node {
                            parent,
                            tokens: key.1,
                            values: Arc::new(values(i)),
                            children: 0,
                            last_used: 0,
                            depth: i,
                        },
                    );
                    self.index.insert(key, id);
                    id
                }
            };
            self.nodes.get_mut(&id).expect("just found").last_used = self.clock;
            parent = Some(id);
        }
    }

    /// Evicts the least recently used block that nothing continues, sparing `keep` (the block
    /// an insertion is about to continue); false if there is none.
    fn evict_one(&mut self, keep: Option<u64>) -> bool {
        let victim = self
            .nodes
            .iter()
            .filter(|(id, node)| node.children == 0 && Some(**id) != keep)
            .min_by_key(|(_, node)| (node.last_used, std::cmp::Reverse(node.depth)))
            .map(|(&id, _)| id);
        let Some(id) = victim else {
            return false;
        };
        let node = self.nodes.remove(&id).expect("chosen among the nodes");
        self.index.remove(&(node.parent, node.tokens));
        if let Some(p) = node.parent {
            self.nodes
                .get_mut(&p)
                .expect("parents outlive children")
                .children -= 1;
        }
        true
    }
}

/// A whole block's tokens as a key.
fn block_key(block: &[u32]) -> [u32; BLOCK] {
    block.try_into().expect("whole blocks only")
}

/// The longest whole-block prefix of each prompt that another prompt of the batch shares,
/// where it goes beyond what the cache holds (`cached[i]` tokens) and leaves at least one token
/// of the prompt to compute: `(prompt, length)` pairs, none of them a prefix of another, so
/// computing each once (and caching it) lets every prompt sharing it skip it.
pub fn shared_prefixes(prompts: &[&[u32]], cached: &[usize]) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| prompts[i]);
    let common = |a: usize, b: usize| {
        prompts[a]
            .iter()
            .zip(prompts[b])
            .take_while(|(x, y)| x == y)
            .count()
    };
    let mut candidates: Vec<(usize, usize)> = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let before = k.checked_sub(1).map_or(0, |p| common(order[p], i));
        let after = order.get(k + 1).map_or(0, |&n| common(i, n));
        let usable = (prompts[i].len() - 1) / BLOCK * BLOCK;
        let shared = (before.max(after) / BLOCK * BLOCK).min(usable);
        if shared > cached[i] {
            candidates.push((i, shared));
        }
    }
    // Keep the prefixes no other candidate contains (the first of equal ones).
    let contains = |(i, len): (usize, usize), (j, other): (usize, usize)| {
        len >= other && prompts[i][..other] == prompts[j][..other]
    };
    candidates
        .iter()
        .enumerate()
        .filter(|&(a, &this)| {
            !candidates
                .iter()
                .enumerate()
                .any(|(b, &that)| b != a && contains(that, this) && (that.1 > this.1 || b < a))
        })
        .map(|(_, &c)| c)
        .collect()
}

/// Splits a batch into groups prefilled by separate forward passes, to spend the fewest token
/// rows: row `i` must be computed from slot `starts[i]` to `end` (its slots before that are
/// padding or cached), a group's pass runs every row from the group's smallest start, and each
/// pass costs [`PASS_COST`] more. Returns the groups (row indices, by start), in order of
/// their starts.
pub fn plan_groups(starts: &[usize], end: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..starts.len()).collect();
    order.sort_by_key(|&i| starts[i]);
    let n = order.len();
    // best[k]: the least cost of the rows order[k..], and where its first group ends.
    let mut best = vec![(0usize, n); n + 1];
    for k in (0..n).rev() {
        let from = starts[order[k]];
        best[k] = (k + 1..=n)
            .map(|e| ((e - k) * (end - from) + PASS_COST + best[e].0, e))
            .min()
            .expect("at least one end");
    }
    let mut groups = Vec::new();
    let mut k = 0;
    while k < n {
        let e = best[k].1;
        groups.push(order[k..e].to_vec());
        k = e;
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(tag: usize) -> SlotValues {
        SlotValues::new(
            BLOCK,
            [1, 1],
            vec![(vec![tag as f32; BLOCK], vec![tag as f32; BLOCK])],
        )
    }

    /// Which of [`values`] `v` is.
    fn tag(v: &SlotValues) -> usize {
        (0..64).find(|&t| *v == values(t)).expect("a tagged block")
    }

    #[test]
    fn lookup_finds_the_longest_cached_prefix_in_whole_blocks() {
        let mut cache = PrefixCache::new(10 * BLOCK);
        let prompt: Vec<u32> = (0..40).collect();
        let mut asked = Vec::new();
        cache.insert(&prompt, |i| {
            asked.push(i);
            values(i)
        });
        assert_eq!(asked, [0, 1], "only whole blocks are kept");
        assert_eq!(cache.tokens(), 2 * BLOCK);

        let found = cache.lookup(&prompt, 40);
        assert_eq!(found.iter().map(|v| tag(v)).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(cache.lookup(&prompt, 31).len(), 1, "the limit is respected");
        let mut other = prompt.clone();
        other[20] = 999;
        assert_eq!(cache.lookup(&other, 40).len(), 1, "a change ends the match");
        other[3] = 999;
        assert!(cache.lookup(&other, 40).is_empty());

        // A prompt sharing the first block only asks for its own second block.
        let mut asked = Vec::new();
        let mut branch = prompt.clone();
        branch[17] = 7;
        cache.insert(&branch, |i| {
            asked.push(i);
            values(10 + i)
        });
        assert_eq!(asked, [1]);
        assert_eq!(tag(&cache.lookup(&branch, 40)[1]), 11);
        assert_eq!(tag(&cache.lookup(&prompt, 40)[1]), 1);
    }

    #[test]
    fn eviction_keeps_the_budget_and_takes_least_recently_used_leaves_first() {
        let mut cache = PrefixCache::new(3 * BLOCK);
        let a: Vec<u32> = (0..32).collect();
        let mut b = a.clone();
        b[20] = 500;
        cache.insert(&a, values);
        cache.insert(&b, values);
        assert_eq!(cache.tokens(), 3 * BLOCK);
        // `a` is used again: `b`'s own block is now the least recently used leaf.
        assert_eq!(cache.lookup(&a, 32).len(), 2);
        let c: Vec<u32> = (1000..1016).collect();
        cache.insert(&c, values);
        assert_eq!(cache.tokens(), 3 * BLOCK);
        assert_eq!(cache.lookup(&a, 32).len(), 2);
        assert_eq!(cache.lookup(&b, 32).len(), 1, "b's second block went");
        assert_eq!(cache.lookup(&c, 16).len(), 1);
        // A long prompt evicts leaves before their parents and never its own parent block.
        let d: Vec<u32> = (2000..2064).collect();
        cache.insert(&d, values);
        assert_eq!(cache.tokens(), 3 * BLOCK);
        assert_eq!(
            cache.lookup(&d, 64).len(),
            3,
            "the budget holds d's first 3 blocks"
        );
        assert!(cache.lookup(&a, 32).is_empty());
    }

    #[test]
    fn a_cache_without_budget_keeps_nothing() {
        let mut cache = PrefixCache::new(BLOCK - 1);
        assert!(!cache.is_enabled());
        cache.insert(&[1; 64], |_| unreachable!("nothing is read"));
        assert!(cache.lookup(&[1; 64], 64).is_empty());
    }

    #[test]
    fn shared_prefixes_are_maximal_whole_blocks_leaving_a_token() {
        let system: Vec<u32> = (0..40).collect();
        let with = |tail: &[u32]| [system.as_slice(), tail].concat();
        let p0 = with(&[1, 2, 3]);
        let p1 = with(&[4, 5]);
        let p2: Vec<u32> = (100..150).collect();
        let p3 = p2.clone();
        let p4: Vec<u32> = (0..20).collect();
        let prompts = [&p0[..], &p1, &p2, &p3, &p4];
        let got = shared_prefixes(&prompts, &[0; 5]);
        // p0 and p1 share 40 tokens (32 whole); p2 and p3 are equal, 50 tokens of which 48
        // whole, one left to compute; p4 shares 20 with p0/p1 (16 whole), inside the 32.
        assert_eq!(got, [(0, 32), (2, 48)]);
        // What the cache holds already is not asked for again.
        assert_eq!(shared_prefixes(&prompts, &[32, 32, 0, 0, 16]), [(2, 48)]);
        // A prompt of one block shares none of it (its last token must be computed).
        let short: Vec<u32> = (0..16).collect();
        assert!(shared_prefixes(&[&short, &short], &[0, 0]).is_empty());
    }

    #[test]
    fn groups_split_only_where_a_pass_saves_more_than_it_costs() {
        // Three rows with long cached prefixes and one without: two passes.
        let groups = plan_groups(&[90, 0, 92, 95], 100);
        assert_eq!(groups, [vec![1], vec![0, 2, 3]]);
        // Starts close together: one pass.
        assert_eq!(plan_groups(&[10, 12, 11], 100), [vec![0, 2, 1]]);
        assert_eq!(plan_groups(&[], 5), Vec::<Vec<usize>>::new());
    }
}
