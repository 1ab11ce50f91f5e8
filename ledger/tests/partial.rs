//! Partial verification: a light follower of the control entries reaches the same decisions
//! as a full replica, and refuses a server that hides, forges or rewrites what it sends.

use pd_ledger::adoption::{agent_step, AgentView, Step};
use pd_ledger::partial::{FollowError, Follower};
use pd_ledger::storage::MemStore;
use pd_ledger::testkit::{deployed, Deployed};
use pd_ledger::{Body, Hash, Ledger, Rollback, SignedEntry, Version};

/// Every entry of the ledger, in order.
fn entries(l: &Ledger<MemStore>) -> Vec<SignedEntry> {
    l.entries(0).map(|e| e.expect("entry")).collect()
}

/// The control entries before `checkpoint`, and the checkpoint entry itself.
fn split(all: &[SignedEntry]) -> (Vec<SignedEntry>, SignedEntry) {
    let cp =
        all.iter().rev().find(|e| matches!(e.entry.body, Body::Checkpoint(_))).expect("a checkpoint").clone();
    // Classified as the appender does: against the state before each entry.
    let mut st = pd_ledger::State::default();
    let mut control = Vec::new();
    for e in all {
        if st.is_control(&e.entry.body) {
            control.push(e.clone());
        }
        st.apply(e);
    }
    (control, cp)
}

fn checkpoint(d: &mut Deployed<MemStore>) {
    let body = d.ledger.state().sign_checkpoint(&d.admin);
    d.ledger.sign_append("admin", &d.admin, 3, body).expect("checkpoint");
}

/// A deployed ledger with a crowd of acks, a second version pushed and rolled back, and a
/// checkpoint at the end.
fn busy() -> Deployed<MemStore> {
    let mut d = deployed(MemStore::default());
    d.append_acks(300);
    checkpoint(&mut d);
    let (v2, h2) = (Version::new(1, 1, 0), Hash([6; 32]));
    let carol = pd_ledger::SecretKey::from_seed([2; 32]);
    d.ledger.sign_append("admin", &d.admin, 3, pd_ledger::testkit::package(v2, h2)).expect("package");
    let approve = Body::Approve(pd_ledger::Approve { version: v2, package: h2, reason: "ok".into() });
    d.ledger.sign_append("carol", &carol, 3, approve).expect("approve");
    let push = Body::Push(pd_ledger::Push {
        env: "dev".into(),
        version: v2,
        package: h2,
        waves: Vec::new(),
        reason: "go".into(),
    });
    d.ledger.sign_append("admin", &d.admin, 3, push).expect("push");
    d.append_acks(50);
    let back = Body::Rollback(Rollback {
        env: "dev".into(),
        version: d.version,
        package: d.package,
        reason: "bad".into(),
    });
    d.ledger.sign_append("admin", &d.admin, 4, back).expect("rollback");
    checkpoint(&mut d);
    d
}

#[test]
fn a_follower_of_control_entries_decides_as_a_full_replica_does() {
    let d = busy();
    let all = entries(&d.ledger);
    let (control, cp) = split(&all);
    assert!(control.len() < 12, "acks and checkpoints stay out: {} of {}", control.len(), all.len());
    assert!(
        !control.iter().any(|e| matches!(&e.entry.body, Body::KeyAdd(d) if d.name == "dev-1")),
        "targets' keys too"
    );
    let full = d.ledger.state();
    let mut f = Follower::new();
    f.apply(&control).expect("control entries verify");
    f.accept_checkpoint(&cp, &[], None).expect("the checkpoint commits to them");
    // Its own key comes with an inclusion proof.
    let me = d.target.public();
    assert!(f.key(&me).is_none());
    let key = full.keys().get("dev-1").expect("dev-1");
    let Body::Checkpoint(c) = &cp.entry.body else { unreachable!() };
    let own: Vec<_> = key
        .declared_by
        .iter()
        .map(|&seq| (all[seq as usize].clone(), d.ledger.tree().inclusion_proof(seq, c.size).expect("proof")))
        .collect();
    let mut wrong = own.clone();
    wrong[0].1[0][0] ^= 1;
    assert!(matches!(f.clone().accept_own(&me, &wrong), Err(FollowError::Own(_))));
    assert!(f.clone().accept_own(&d.admin.public(), &own).is_err(), "another key's enrolment");
    f.accept_own(&me, &own).expect("its enrolment is in the checkpoint");
    assert_eq!(f.key(&me).map(|k| k.name.as_str()), Some("dev-1"));
    assert_eq!(f.state().desired("dev", "p"), full.desired("dev", "p"));
    assert_eq!(f.checkpoint(), full.latest_checkpoint().map(|c| (c.checkpoint.size, c.checkpoint.root)));
    // The same install step, for a target that runs the version rolled back from.
    let view = AgentView { running: Some((Version::new(1, 1, 0), Hash([6; 32]))), ..Default::default() };
    let step = agent_step(f.state(), "dev-1", "dev", "p", view);
    assert_eq!(step, agent_step(full, "dev-1", "dev", "p", view));
    assert!(matches!(step, Step::Install(ref d) if d.version == Version::new(1, 0, 0)), "{step:?}");
}

