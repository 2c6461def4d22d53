//! The search tree a strategy reports through `record-node`, checked node by node as it grows.
//!
//! A plugin may send any ids, parents and depths. Everything that walks the tree afterwards
//! (`result.json`'s levels, `trace.txt`, `export`, the viewer, the progress display) relies on
//! it being a forest: ids unique, each parent recorded before its child, depth one more than the
//! parent's (0 for a root). A node that breaks one of these rules is refused: it stays in the
//! run log as the call it was (so replay still matches), is named in `log.txt`, and is left out
//! of the tree. A parent must come first, so no cycle can form.

use std::collections::HashMap;

use crate::bindings::types::Node;

/// The nodes accepted so far, in the order they were recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    nodes: Vec<Node>,
    /// Position in `nodes` of each id.
    positions: HashMap<u32, usize>,
}

/// Why a node was left out of the tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Another node has the id already.
    #[error("node {id} was refused: a node with id {id} was recorded before")]
    DuplicateId {
        /// The node's id.
        id: u32,
    },
    /// The parent was never recorded (or only after this node, or was itself refused).
    #[error("node {id} was refused: its parent {parent} is not a node recorded before it")]
    UnknownParent {
        /// The node's id.
        id: u32,
        /// The parent it named.
        parent: u32,
    },
    /// The depth is not the distance from the root.
    #[error(
        "node {id} was refused: its depth is {depth}, but {expected} is its distance from the root"
    )]
    WrongDepth {
        /// The node's id.
        id: u32,
        /// The depth it claimed.
        depth: u32,
        /// Its parent's depth plus one, or 0 for a root.
        expected: u64,
    },
}

/// Why an outcome's best path is not a path of the tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAPath {
    /// An id of the path names no node of the tree.
    #[error("the best path names node {0}, which the tree does not hold")]
    UnknownNode(u32),
    /// The path does not start at a root.
    #[error("the best path starts at node {0}, which is not a root")]
    NotFromARoot(u32),
    /// Two neighbours of the path are not parent and child.
    #[error("in the best path, node {child} follows node {after}, which is not its parent")]
    NotAChild {
        /// The node before.
        after: u32,
        /// The node that follows it.
        child: u32,
    },
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// A tree of `nodes`, leaving out (and returning) those refused.
    pub fn of(nodes: impl IntoIterator<Item = Node>) -> (Tree, Vec<Refused>) {
        let mut tree = Tree::new();
        let refused = nodes
            .into_iter()
            .filter_map(|node| tree.insert(node).err())
            .collect();
        (tree, refused)
    }

    /// Adds `node` if it keeps the tree a forest.
    pub fn insert(&mut self, node: Node) -> Result<(), Refused> {
        let id = node.id;
        if self.positions.contains_key(&id) {
            return Err(Refused::DuplicateId { id });
        }
        let expected = match node.parent {
            None => 0,
            Some(parent) => match self.get(parent) {
                Some(parent) => u64::from(parent.depth) + 1,
                None => return Err(Refused::UnknownParent { id, parent }),
            },
        };
        if u64::from(node.depth) != expected {
            return Err(Refused::WrongDepth {
                id,
                depth: node.depth,
                expected,
            });
        }
        self.positions.insert(id, self.nodes.len());
        self.nodes.push(node);
        Ok(())
    }

    /// The accepted nodes, in the order they were recorded.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node with `id`, when the tree holds one.
    pub fn get(&self, id: u32) -> Option<&Node> {
        self.positions.get(&id).map(|&at| &self.nodes[at])
    }

    /// Checks that `path` is a path of the tree from a root: every id a node, the first a root,
    /// each one after it a child of the one before (so no id can repeat).
    pub fn check_path(&self, path: &[u32]) -> Result<(), NotAPath> {
        let mut before = None;
        for &id in path {
            let node = self.get(id).ok_or(NotAPath::UnknownNode(id))?;
            match before {
                None if node.parent.is_some() => return Err(NotAPath::NotFromARoot(id)),
                Some(after) if node.parent != Some(after) => {
                    return Err(NotAPath::NotAChild { after, child: id });
                }
                _ => {}
            }
            before = Some(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, parent: Option<u32>, depth: u32) -> Node {
        Node {
            id,
            parent,
            depth,
            prompt: format!("prompt {id}"),
            reward: 1.0,
            details: "{}".into(),
        }
    }

    #[test]
    fn a_forest_is_accepted_whole_and_in_order() {
        let nodes = vec![
            node(0, None, 0),
            node(1, Some(0), 1),
            node(2, Some(0), 1),
            node(7, None, 0),
            node(3, Some(2), 2),
        ];
        let (tree, refused) = Tree::of(nodes.clone());
        assert_eq!(refused, []);
        assert_eq!(tree.nodes(), nodes);
        assert_eq!(tree.get(3).map(|n| n.depth), Some(2));
    }

    #[test]
    fn duplicates_orphans_cycles_and_false_depths_are_refused() {
        let (tree, refused) = Tree::of([
            node(0, None, 0),
            node(0, None, 0),
            // An orphan: its parent never comes.
            node(1, Some(9), 1),
            // A cycle needs a node whose parent comes after it, which is an orphan at the time.
            node(2, Some(3), 1),
            node(3, Some(2), 2),
            node(4, Some(0), u32::MAX),
            node(5, None, 3),
            node(6, Some(0), 1),
        ]);
        assert_eq!(
            refused,
            [
                Refused::DuplicateId { id: 0 },
                Refused::UnknownParent { id: 1, parent: 9 },
                Refused::UnknownParent { id: 2, parent: 3 },
                Refused::UnknownParent { id: 3, parent: 2 },
                Refused::WrongDepth {
                    id: 4,
                    depth: u32::MAX,
                    expected: 1
                },
                Refused::WrongDepth {
                    id: 5,
                    depth: 3,
                    expected: 0
                },
            ]
        );
        let ids: Vec<u32> = tree.nodes().iter().map(|n| n.id).collect();
        assert_eq!(ids, [0, 6]);
    }

    #[test]
    fn a_child_of_a_node_at_the_deepest_depth_is_refused_without_overflow() {
        let mut tree = Tree::new();
        // Only reachable through a chain of u32::MAX nodes, so built by hand here.
        tree.positions.insert(0, 0);
        tree.nodes.push(node(0, None, u32::MAX));
        assert_eq!(
            tree.insert(node(1, Some(0), 0)),
            Err(Refused::WrongDepth {
                id: 1,
                depth: 0,
                expected: u64::from(u32::MAX) + 1
            })
        );
    }

    #[test]
    fn a_best_path_must_follow_parent_links_through_known_nodes() {
        let (tree, _) = Tree::of([
            node(0, None, 0),
            node(1, Some(0), 1),
            node(2, Some(1), 2),
            node(3, Some(0), 1),
        ]);
        assert_eq!(tree.check_path(&[0, 1, 2]), Ok(()));
        assert_eq!(tree.check_path(&[0, 3]), Ok(()));
        assert_eq!(tree.check_path(&[]), Ok(()));
        assert_eq!(tree.check_path(&[3]), Err(NotAPath::NotFromARoot(3)));
        assert_eq!(tree.check_path(&[0, 1, 9]), Err(NotAPath::UnknownNode(9)));
        assert_eq!(
            tree.check_path(&[0, 3, 2]),
            Err(NotAPath::NotAChild { after: 3, child: 2 })
        );
        assert_eq!(
            tree.check_path(&[0, 1, 0]),
            Err(NotAPath::NotAChild { after: 1, child: 0 })
        );
    }
}
