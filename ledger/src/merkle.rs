//! The RFC 6962 / RFC 9162 Merkle tree over entry ids: tree heads, inclusion proofs and
//! consistency proofs, and their verification.
//!
//! Leaves and nodes are domain-separated as in the RFCs: `leaf = SHA-256(0x00 || data)`,
//! `node = SHA-256(0x01 || left || right)`, and the empty tree's head is `SHA-256("")`. The
//! leaf data is an entry's 32-byte id. This is the tree of C2SP tlog-checkpoint, so standard
//! verifiers, witnesses and monitors (Go's `golang.org/x/mod/sumdb/tlog`, for one) compute
//! the same heads and accept the same proofs; `tests/outside.rs` checks that.
//!
//! Proofs are `⌈log2 n⌉` hashes at most; building one reads that many stored subtree hashes
//! and verifying one hashes that many nodes.

use std::marker::PhantomData;

use sha2::Digest;

/// A 32-byte hash.
pub type Digest32 = [u8; 32];

/// The hash function of a tree.
pub trait TreeHasher {
    /// `H(parts[0] || parts[1] || …)`.
    fn hash(parts: &[&[u8]]) -> Digest32;

    /// The hash of a leaf holding `data`.
    fn leaf(data: &[u8]) -> Digest32 {
        Self::hash(&[&[0x00], data])
    }

    /// The hash of an interior node.
    fn node(left: &Digest32, right: &Digest32) -> Digest32 {
        Self::hash(&[&[0x01], left, right])
    }

    /// The head of the empty tree.
    fn empty() -> Digest32 {
        Self::hash(&[])
    }
}

/// SHA-256: the hash of RFC 6962 and of every pd ledger's tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sha256;

impl TreeHasher for Sha256 {
    fn hash(parts: &[&[u8]]) -> Digest32 {
        let mut h = sha2::Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }
}

/// A Merkle tree that grows by appending leaf hashes. It keeps the hash of every complete
/// (power-of-two, aligned) subtree, about `2n` hashes, so heads and proofs for any size up
/// to the current one cost `O(log n)` lookups and hashes.
#[derive(Clone)]
pub struct Tree<H: TreeHasher> {
    /// `levels[k][i]`: the subtree of `2^k` leaves starting at leaf `i·2^k`.
    levels: Vec<Vec<Digest32>>,
    hasher: PhantomData<H>,
}

impl<H: TreeHasher> Default for Tree<H> {
    fn default() -> Self {
        Tree { levels: vec![Vec::new()], hasher: PhantomData }
    }
}

/// The right edge of a growing tree: the heads of its complete subtrees, largest first.
/// That is all it takes to grow the tree and to compute its head, in `O(log n)` hashes, so
/// the folded ledger state carries one and checks checkpoints against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontier<H: TreeHasher> {
    size: u64,
    peaks: Vec<Digest32>,
    hasher: PhantomData<H>,
}

impl<H: TreeHasher> Default for Frontier<H> {
    fn default() -> Self {
        Frontier { size: 0, peaks: Vec::new(), hasher: PhantomData }
    }
}

impl<H: TreeHasher> Frontier<H> {
    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf whose data is `data` (pd: an entry id).
    pub fn push(&mut self, data: &[u8]) {
        let mut node = H::leaf(data);
        // One peak per set bit of the size: merge while the lowest bits are ones.
        let mut size = self.size;
        while size & 1 == 1 {
            let left = self.peaks.pop().expect("a peak per set bit of the size");
            node = H::node(&left, &node);
            size >>= 1;
        }
        self.peaks.push(node);
        self.size += 1;
        debug_assert_eq!(self.peaks.len(), self.size.count_ones() as usize);
    }

    /// The head of the tree: the peaks folded from the right.
    pub fn root(&self) -> Digest32 {
        let mut peaks = self.peaks.iter().rev();
        match peaks.next() {
            None => H::empty(),
            Some(last) => peaks.fold(*last, |right, left| H::node(left, &right)),
        }
    }
}

/// A proof request the tree cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The index or size is beyond the tree.
    #[error("{what} is out of range for a tree of {size} leaves")]
    OutOfRange {
        /// What was asked.
        what: String,
        /// Leaves in the tree.
        size: u64,
    },
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The sizes or index cannot form such a proof.
    #[error("impossible proof parameters: {0}")]
    Parameters(String),
    /// The proof has the wrong number of hashes.
    #[error("the proof has {got} hashes, but a proof for these sizes has {expected}")]
    Length {
        /// Hashes the parameters call for.
        expected: usize,
        /// Hashes given.
        got: usize,
    },
    /// The hashes do not lead to the claimed root.
    #[error("the proof does not lead to the claimed root hash")]
    Mismatch,
}

