//! Checkpoint entries and the proofs checked against them.

use pd_ledger::merkle::{Sha256, TreeHasher};
use pd_ledger::proof::{Proof, ProofKind};
use pd_ledger::storage::MemStore;
use pd_ledger::testkit::deployed;
use pd_ledger::{Body, Hash, LedgerError, RuleError, SecretKey, Signature};

fn refused(r: Result<pd_ledger::SignedEntry, LedgerError>) -> RuleError {
    match r {
        Err(LedgerError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_checkpoint_must_sign_the_true_head_of_the_entries_before_it() {
    let mut d = deployed(MemStore::default());
    d.append_acks(10);
    let Body::Checkpoint(good) = d.ledger.state().sign_checkpoint(&d.admin) else { unreachable!() };
    let len = d.ledger.state().len();
    assert_eq!(good.size, len);
    assert_eq!(good.root.0, d.ledger.tree().root(len).unwrap());

    let mut wrong_size = good.clone();
    wrong_size.size -= 1;
    let mut wrong_root = good.clone();
    wrong_root.root = Hash(Sha256::leaf(b"not the head"));
    let mut wrong_sig = good.clone();
    wrong_sig.note_sig = Signature([7; 64]);
    // Acks are not control entries: counting them, or leaving out a push, is a false commitment.
    let mut wrong_count = good.clone();
    wrong_count.control_size = len;
    let mut wrong_control = good.clone();
    wrong_control.control_root = Hash(Sha256::leaf(b"not the control head"));
    for (bad, field) in [
        (wrong_count, "checkpoint control commitment"),
        (wrong_control, "checkpoint control commitment"),
        (wrong_size, "checkpoint size"),
        (wrong_root, "checkpoint root"),
        (wrong_sig, "checkpoint note signature"),
    ] {
        match refused(d.ledger.sign_append("admin", &d.admin, 5, Body::Checkpoint(bad))) {
            RuleError::Invalid { field: f, .. } => assert_eq!(f, field),
            other => panic!("{field}: {other}"),
        }
        assert_eq!(d.ledger.state().len(), len, "nothing appended");
    }
    // Only the log role signs checkpoints.
    let carol = SecretKey::from_seed([2; 32]);
    let by_carol = d.ledger.state().sign_checkpoint(&carol);
    assert!(matches!(
        refused(d.ledger.sign_append("carol", &carol, 5, by_carol)),
        RuleError::MissingRole { .. }
    ));

    d.ledger.sign_append("admin", &d.admin, 5, Body::Checkpoint(good)).expect("a true checkpoint");
    assert_eq!(d.ledger.state().checkpoints().len(), 1);
}

#[test]
fn inclusion_and_consistency_proofs_verify_and_name_what_they_prove() {
    let mut d = deployed(MemStore::default());
    let cp = d.ledger.state().sign_checkpoint(&d.admin);
    d.ledger.sign_append("admin", &d.admin, 5, cp).unwrap();
    d.append_acks(100);
    let cp = d.ledger.state().sign_checkpoint(&d.admin);
    d.ledger.sign_append("admin", &d.admin, 5, cp).unwrap();
    let (st, tree) = (d.ledger.state(), d.ledger.tree());
    let (first, last) = (&st.checkpoints()[0], &st.checkpoints()[1]);

    let package = d.ledger.entries(3).next().unwrap().unwrap();
    let proof = Proof::inclusion(st, tree, &package, first).unwrap();
    let proven = proof.verify(&[]).unwrap();
    assert_eq!(proven.entry, Some((3, "package".to_string(), package.id)));
    assert_eq!(proven.size, first.checkpoint.size);
    // The note is signed under the origin's name (tlog-checkpoint); the key id names the key.
    let origin = st.origin();
    assert_eq!(
        proven.signer,
        format!("{origin}+{}", hex::encode(pd_ledger::note::key_id(&origin, &d.admin.public())))
    );
    // Pinned to another key, the same proof fails.
    let carol = SecretKey::from_seed([2; 32]).public();
    assert!(proof.verify(&[("carol".into(), carol)]).is_err());
    // A later entry is not under the first checkpoint.
    let ack = d.ledger.entries(50).next().unwrap().unwrap();
    assert!(Proof::inclusion(st, tree, &ack, first).is_err());
    let proof = Proof::inclusion(st, tree, &ack, last).unwrap();
    assert!(proof.verify(&[]).is_ok());
    let mut bad = proof.clone();
    if let ProofKind::Inclusion { hashes, .. } = &mut bad.kind {
        hashes.swap(0, 1);
    }
    assert!(bad.verify(&[]).is_err());

    let old = st.signed_note(first);
    let proof = Proof::consistency(st, tree, &old, last).unwrap();
    let proven = proof.verify(&[]).unwrap();
    assert_eq!(proven.extends, Some((first.checkpoint.size, first.checkpoint.root)));
    let mut bad = proof.clone();
    if let ProofKind::Consistency { hashes, .. } = &mut bad.kind {
        hashes.pop();
    }
    assert!(bad.verify(&[]).is_err());
    // The proof file round-trips through JSON.
    let json = serde_json::to_string(&proof).unwrap();
    assert_eq!(serde_json::from_str::<Proof>(&json).unwrap(), proof);
}

#[test]
fn a_reopened_ledger_rebuilds_the_same_tree() {
    let mut d = deployed(MemStore::default());
    d.append_acks(1000);
    let root = d.ledger.tree().root(d.ledger.state().len()).unwrap();
    let bytes: Vec<Vec<u8>> = d.ledger.entries(0).map(|e| e.unwrap().bytes).collect();
    let store = MemStore::default();
    pd_ledger::LedgerStore::append(&store, 0, &bytes.iter().map(|b| b.as_slice()).collect::<Vec<_>>())
        .unwrap();
    let reopened = pd_ledger::Ledger::open(store).unwrap();
    assert_eq!(reopened.tree().root(reopened.state().len()).unwrap(), root);
    assert_eq!(reopened.state().tree().root(), root);
}
