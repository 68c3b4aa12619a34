//! The share's directories as the watcher knows them: identity (the
//! [`DirKey`] an event names) → parent and name, so an event's path is a
//! walk up to the root. A rename is one re-link, whatever the size of the
//! subtree; files are not kept (they are named by their directory's
//! events). Pure data: the watcher keeps it in step with the file system.

use std::collections::HashMap;

use super::dirs::DirKey;

/// Index of a directory in the tree.
pub type NodeId = usize;

#[derive(Debug)]
struct Node {
    /// `None` for the root.
    parent: Option<NodeId>,
    name: Box<[u8]>,
    key: DirKey,
    children: HashMap<Box<[u8]>, NodeId>,
}

/// The watched directories.
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Option<Node>>,
    free: Vec<NodeId>,
    by_key: HashMap<DirKey, NodeId>,
    root: NodeId,
}

impl Tree {
    /// A tree holding only the root, whose identity is `root_key`.
    pub fn new(root_key: DirKey) -> Tree {
        let mut by_key = HashMap::new();
        by_key.insert(root_key.clone(), 0);
        Tree {
            nodes: vec![Some(Node {
                parent: None,
                name: Box::default(),
                key: root_key,
                children: HashMap::new(),
            })],
            free: Vec::new(),
            by_key,
            root: 0,
        }
    }

    /// The root directory.
    pub fn root(&self) -> NodeId {
        self.root
    }

    /// How many directories are known.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether only the root is known.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }

    fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id).and_then(Option::as_ref)
    }

    /// The directory with identity `key`.
    pub fn lookup(&self, key: &[u8]) -> Option<NodeId> {
        self.by_key.get(key).copied()
    }

    /// The identity of `id`.
    pub fn key(&self, id: NodeId) -> Option<&[u8]> {
        self.node(id).map(|n| &n.key[..])
    }

    /// The subdirectory `name` of `id`.
    pub fn child(&self, id: NodeId, name: &[u8]) -> Option<NodeId> {
        self.node(id)?.children.get(name).copied()
    }

    /// Writes the path of `id` relative to the root (empty for the root)
    /// into `out`. False if `id` is not in the tree.
    pub fn path(&self, id: NodeId, out: &mut Vec<u8>) -> bool {
        out.clear();
        let mut names: Vec<&[u8]> = Vec::new();
        let mut at = id;
        loop {
            let Some(node) = self.node(at) else {
                return false;
            };
            match node.parent {
                Some(parent) => {
                    names.push(&node.name);
                    at = parent;
                }
                None => break,
            }
        }
        for (i, name) in names.iter().rev().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(name);
        }
        true
    }

    /// Whether `ancestor` is `id` or one of its ancestors.
    fn is_within(&self, id: NodeId, ancestor: NodeId) -> bool {
        let mut at = Some(id);
        while let Some(now) = at {
            if now == ancestor {
                return true;
            }
            at = self.node(now).and_then(|n| n.parent);
        }
        false
    }

    /// Adds directory `key` as `name` in `parent`, replacing (removing)
    /// whatever subdirectory had that name. Returns `None` if `parent` is
    /// unknown or `key` is already in the tree (use [`Tree::relink`]).
    pub fn insert(&mut self, parent: NodeId, name: &[u8], key: &[u8]) -> Option<NodeId> {
        self.node(parent)?;
        if self.by_key.contains_key(key) {
            return None;
        }
        if let Some(old) = self.child(parent, name) {
            self.remove(old);
        }
        let node = Node {
            parent: Some(parent),
            name: name.into(),
            key: key.into(),
            children: HashMap::new(),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id] = Some(node);
                id
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        };
        self.by_key.insert(key.into(), id);
        if let Some(Some(p)) = self.nodes.get_mut(parent) {
            p.children.insert(name.into(), id);
        }
        Some(id)
    }

    /// Moves directory `id` (with its subtree) to `name` in `parent`,
    /// replacing whatever subdirectory had that name. A move under its
    /// own subtree (stale information) removes `id` instead. Returns
    /// whether `id` is still in the tree.
    pub fn relink(&mut self, id: NodeId, parent: NodeId, name: &[u8]) -> bool {
        if id == self.root || self.node(id).is_none() || self.node(parent).is_none() {
            return false;
        }
        if self.is_within(parent, id) {
            self.remove(id);
            return false;
        }
        if let Some(old) = self.child(parent, name) {
            if old == id {
                return true;
            }
            self.remove(old);
        }
        self.unlink_from_parent(id);
        if let Some(Some(node)) = self.nodes.get_mut(id) {
            node.parent = Some(parent);
            node.name = name.into();
        }
        if let Some(Some(p)) = self.nodes.get_mut(parent) {
            p.children.insert(name.into(), id);
        }
        true
    }

    fn unlink_from_parent(&mut self, id: NodeId) {
        let Some(node) = self.node(id) else {
            return;
        };
        let (parent, name) = (node.parent, node.name.clone());
        if let Some(Some(p)) = parent.map(|p| self.nodes.get_mut(p)) {
            if let Some(p) = p.as_mut() {
                if p.children.get(&name) == Some(&id) {
                    p.children.remove(&name);
                }
            }
        }
    }

    /// Removes `id` and its subtree (never the root). Returns the
    /// identities removed.
    pub fn remove(&mut self, id: NodeId) -> Vec<DirKey> {
        if id == self.root || self.node(id).is_none() {
            return Vec::new();
        }
        self.unlink_from_parent(id);
        let mut removed = Vec::new();
        let mut stack = vec![id];
        while let Some(at) = stack.pop() {
            let Some(node) = self.nodes.get_mut(at).and_then(Option::take) else {
                continue;
            };
            stack.extend(node.children.values().copied());
            self.by_key.remove(&node.key);
            self.free.push(at);
            removed.push(node.key);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn path(t: &Tree, id: NodeId) -> String {
        let mut out = Vec::new();
        assert!(t.path(id, &mut out));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn paths_follow_renames_of_whole_subtrees() {
        let mut t = Tree::new(k("root").into());
        let a = t.insert(t.root(), b"a", &k("A")).unwrap();
        let b = t.insert(a, b"b", &k("B")).unwrap();
        let c = t.insert(b, b"c", &k("C")).unwrap();
        assert_eq!(path(&t, c), "a/b/c");
        assert_eq!(path(&t, t.root()), "");
        let z = t.insert(t.root(), b"z", &k("Z")).unwrap();
        assert!(t.relink(b, z, b"renamed"));
        assert_eq!(path(&t, c), "z/renamed/c");
        assert_eq!(t.child(a, b"b"), None);
        assert_eq!(t.lookup(b"C"), Some(c));
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn removal_takes_the_subtree_and_frees_ids() {
        let mut t = Tree::new(k("r").into());
        let a = t.insert(t.root(), b"a", &k("A")).unwrap();
        let b = t.insert(a, b"b", &k("B")).unwrap();
        let mut removed = t.remove(a);
        removed.sort();
        assert_eq!(removed, vec![k("A").into(), k("B").into()]);
        assert_eq!((t.lookup(b"A"), t.lookup(b"B")), (None, None));
        assert!(!t.path(b, &mut Vec::new()));
        assert!(t.is_empty());
        // The root stays, whatever is asked.
        assert!(t.remove(t.root()).is_empty());
        let again = t.insert(t.root(), b"a", &k("A2")).unwrap();
        assert!(again == a || again == b);
    }

    #[test]
    fn a_name_holds_one_directory() {
        let mut t = Tree::new(k("r").into());
        let a = t.insert(t.root(), b"a", &k("A")).unwrap();
        t.insert(a, b"sub", &k("S")).unwrap();
        // mkdir a (new inode) after rmdir a, events merged: replaced.
        let a2 = t.insert(t.root(), b"a", &k("A2")).unwrap();
        assert_eq!(t.lookup(b"S"), None);
        assert_eq!(t.child(t.root(), b"a"), Some(a2));
        // A known key cannot be inserted twice.
        assert_eq!(t.insert(t.root(), b"b", &k("A2")), None);
        // rename b over a: a2 is gone.
        let b = t.insert(t.root(), b"b", &k("B")).unwrap();
        assert!(t.relink(b, t.root(), b"a"));
        assert_eq!(t.lookup(b"A2"), None);
        assert_eq!(path(&t, b), "a");
    }

    #[test]
    fn stale_moves_cannot_make_cycles() {
        let mut t = Tree::new(k("r").into());
        let a = t.insert(t.root(), b"a", &k("A")).unwrap();
        let b = t.insert(a, b"b", &k("B")).unwrap();
        assert!(!t.relink(a, b, b"loop"));
        assert_eq!(t.lookup(b"A"), None);
        assert!(!t.relink(t.root(), t.root(), b"x"));
    }
}
