//! The Monte-Carlo tree itself: UCT selection, expansion and backpropagation, with no model
//! calls, so the algorithm is tested on scripted rewards.

/// One node's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// `None` for the root.
    pub parent: Option<usize>,
    /// Distance from the root.
    pub depth: u32,
    /// Children, in creation order.
    pub children: Vec<usize>,
    /// Whether the node was expanded (even if the optimizer gave it no usable child).
    pub expanded: bool,
    /// How many backpropagated rewards passed through the node.
    pub visits: u32,
    /// Their sum.
    pub total: f64,
    /// The node's own reward (its judged answer).
    pub reward: f64,
}

impl Stats {
    /// The mean backpropagated reward; the node's own reward before its first visit.
    pub fn value(&self) -> f64 {
        if self.visits == 0 {
            self.reward
        } else {
            self.total / f64::from(self.visits)
        }
    }
}

/// A search tree whose node ids are indices, the root being 0.
#[derive(Clone, Debug)]
pub struct Tree {
    /// The nodes, by id.
    pub nodes: Vec<Stats>,
}

impl Tree {
    /// A tree holding only the root, with its reward.
    pub fn new(root_reward: f64) -> Tree {
        Tree {
            nodes: vec![Stats {
                parent: None,
                depth: 0,
                children: Vec::new(),
                expanded: false,
                visits: 0,
                total: 0.0,
                reward: root_reward,
            }],
        }
    }

    /// UCT of `child`: its mean value plus `exploration · √(ln N(parent) / N(child))`; an
    /// unvisited child is infinitely urgent.
    pub fn uct(&self, child: usize, exploration: f64) -> f64 {
        let node = &self.nodes[child];
        if node.visits == 0 {
            return f64::INFINITY;
        }
        let parent_visits = node
            .parent
            .map_or(node.visits, |p| self.nodes[p].visits)
            .max(1);
        node.value()
            + exploration * ((f64::from(parent_visits)).ln() / f64::from(node.visits)).sqrt()
    }

    /// Walks from the root through expanded nodes, taking the child of highest UCT (the first
    /// one on ties), to the node to expand next: one that is not expanded yet, or a leaf at the
    /// depth limit, or an expanded node that got no children.
    pub fn select(&self, exploration: f64, max_depth: u32) -> usize {
        let mut at = 0;
        loop {
            let node = &self.nodes[at];
            if !node.expanded || node.children.is_empty() || node.depth >= max_depth {
                return at;
            }
            let mut best = node.children[0];
            let mut best_uct = self.uct(best, exploration);
            for &child in &node.children[1..] {
                let uct = self.uct(child, exploration);
                if uct > best_uct {
                    (best, best_uct) = (child, uct);
                }
            }
            at = best;
        }
    }

    /// Whether `node` may still get children under the depth limit.
    pub fn can_expand(&self, node: usize, max_depth: u32) -> bool {
        let n = &self.nodes[node];
        !n.expanded && n.depth < max_depth
    }

    /// Adds one child per reward under `parent` and marks it expanded; returns the new ids.
    pub fn expand(&mut self, parent: usize, rewards: &[f64]) -> Vec<usize> {
        let depth = self.nodes[parent].depth + 1;
        self.nodes[parent].expanded = true;
        let mut ids = Vec::new();
        for &reward in rewards {
            let id = self.nodes.len();
            self.nodes.push(Stats {
                parent: Some(parent),
                depth,
                children: Vec::new(),
                expanded: false,
                visits: 0,
                total: 0.0,
                reward,
            });
            self.nodes[parent].children.push(id);
            ids.push(id);
        }
        ids
    }

    /// Adds `reward` to `leaf` and every ancestor, one visit each.
    pub fn backpropagate(&mut self, leaf: usize, reward: f64) {
        let mut at = Some(leaf);
        while let Some(id) = at {
            let node = &mut self.nodes[id];
            node.visits += 1;
            node.total += reward;
            at = node.parent;
        }
    }

    /// Node ids from the root to `id`.
    pub fn path(&self, id: usize) -> Vec<usize> {
        let mut ids = vec![id];
        let mut at = self.nodes[id].parent;
        while let Some(p) = at {
            ids.push(p);
            at = self.nodes[p].parent;
        }
        ids.reverse();
        ids
    }

    /// The score of the path to `id`: the mean reward of its nodes after the root (the root's
    /// own reward for the root), as DRPO scores a beam's path.
    pub fn path_score(&self, id: usize) -> f64 {
        let path = self.path(id);
        if path.len() == 1 {
            return self.nodes[id].reward;
        }
        let rewards: Vec<f64> = path[1..].iter().map(|&i| self.nodes[i].reward).collect();
        rewards.iter().sum::<f64>() / rewards.len() as f64
    }

