//! Reply trees over a conversation's turns (Reddit threads) and the root-to-leaf walks
//! ("conversation paths") that builders turn into linear dialogues.

use crate::Conversation;

/// Children lists for every turn of a conversation, built once.
#[derive(Debug, Clone)]
pub struct ReplyTree {
    children: Vec<Vec<u32>>,
    roots: Vec<u32>,
    parents: Vec<Option<u32>>,
}

impl ReplyTree {
    /// Builds the tree. A linear dialogue (no `reply_to` anywhere) becomes a chain in
    /// which every turn answers the previous one. A `reply_to` that points at itself,
    /// forward or out of range is treated as a root, so the walk always terminates.
    pub fn new(conversation: &Conversation) -> ReplyTree {
        let count = conversation.turns.len();
        let linear = !conversation.is_tree();
        let mut parents = Vec::with_capacity(count);
        for (position, turn) in conversation.turns.iter().enumerate() {
            let parent = if linear {
                position.checked_sub(1).map(|p| p as u32)
            } else {
                turn.reply_to.filter(|&p| (p as usize) < position)
            };
            parents.push(parent);
        }
        let mut children = vec![Vec::new(); count];
        let mut roots = Vec::new();
        for (position, parent) in parents.iter().enumerate() {
            match parent {
                Some(p) => children[*p as usize].push(position as u32),
                None => roots.push(position as u32),
            }
        }
        ReplyTree { children, roots, parents }
    }

    pub fn roots(&self) -> &[u32] {
        &self.roots
    }

    pub fn children(&self, index: u32) -> &[u32] {
        self.children.get(index as usize).map_or(&[], Vec::as_slice)
    }

    pub fn parent(&self, index: u32) -> Option<u32> {
        self.parents.get(index as usize).copied().flatten()
    }

    /// The walk from the root down to `index`, both included.
    pub fn path_to(&self, index: u32) -> Vec<u32> {
        let mut path = vec![index];
        let mut current = index;
        while let Some(parent) = self.parent(current) {
            path.push(parent);
            current = parent;
        }
        path.reverse();
        path
    }

    /// Every root-to-leaf walk, in depth-first order.
    pub fn paths(&self) -> Vec<Vec<u32>> {
        let mut paths = Vec::new();
        for (position, children) in self.children.iter().enumerate() {
            if children.is_empty() {
                paths.push(self.path_to(position as u32));
            }
        }
        paths
    }

    /// Depth of a turn (roots have depth 0).
    pub fn depth(&self, index: u32) -> usize {
        self.path_to(index).len() - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Role, Source, Turn, TurnLabels};

    fn conversation(parents: &[Option<u32>]) -> Conversation {
        let turns = parents
            .iter()
            .enumerate()
            .map(|(i, parent)| Turn {
                index: i as u32,
                original_id: None,
                speaker: format!("s{i}"),
                role: Role::User,
                text: String::new(),
                reply_to: *parent,
                labels: TurnLabels::default(),
            })
            .collect();
        Conversation {
            id: "t:1".into(),
            source: Source { corpus: "t".into(), original_id: "1".into() },
            participants: vec![],
            turns,
            meta: Default::default(),
        }
    }

    #[test]
    fn tree_paths_are_root_to_leaf() {
        //  0 -> 1 -> 3
        //    -> 2
        let tree = ReplyTree::new(&conversation(&[None, Some(0), Some(0), Some(1)]));
        assert_eq!(tree.paths(), vec![vec![0, 2], vec![0, 1, 3]]);
        assert_eq!(tree.path_to(3), vec![0, 1, 3]);
        assert_eq!(tree.depth(3), 2);
        assert_eq!(tree.children(0), &[1, 2]);
    }

    #[test]
    fn linear_dialogue_is_a_chain() {
        let tree = ReplyTree::new(&conversation(&[None, None, None]));
        assert_eq!(tree.paths(), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn bad_parents_become_roots() {
        let tree = ReplyTree::new(&conversation(&[None, Some(5), Some(2)]));
        assert_eq!(tree.roots(), &[0, 1, 2]);
    }
}