fn largest_power_of_two_below(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

impl<H: TreeHasher> Tree<H> {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels[0].len() as u64
    }

    /// Appends a leaf whose data is `data` (pd: an entry id).
    pub fn push(&mut self, data: &[u8]) {
        self.push_hash(H::leaf(data));
    }

    /// Appends an already hashed leaf.
    pub fn push_hash(&mut self, leaf: Digest32) {
        self.levels[0].push(leaf);
        let mut level = 0;
        // Each time a level gets an even count, the last two make a complete parent.
        while self.levels[level].len().is_multiple_of(2) {
            let n = self.levels[level].len();
            let parent = H::node(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
    }

    /// The leaf hash at `index`.
    pub fn leaf_hash(&self, index: u64) -> Option<Digest32> {
        self.levels[0].get(index as usize).copied()
    }

    /// The head of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Digest32, ProofError> {
        self.check(size, "tree size")?;
        Ok(if size == 0 { H::empty() } else { self.subtree(0, size) })
    }

    fn check(&self, n: u64, what: &str) -> Result<(), ProofError> {
        if n > self.size() {
            return Err(ProofError::OutOfRange { what: format!("{what} {n}"), size: self.size() });
        }
        Ok(())
    }

    /// MTH(D[start..start+n]) for `n ≥ 1`.
    fn subtree(&self, start: u64, n: u64) -> Digest32 {
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(start >> level) as usize];
        }
        let k = largest_power_of_two_below(n);
        H::node(&self.subtree(start, k), &self.subtree(start + k, n - k))
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 9162
    /// §2.1.3.1), leaf-side first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Digest32>, ProofError> {
        self.check(size, "tree size")?;
        if index >= size {
            return Err(ProofError::OutOfRange { what: format!("leaf {index}"), size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }

    fn path(&self, m: u64, start: u64, n: u64, out: &mut Vec<Digest32>) {
        if n <= 1 {
            return;
        }
        let k = largest_power_of_two_below(n);
        if m < k {
            self.path(m, start, k, out);
            out.push(self.subtree(start + k, n - k));
        } else {
            self.path(m - k, start + k, n - k, out);
            out.push(self.subtree(start, k));
        }
    }

    /// The proof that the tree of `old` leaves is a prefix of the tree of `new` leaves
    /// (RFC 9162 §2.1.4.1). Empty when `old` is 0 or equals `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Digest32>, ProofError> {
        self.check(new, "tree size")?;
        if old > new {
            return Err(ProofError::OutOfRange { what: format!("old size {old}"), size: new });
        }
        let mut proof = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut proof);
        }
        Ok(proof)
    }

    fn subproof(&self, m: u64, start: u64, n: u64, whole: bool, out: &mut Vec<Digest32>) {
        if m == n {
            if !whole {
                out.push(self.subtree(start, n));
            }
            return;
        }
        let k = largest_power_of_two_below(n);
        if m <= k {
            self.subproof(m, start, k, whole, out);
            out.push(self.subtree(start + k, n - k));
        } else {
            self.subproof(m - k, start + k, n - k, false, out);
            out.push(self.subtree(start, k));
        }
    }
}

/// Checks that `leaf` (a leaf hash) is leaf `index` of the tree of `size` leaves whose head
/// is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion<H: TreeHasher>(
    index: u64,
    size: u64,
    leaf: &Digest32,
    proof: &[Digest32],
    root: &Digest32,
) -> Result<(), VerifyError> {
    if index >= size {
        return Err(VerifyError::Parameters(format!("leaf {index} is not in a tree of {size}")));
    }
    let expected = inclusion_len(index, size);
    if proof.len() != expected {
        return Err(VerifyError::Length { expected, got: proof.len() });
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(VerifyError::Mismatch);
        }
        if f & 1 == 1 || f == s {
            r = H::node(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = H::node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s == 0 && r == *root {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// Checks that the tree of `old` leaves with head `old_root` is a prefix of the tree of
/// `new` leaves with head `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency<H: TreeHasher>(
    old: u64,
    new: u64,
    proof: &[Digest32],
    old_root: &Digest32,
    new_root: &Digest32,
) -> Result<(), VerifyError> {
    if old > new {
        return Err(VerifyError::Parameters(format!("old size {old} is larger than new size {new}")));
    }
    if old == new || old == 0 {
        if !proof.is_empty() {
            return Err(VerifyError::Length { expected: 0, got: proof.len() });
        }
        return if old == 0 || old_root == new_root { Ok(()) } else { Err(VerifyError::Mismatch) };
    }
    let expected = consistency_len(old, new);
    if proof.len() != expected {
        return Err(VerifyError::Length { expected, got: proof.len() });
    }
    // When the old tree is a complete subtree, its head is the first node of the path.
    let mut path: Vec<Digest32> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return Err(VerifyError::Mismatch);
        }
        if f & 1 == 1 || f == s {
            fr = H::node(c, &fr);
            sr = H::node(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = H::node(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s == 0 && fr == *old_root && sr == *new_root {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

/// Hashes in the audit path of leaf `index` in a tree of `size` (> index) leaves: the
/// recursion of [`Tree::inclusion_proof`] on sizes alone.
fn inclusion_len(index: u64, size: u64) -> usize {
    if size <= 1 {
        return 0;
    }
    let k = largest_power_of_two_below(size);
    1 + if index < k { inclusion_len(index, k) } else { inclusion_len(index - k, size - k) }
}

/// Hashes in a consistency proof between sizes `0 < old < new`: the recursion of
/// [`Tree::consistency_proof`] on sizes alone.
fn consistency_len(old: u64, new: u64) -> usize {
    fn sub(m: u64, n: u64, whole: bool) -> usize {
        if m == n {
            return usize::from(!whole);
        }
        let k = largest_power_of_two_below(n);
        1 + if m <= k { sub(m, k, whole) } else { sub(m - k, n - k, false) }
    }
    sub(old, new, true)
}

#[cfg(test)]
mod tests;