#[test]
fn a_hidden_control_entry_breaks_the_checkpoint_commitment() {
    let d = busy();
    let (mut control, cp) = split(&entries(&d.ledger));
    let rollback = control.pop().expect("the rollback is the last control entry");
    assert!(matches!(rollback.entry.body, Body::Rollback(_)));
    let mut f = Follower::new();
    f.apply(&control).expect("the rest verifies");
    let err = f.accept_checkpoint(&cp, &[], None).expect_err("the rollback was hidden");
    assert!(matches!(err, FollowError::Checkpoint { .. }), "{err}");
    assert!(err.to_string().contains("hides control entries"), "{err}");
    assert_eq!(f.checkpoint(), None, "nothing was accepted");
}

#[test]
fn a_forged_or_left_out_entry_is_refused() {
    let d = busy();
    let (control, _) = split(&entries(&d.ledger));
    // An altered push: its signature no longer verifies.
    let mut forged = control.clone();
    let i = forged.iter().position(|e| matches!(e.entry.body, Body::Push(_))).expect("push");
    if let Body::Push(p) = &mut forged[i].entry.body {
        p.reason = "altered".into();
    }
    let mut f = Follower::new();
    match f.apply(&forged) {
        Err(FollowError::Entry { seq, source }) => {
            assert_eq!(seq, forged[i].entry.seq);
            assert!(matches!(source, pd_ledger::RuleError::BadSignature { .. }), "{source}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // An ack is not a control entry.
    let ack = entries(&d.ledger).into_iter().find(|e| matches!(e.entry.body, Body::Ack(_))).expect("ack");
    let mut f = Follower::new();
    f.apply(&control[..2]).expect("genesis and a key");
    assert!(f.apply(&[ack]).is_err());
}

#[test]
fn a_checkpoint_must_extend_the_one_verified_before() {
    let d = busy();
    let all = entries(&d.ledger);
    let (control, cp) = split(&all);
    let first = all.iter().find(|e| matches!(e.entry.body, Body::Checkpoint(_))).expect("first").clone();
    let Body::Checkpoint(c1) = &first.entry.body else { unreachable!() };
    let Body::Checkpoint(c2) = &cp.entry.body else { unreachable!() };
    let proof = d.ledger.tree().consistency_proof(c1.size, c2.size).expect("proof");
    let held = Some((c1.size, c1.root));
    let mut f = Follower::new();
    f.apply(&control).expect("verify");
    f.clone().accept_checkpoint(&cp, &proof, held).expect("it extends the first");
    // Another history of the same length: the proof does not tie it to what was verified.
    let forked = Some((c1.size, Hash([0xee; 32])));
    let err = f.clone().accept_checkpoint(&cp, &proof, forked).expect_err("a fork");
    assert!(err.to_string().contains("rewritten"), "{err}");
    // A newer checkpoint held than the one offered: the server went back.
    let err = f.accept_checkpoint(&first, &[], Some((c2.size, c2.root))).expect_err("older");
    assert!(err.to_string().contains("does not extend"), "{err}");
}