    /// The node with the best path score (the earliest one on ties).
    pub fn best(&self) -> usize {
        let mut best = 0;
        for id in 1..self.nodes.len() {
            if self.path_score(id) > self.path_score(best) {
                best = id;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root with three children of rewards 2, 4, 3.
    fn fanned() -> Tree {
        let mut tree = Tree::new(3.0);
        tree.expand(0, &[2.0, 4.0, 3.0]);
        tree
    }

    #[test]
    fn uct_is_the_mean_plus_the_exploration_bonus() {
        let mut tree = fanned();
        assert_eq!(tree.uct(1, 1.0), f64::INFINITY, "unvisited");
        tree.backpropagate(1, 2.0);
        tree.backpropagate(2, 4.0);
        tree.backpropagate(2, 5.0);
        // Child 2: mean 4.5 over 2 visits, root visited 3 times.
        let expected = 4.5 + 1.5 * (3f64.ln() / 2.0).sqrt();
        assert!((tree.uct(2, 1.5) - expected).abs() < 1e-12);
        assert_eq!(tree.uct(2, 0.0), 4.5);
    }

    #[test]
    fn selection_visits_unvisited_children_first_then_follows_uct() {
        let mut tree = fanned();
        assert_eq!(
            tree.select(1.0, 5),
            1,
            "the first unvisited child, in order"
        );
        tree.backpropagate(1, 2.0);
        assert_eq!(tree.select(1.0, 5), 2);
        tree.backpropagate(2, 4.0);
        assert_eq!(tree.select(1.0, 5), 3);
        tree.backpropagate(3, 3.0);
        // All visited once: the highest mean wins without much exploration...
        assert_eq!(tree.select(0.1, 5), 2);
        // ...and a rarely visited child wins with enough of it.
        tree.backpropagate(2, 4.0);
        tree.backpropagate(2, 4.0);
        assert_eq!(tree.select(0.0, 5), 2);
        assert_eq!(
            tree.select(10.0, 5),
            3,
            "children 1 and 3 have 1 visit of 5; 3 has the higher mean"
        );
    }

    #[test]
    fn selection_stops_at_the_depth_limit_and_at_barren_nodes() {
        let mut tree = fanned();
        for id in 1..=3 {
            tree.backpropagate(id, tree.nodes[id].reward);
        }
        assert_eq!(
            tree.select(0.0, 1),
            2,
            "depth 1 is the limit: child 2 is a leaf"
        );
        assert!(!tree.can_expand(2, 1));
        assert!(tree.can_expand(2, 2));
        tree.expand(2, &[]);
        assert_eq!(
            tree.select(0.0, 5),
            2,
            "expanded without children: stays a leaf"
        );
        assert!(!tree.can_expand(2, 5));
    }

    #[test]
    fn expansion_links_children_one_level_down() {
        let mut tree = fanned();
        let ids = tree.expand(3, &[1.0, 5.0]);
        assert_eq!(ids, [4, 5]);
        assert_eq!(tree.nodes[3].children, [4, 5]);
        assert!(tree.nodes[3].expanded);
        assert_eq!(tree.nodes[5].depth, 2);
        assert_eq!(tree.nodes[5].parent, Some(3));
        assert_eq!(tree.path(5), [0, 3, 5]);
    }

    #[test]
    fn backpropagation_updates_the_path_only() {
        let mut tree = fanned();
        tree.expand(2, &[5.0]);
        tree.backpropagate(4, 5.0);
        tree.backpropagate(4, 3.0);
        assert_eq!((tree.nodes[4].visits, tree.nodes[4].total), (2, 8.0));
        assert_eq!((tree.nodes[2].visits, tree.nodes[2].total), (2, 8.0));
        assert_eq!((tree.nodes[0].visits, tree.nodes[0].total), (2, 8.0));
        assert_eq!(tree.nodes[1].visits, 0);
        assert_eq!(tree.nodes[3].visits, 0);
        assert_eq!(tree.nodes[4].value(), 4.0);
        assert_eq!(tree.nodes[1].value(), 2.0, "unvisited: its own reward");
    }

    #[test]
    fn the_best_node_has_the_best_mean_path_reward() {
        let mut tree = fanned();
        tree.expand(2, &[3.0, 5.0]);
        // Paths: 1 → 2, 2 → 4, 3 → 3, 4 → (4+3)/2, 5 → (4+5)/2.
        assert_eq!(tree.path_score(4), 3.5);
        assert_eq!(tree.best(), 5);
        assert_eq!(Tree::new(2.0).best(), 0);
    }
}
