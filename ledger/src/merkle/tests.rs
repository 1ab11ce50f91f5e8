//! The RFC 6962 / RFC 9162 test vectors (SHA-256), copied from transparency-dev/merkle
//! (`testonly/constants.go` and `proof/verify_test.go`, Apache-2.0), plus properties over
//! random trees.

use proptest::prelude::*;

use super::*;

fn h(s: &str) -> Digest32 {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).expect("vector hex");
    out
}

/// The eight leaf inputs of the vectors.
const LEAVES: [&str; 8] =
    ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];

/// Roots of the trees of 0..=8 leaves.
const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// (leaf index, tree size, path); the source numbers leaves from 1, these from 0.
const INCLUSION: [(u64, u64, &[&str]); 5] = [
    (0, 1, &[]),
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// (old size, new size, proof).
const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

fn vector_tree() -> Tree<Sha256> {
    let mut t = Tree::new();
    for l in LEAVES {
        t.push(&hex::decode(l).expect("leaf hex"));
    }
    t
}

#[test]
fn roots_match_the_rfc_vectors() {
    let t = vector_tree();
    for (size, root) in ROOTS.iter().enumerate() {
        assert_eq!(t.root(size as u64).expect("root"), h(root), "size {size}");
    }
    assert!(t.root(9).is_err());
}

#[test]
fn inclusion_proofs_match_and_verify() {
    let t = vector_tree();
    for (index, size, path) in INCLUSION {
        let want: Vec<Digest32> = path.iter().map(|p| h(p)).collect();
        assert_eq!(t.inclusion_proof(index, size).expect("proof"), want, "leaf {index} of {size}");
        let leaf = t.leaf_hash(index).expect("leaf");
        let root = h(ROOTS[size as usize]);
        verify_inclusion::<Sha256>(index, size, &leaf, &want, &root).expect("verifies");
        for (bad_index, bad_size) in
            [(index + 1, size), (index ^ 2, size), (index, size * 2), (index, size / 2)]
        {
            if (bad_index, bad_size) != (index, size) {
                assert!(verify_inclusion::<Sha256>(bad_index, bad_size, &leaf, &want, &root).is_err());
            }
        }
        let mut longer = want.clone();
        longer.push(root);
        assert!(verify_inclusion::<Sha256>(index, size, &leaf, &longer, &root).is_err());
        assert!(verify_inclusion::<Sha256>(index, size, &h(ROOTS[0]), &want, &root).is_err());
    }
}

#[test]
fn consistency_proofs_match_and_verify() {
    let t = vector_tree();
    for (old, new, path) in CONSISTENCY {
        let want: Vec<Digest32> = path.iter().map(|p| h(p)).collect();
        assert_eq!(t.consistency_proof(old, new).expect("proof"), want, "{old} → {new}");
        let (r1, r2) = (h(ROOTS[old as usize]), h(ROOTS[new as usize]));
        verify_consistency::<Sha256>(old, new, &want, &r1, &r2).expect("verifies");
        if !want.is_empty() {
            assert!(verify_consistency::<Sha256>(old, new, &want, &r2, &r1).is_err(), "swapped roots");
            assert!(verify_consistency::<Sha256>(old, new, &want[..want.len() - 1], &r1, &r2).is_err());
            assert!(verify_consistency::<Sha256>(old + 1, new, &want, &r1, &r2).is_err());
        }
    }
    // Trivial cases as the RFC's verifiers treat them.
    let (a, b) = (h(ROOTS[1]), h(ROOTS[2]));
    assert!(verify_consistency::<Sha256>(0, 5, &[], &a, &b).is_ok());
    assert!(verify_consistency::<Sha256>(3, 3, &[], &a, &a).is_ok());
    assert!(verify_consistency::<Sha256>(3, 3, &[], &a, &b).is_err());
    assert!(verify_consistency::<Sha256>(3, 3, &[a], &a, &a).is_err());
    assert!(verify_consistency::<Sha256>(4, 3, &[], &a, &b).is_err());
    assert!(verify_consistency::<Sha256>(1, 2, &[], &a, &b).is_err());
}

#[test]
fn the_frontier_has_the_roots_of_the_tree() {
    let t = vector_tree();
    let mut f = Frontier::<Sha256>::default();
    assert_eq!(f.root(), h(ROOTS[0]));
    for (i, l) in LEAVES.iter().enumerate() {
        f.push(&hex::decode(l).expect("leaf hex"));
        assert_eq!(f.root(), t.root(i as u64 + 1).expect("root"), "size {}", i + 1);
    }
    let (mut f, mut t) = (Frontier::<Sha256>::default(), Tree::<Sha256>::new());
    for i in 0u64..1100 {
        f.push(&i.to_be_bytes());
        t.push(&i.to_be_bytes());
        assert_eq!(f.root(), t.root(i + 1).expect("root"));
    }
}

fn tree_of(n: u64) -> Tree<Sha256> {
    let mut t = Tree::new();
    for i in 0..n {
        t.push(&i.to_be_bytes());
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_inclusion_proof_verifies_and_any_change_breaks_it(
        n in 1u64..5_000, i in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8,
    ) {
        // One leaf more than the tree under test, for the root of the next size.
        let t = tree_of(n + 1);
        let index = i.index(n as usize) as u64;
        let root = t.root(n).unwrap();
        let leaf = t.leaf_hash(index).unwrap();
        let proof = t.inclusion_proof(index, n).unwrap();
        prop_assert!(proof.len() <= 64 - (n - 1).leading_zeros() as usize);
        prop_assert!(verify_inclusion::<Sha256>(index, n, &leaf, &proof, &root).is_ok());
        // Another size, with that size's true root.
        prop_assert!(verify_inclusion::<Sha256>(index, n + 1, &leaf, &proof, &t.root(n + 1).unwrap()).is_err());
        if index + 1 < n {
            prop_assert!(verify_inclusion::<Sha256>(index, n - 1, &leaf, &proof, &t.root(n - 1).unwrap()).is_err());
        }
        if index > 0 {
            prop_assert!(verify_inclusion::<Sha256>(index - 1, n, &leaf, &proof, &root).is_err());
        }
        let mut bad_root = root;
        bad_root[bit as usize] ^= 1;
        prop_assert!(verify_inclusion::<Sha256>(index, n, &leaf, &proof, &bad_root).is_err());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            bad[flip.index(proof.len())][bit as usize] ^= 1;
            prop_assert!(verify_inclusion::<Sha256>(index, n, &leaf, &bad, &root).is_err());
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_any_change_breaks_it(
        n in 2u64..5_000, m in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8,
    ) {
        let t = tree_of(n + 1);
        let old = 1 + m.index(n as usize - 1) as u64;
        let (r1, r2) = (t.root(old).unwrap(), t.root(n).unwrap());
        let proof = t.consistency_proof(old, n).unwrap();
        prop_assert!(verify_consistency::<Sha256>(old, n, &proof, &r1, &r2).is_ok());
        if old < n {
            prop_assert!(verify_consistency::<Sha256>(old, n, &proof, &r2, &r1).is_err());
            prop_assert!(verify_consistency::<Sha256>(old, n + 1, &proof, &r1, &t.root(n + 1).unwrap()).is_err());
            if old > 1 {
                prop_assert!(verify_consistency::<Sha256>(old - 1, n, &proof, &t.root(old - 1).unwrap(), &r2).is_err());
            }
            let mut bad = proof.clone();
            bad[flip.index(proof.len())][bit as usize] ^= 1;
            prop_assert!(verify_consistency::<Sha256>(old, n, &bad, &r1, &r2).is_err());
            let mut bad_root = r1;
            bad_root[bit as usize] ^= 1;
            prop_assert!(verify_consistency::<Sha256>(old, n, &proof, &bad_root, &r2).is_err());
        }
    }
}
