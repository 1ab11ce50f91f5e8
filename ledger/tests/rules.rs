//! The rule-and-fold, driven through the whole story with an in-memory store.

use pd_ledger::storage::MemStore;
use pd_ledger::*;

struct World {
    ledger: Ledger<MemStore>,
    keys: Vec<(&'static str, SecretKey)>,
    time: u64,
}

const ADMIN: &str = "admin";

fn key(seed: u8) -> SecretKey {
    SecretKey::from_seed([seed; 32])
}

fn decl(name: &str, k: &SecretKey, roles: &[Role], env: Option<&str>) -> KeyDecl {
    let cert = roles.contains(&Role::Author).then(|| "CERT".to_string());
    EnrolmentRequest::create(name, k, cert).decl(roles.to_vec(), env.map(String::from))
}

fn revoke(name: &str, kind: RevokeKind) -> Body {
    Body::KeyRevoke(KeyRevoke { name: name.into(), kind, reason: "x".into() })
}

impl World {
    /// Genesis with one admin, then an approver and three targets.
    fn new() -> World {
        let mut w = World::genesis(1, &[]);
        for (name, seed, roles, env) in [
            ("carol", 2, vec![Role::Approver], None),
            ("dev-1", 3, vec![Role::Target], Some("dev")),
            ("dev-2", 4, vec![Role::Target], Some("dev")),
            ("staging-1", 5, vec![Role::Target], Some("staging")),
        ] {
            let k = key(seed);
            w.ok(ADMIN, Body::KeyAdd(decl(name, &k, &roles, env)));
            w.keys.push((name, k));
        }
        w
    }

    /// Genesis with `admin` (admin, author, deployer) and further admins, key changes
    /// needing `admin_approvals` of them.
    fn genesis(admin_approvals: u32, more_admins: &[(&'static str, u8)]) -> World {
        let admin = key(1);
        let mut keys = vec![decl(ADMIN, &admin, &[Role::Admin, Role::Author, Role::Deployer], None)];
        keys.extend(more_admins.iter().map(|(n, seed)| decl(n, &key(*seed), &[Role::Admin], None)));
        let genesis = Body::Genesis(Genesis {
            format: pd_ledger::entry::FORMAT_VERSION,
            ledger_id: Hash([9; 32]),
            envs: vec!["dev".into(), "staging".into(), "prod".into()],
            approvals_required: 1,
            admin_approvals,
            min_targets: 1,
            keys,
        });
        let mut ledger = Ledger::open(MemStore::default()).unwrap();
        ledger.sign_append(ADMIN, &admin, 1, genesis).unwrap();
        let mut w = World { ledger, keys: vec![(ADMIN, admin)], time: 1 };
        w.keys.extend(more_admins.iter().map(|(n, seed)| (*n, key(*seed))));
        w
    }

    /// The seq and id of the last entry.
    fn last(&self) -> (u64, Hash) {
        (self.ledger.state().len() - 1, self.ledger.state().head())
    }

    fn try_as(&mut self, actor: &str, body: Body) -> Result<(), LedgerError> {
        self.time += 1;
        let k = &self.keys.iter().find(|(n, _)| *n == actor).expect("test key").1;
        self.ledger.sign_append(actor, k, self.time, body).map(|_| ())
    }

    fn ok(&mut self, actor: &str, body: Body) {
        self.try_as(actor, body).unwrap();
    }

    fn refused(&mut self, actor: &str, body: Body) -> RuleError {
        let before = self.ledger.state().head();
        let err = match self.try_as(actor, body) {
            Err(LedgerError::Refused(e)) => e,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(self.ledger.state().head(), before, "a refusal changes nothing");
        err
    }

    fn package(&mut self, v: Version) -> Hash {
        let h = Hash::of(v.to_string().as_bytes());
        self.ok(
            ADMIN,
            Body::Package(Package {
                version: v,
                name: "llm_policy".into(),
                files: vec![FileDigest { path: "llm_policy.yaml".into(), size: 1, sha256: h, blake3: h }],
                tarball: Artifact { blake3: h, sha256: h, size: 10 },
                openpgp_sig: "SIG".into(),
                checked: Default::default(),
                source: None,
                reason: "r".into(),
            }),
        );
        h
    }
}

use pd_ledger::testkit::push;
fn ack(env: &str, v: Version, h: Hash) -> Body {
    Body::Ack(Ack { env: env.into(), version: v, package: h, outcome: Outcome::Loaded })
}
fn approve(v: Version, h: Hash) -> Body {
    Body::Approve(Approve { version: v, package: h, reason: "lgtm".into() })
}

#[test]
fn the_story_and_its_refusals() {
    let mut w = World::new();
    let v1 = Version::new(23, 0, 0);
    let h1 = w.package(v1);
    assert!(matches!(w.refused(ADMIN, push("dev", v1, h1)), RuleError::NotApproved { have: 0, need: 1, .. }));
    assert!(matches!(w.refused(ADMIN, approve(v1, h1)), RuleError::MissingRole { .. }));
    assert!(matches!(
        w.refused("carol", push("dev", v1, h1)),
        RuleError::MissingRole { role: Role::Deployer, .. }
    ));
    w.ok("carol", approve(v1, h1));
    assert!(matches!(w.refused("carol", approve(v1, h1)), RuleError::DuplicateApproval { .. }));
    assert!(matches!(w.refused(ADMIN, push("staging", v1, h1)), RuleError::PromotionSkip { .. }));
    w.ok(ADMIN, push("dev", v1, h1));
    assert!(matches!(w.refused(ADMIN, push("dev", v1, h1)), RuleError::NotForward { .. }));
    w.ok("dev-1", ack("dev", v1, h1));
    match w.refused(ADMIN, push("staging", v1, h1)) {
        RuleError::PromotionSkip { laggards, .. } => {
            assert_eq!(laggards, vec!["dev-2".to_string()])
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(w.refused("dev-1", ack("staging", v1, h1)), RuleError::BadAck { .. }));
    w.ok("dev-2", ack("dev", v1, h1));
    w.ok(ADMIN, push("staging", v1, h1));

    let v2 = Version::new(23, 1, 0);
    assert!(matches!(
        w.refused(
            ADMIN,
            Body::Package(Package {
                version: v1,
                name: "x".into(),
                files: vec![],
                tarball: Artifact { blake3: Hash([1; 32]), sha256: Hash([1; 32]), size: 1 },
                openpgp_sig: "S".into(),
                checked: Default::default(),
                source: None,
                reason: "r".into(),
            })
        ),
        RuleError::VersionNotIncreasing { .. }
    ));
    let h2 = w.package(v2);
    w.ok("carol", approve(v2, h2));
    w.ok(ADMIN, push("dev", v2, h2));
    // A version the target still ran when v2 became desired is acked (superseded, not adoption)…
    w.ok("dev-1", ack("dev", v1, h1));
    let a = pd_ledger::adoption::adoption(w.ledger.state(), "dev", "llm_policy");
    assert_eq!(a.waiting(), ["dev-1", "dev-2"], "an ack of the superseded version does not adopt v2");
    // …but after loading v2, going back to v1 without a rollback is a downgrade.
    w.ok("dev-1", ack("dev", v2, h2));
    assert!(matches!(w.refused("dev-1", ack("dev", v1, h1)), RuleError::BadAck { .. }), "downgrade");
    assert!(
        matches!(w.refused("staging-1", ack("staging", v2, h2)), RuleError::BadAck { .. }),
        "never desired there"
    );
    assert!(matches!(
        w.refused(
            ADMIN,
            Body::Rollback(Rollback { env: "dev".into(), version: v2, package: h2, reason: "x".into() })
        ),
        RuleError::BadRollback { .. }
    ));
    w.ok(
        ADMIN,
        Body::Rollback(Rollback { env: "dev".into(), version: v1, package: h1, reason: "errors".into() }),
    );
    let dev = w.ledger.state().slot("dev", "llm_policy").unwrap();
    assert_eq!(dev.desired().map(|d| d.version), Some(v1));
    assert_eq!(dev.history().len(), 3);

    w.ok(ADMIN, revoke("carol", RevokeKind::Left));
    assert!(matches!(w.refused("carol", approve(v2, h2)), RuleError::RevokedKey { .. }));
    assert!(matches!(w.refused(ADMIN, revoke(ADMIN, RevokeKind::Left)), RuleError::LastAdmin { .. }));
    assert!(matches!(
        w.refused(ADMIN, Body::KeyAdd(decl("carol", &key(77), &[Role::Approver], None))),
        RuleError::DuplicateKey { .. }
    ));
    assert!(matches!(
        w.refused(ADMIN, Body::KeyAdd(decl("t", &key(78), &[Role::Target], Some("qa")))),
        RuleError::UnknownEnv { .. }
    ));
    assert!(matches!(
        w.refused(ADMIN, Body::KeyAdd(decl("Bad Name", &key(79), &[Role::Approver], None))),
        RuleError::Invalid { .. }
    ));
}

#[test]
fn self_approval_is_refused() {
    let mut w = World::new();
    let k = key(40);
    w.ok(ADMIN, Body::KeyAdd(decl("dana", &k, &[Role::Author, Role::Approver], None)));
    w.keys.push(("dana", k));
    let h = Hash([5; 32]);
    let v = Version::new(1, 0, 0);
    w.ok(
        "dana",
        Body::Package(Package {
            version: v,
            name: "p".into(),
            files: vec![FileDigest { path: "p.yaml".into(), size: 1, sha256: h, blake3: h }],
            tarball: Artifact { blake3: h, sha256: h, size: 1 },
            openpgp_sig: "S".into(),
            checked: Default::default(),
            source: None,
            reason: "r".into(),
        }),
    );
    assert!(matches!(w.refused("dana", approve(v, h)), RuleError::SelfApproval { .. }));
}

#[test]
fn forged_signature_and_broken_chain_are_refused() {
    let mut w = World::new();
    let state = w.ledger.state().clone();
    let mallory = key(66);
    let forged = w.ledger.sign_next(ADMIN, &mallory, 100, revoke("carol", RevokeKind::Left));
    assert!(matches!(w.ledger.append(forged), Err(LedgerError::Refused(RuleError::BadSignature { .. }))));
    let stale = Entry::sign(
        &state.ledger_id(),
        state.len(),
        Hash([1; 32]),
        100,
        ADMIN,
        revoke("carol", RevokeKind::Left),
        &key(1),
    );
    assert!(matches!(w.ledger.append(stale), Err(LedgerError::Refused(RuleError::Prev { .. }))));
    assert_eq!(w.ledger.state().len(), state.len());
}

#[test]
fn batch_append_is_all_or_nothing() {
    let mut w = World::new();
    let len = w.ledger.state().len();
    let admin = key(1);
    let good = Body::KeyAdd(decl("ed", &key(50), &[Role::Approver], None));
    let bad = Body::KeyAdd(decl("ed", &key(51), &[Role::Approver], None));
    let batch = w.ledger.sign_batch(ADMIN, &admin, 10, vec![good.clone(), bad]);
    assert!(matches!(
        w.ledger.append_batch(&batch),
        Err(LedgerError::Refused(RuleError::DuplicateKey { .. }))
    ));
    assert_eq!(w.ledger.state().len(), len);
    assert_eq!(w.ledger.store().len().unwrap(), len);
    let batch = w.ledger.sign_batch(ADMIN, &admin, 10, vec![good]);
    w.ledger.append_batch(&batch).unwrap();
    assert_eq!(w.ledger.store().len().unwrap(), len + 1);
    // Reopening folds to the same state.
    let reopened = replay(
        w.ledger.entries(0).map(|e| e.unwrap().bytes).collect::<Vec<_>>().iter().map(|b| b.as_slice()),
        Signatures::Verify,
    )
    .unwrap();
    assert_eq!(reopened.head(), w.ledger.state().head());
}

#[test]
fn every_entry_limit_is_enforced() {
    use pd_ledger::limits::*;
    let long = |n: usize| "x".repeat(n);
    let mut w = World::new();
    let pkg = |f: &dyn Fn(&mut Package)| {
        let h = Hash([8; 32]);
        let mut p = Package {
            version: Version::new(9, 0, 0),
            name: "p".into(),
            files: vec![FileDigest { path: "p.yaml".into(), size: 1, sha256: h, blake3: h }],
            tarball: Artifact { blake3: h, sha256: h, size: 1 },
            openpgp_sig: "S".into(),
            checked: Default::default(),
            source: None,
            reason: "r".into(),
        };
        f(&mut p);
        Body::Package(p)
    };
    let file = |path: String| FileDigest { path, size: 1, sha256: Hash::ZERO, blake3: Hash::ZERO };
    let cases: Vec<(&str, Body)> = vec![
        ("reason over MAX_TEXT_BYTES", pkg(&|p| p.reason = long(MAX_TEXT_BYTES + 1))),
        ("policy name over MAX_NAME_BYTES", pkg(&|p| p.name = long(MAX_NAME_BYTES + 1))),
        ("path over MAX_PATH_BYTES", pkg(&|p| p.files = vec![file(long(MAX_PATH_BYTES + 1))])),
        (
            "files over MAX_FILES",
            pkg(&|p| p.files = (0..=MAX_FILES).map(|i| file(format!("{i:06}"))).collect()),
        ),
        ("signature over MAX_OPENPGP_BYTES", pkg(&|p| p.openpgp_sig = long(MAX_OPENPGP_BYTES + 1))),
        ("path with ..", pkg(&|p| p.files = vec![file("a/../b".into())])),
        ("absolute path", pkg(&|p| p.files = vec![file("/etc/passwd".into())])),
        (
            "key name over MAX_NAME_BYTES",
            Body::KeyAdd(decl(&long(MAX_NAME_BYTES + 1), &key(90), &[Role::Approver], None)),
        ),
        (
            "certificate over MAX_OPENPGP_BYTES",
            Body::KeyAdd(KeyDecl {
                openpgp: Some(long(MAX_OPENPGP_BYTES + 1)),
                ..decl("big", &key(91), &[Role::Approver], None)
            }),
        ),
    ];
    for (what, body) in cases {
        match w.try_as(ADMIN, body) {
            Err(LedgerError::Refused(RuleError::Invalid { .. })) => {}
            other => panic!("{what}: expected an Invalid refusal, got {other:?}"),
        }
    }
}

#[test]
fn genesis_limits_are_enforced() {
    use pd_ledger::limits::*;
    let admin = key(1);
    let genesis = |envs: Vec<String>, approvals: u32, keys: Vec<KeyDecl>| {
        Body::Genesis(Genesis {
            format: pd_ledger::entry::FORMAT_VERSION,
            ledger_id: Hash([1; 32]),
            envs,
            approvals_required: approvals,
            admin_approvals: 1,
            min_targets: 1,
            keys,
        })
    };
    let admin_decl = || decl(ADMIN, &admin, &[Role::Admin], None);
    let envs = |n: usize| (0..n).map(|i| format!("e{i}")).collect::<Vec<_>>();
    let many_keys: Vec<KeyDecl> = std::iter::once(admin_decl())
        .chain(
            (0..MAX_GENESIS_KEYS)
                .map(|i| decl(&format!("k{i}"), &key(100 + i as u8), &[Role::Approver], None)),
        )
        .collect();
    let cases = [
        ("too many environments", genesis(envs(MAX_ENVS + 1), 1, vec![admin_decl()])),
        ("no environment", genesis(vec![], 1, vec![admin_decl()])),
        ("approvals over the limit", genesis(envs(1), MAX_APPROVALS_REQUIRED + 1, vec![admin_decl()])),
        ("zero approvals", genesis(envs(1), 0, vec![admin_decl()])),
        ("too many keys", genesis(envs(1), 1, many_keys)),
        ("duplicate environment", genesis(vec!["dev".into(), "dev".into()], 1, vec![admin_decl()])),
    ];
    for (what, body) in cases {
        let mut l = Ledger::open(MemStore::default()).unwrap();
        match l.sign_append(ADMIN, &admin, 1, body) {
            Err(LedgerError::Refused(RuleError::Invalid { .. })) => {}
            other => panic!("{what}: expected an Invalid refusal, got {other:?}"),
        }
        assert_eq!(l.store().len().unwrap(), 0);
    }
}

#[test]
fn a_holder_custody_key_needs_its_own_proof_of_possession() {
    let mut w = World::new();
    let mallory = key(60);
    // An admin copying someone's request but swapping in a key of their own.
    let stolen = decl("erin", &key(61), &[Role::Approver], None);
    let forged = KeyDecl { public_key: mallory.public(), ..stolen };
    assert!(matches!(w.refused(ADMIN, Body::KeyAdd(forged)), RuleError::Invalid { field: "custody", .. }));
    // An admin-custody key needs no proof, and the ledger says so for every act it signs.
    let k = key(62);
    w.ok(
        ADMIN,
        Body::KeyAdd(KeyDecl { custody: Custody::Admin, ..decl("frank", &k, &[Role::Approver], None) }),
    );
    w.keys.push(("frank", k));
    let v = Version::new(1, 0, 0);
    let h = w.package(v);
    w.ok("frank", approve(v, h));
    w.ok("carol", approve(v, h));
    let s = w.ledger.state();
    let dependent: Vec<String> = s.not_independent().iter().map(ToString::to_string).collect();
    assert_eq!(
        dependent,
        [format!(
            "approval by frank of {v} (#{}): key created in admin's custody (not independent)",
            s.len() - 2
        )]
    );
}

#[test]
fn rotation_replaces_the_key_under_the_same_name_and_roles() {
    let mut w = World::new();
    let v = Version::new(1, 0, 0);
    let h = w.package(v);
    w.ok("carol", approve(v, h));
    let new = key(70);
    let req = EnrolmentRequest::create("carol", &new, None);
    let rotate = |old| {
        Body::KeyRotate(KeyRotate {
            name: "carol".into(),
            public_key: req.public_key,
            openpgp: None,
            custody: Custody::Holder(req.proof),
            old,
            reason: "new laptop".into(),
        })
    };
    assert!(matches!(
        w.refused("carol", rotate(RevokeKind::Left)),
        RuleError::MissingRole { role: Role::Admin, .. }
    ));
    w.ok(ADMIN, rotate(RevokeKind::Left));
    let (rotated_at, _) = w.last();
    // The old key stops acting; the new one acts under the same name and roles.
    let v2 = Version::new(2, 0, 0);
    let h2 = w.package(v2);
    assert!(matches!(w.refused("carol", approve(v2, h2)), RuleError::BadSignature { .. }));
    w.keys.push(("carol", new));
    w.keys.retain(|(n, k)| *n != "carol" || k.public() == req.public_key);
    w.ok("carol", approve(v2, h2));
    let s = w.ledger.state();
    assert_eq!(s.keys()["carol"].decl.roles, [Role::Approver]);
    assert_eq!(s.package(v).unwrap().counted_approvals(), 1, "a left key's approvals still count");
    assert_eq!(s.key_at("carol", rotated_at).unwrap().public_key, &key(2).public());
    assert_eq!(s.key_at("carol", rotated_at + 1).unwrap().public_key, &req.public_key);
    // Neither key can be enrolled again, and the name only through rotation.
    assert!(matches!(
        w.refused(ADMIN, rotate(RevokeKind::Left)),
        RuleError::Invalid { field: "public_key", .. }
    ));
    assert!(matches!(
        w.refused(ADMIN, Body::KeyAdd(decl("carol2", &key(2), &[Role::Approver], None))),
        RuleError::DuplicateKey { .. }
    ));
    assert!(matches!(
        w.refused(ADMIN, Body::KeyAdd(decl("carol", &key(71), &[Role::Approver], None))),
        RuleError::DuplicateKey { .. }
    ));
}

#[test]
fn a_compromised_key_loses_its_approvals_of_packages_not_yet_pushed() {
    let mut w = World::new();
    let (v1, v2) = (Version::new(1, 0, 0), Version::new(2, 0, 0));
    let h1 = w.package(v1);
    w.ok("carol", approve(v1, h1));
    w.ok(ADMIN, push("dev", v1, h1));
    let h2 = w.package(v2);
    w.ok("carol", approve(v2, h2));
    w.ok(ADMIN, revoke("carol", RevokeKind::Compromised));
    let s = w.ledger.state();
    assert_eq!(s.package(v1).unwrap().counted_approvals(), 1, "v1 was already pushed: its approval stands");
    assert_eq!(s.package(v2).unwrap().counted_approvals(), 0);
    assert!(matches!(w.refused(ADMIN, push("dev", v2, h2)), RuleError::NotApproved { have: 0, .. }));
    assert!(matches!(w.refused("carol", approve(v2, h2)), RuleError::RevokedKey { .. }));
}

#[test]
fn with_an_admin_quorum_one_admin_only_proposes_and_a_second_completes() {
    assert!(
        matches!(
            {
                let admin = key(1);
                let mut l = Ledger::open(MemStore::default()).unwrap();
                let g = Body::Genesis(Genesis {
                    format: pd_ledger::entry::FORMAT_VERSION,
                    ledger_id: Hash([9; 32]),
                    envs: vec!["dev".into()],
                    approvals_required: 1,
                    admin_approvals: 2,
                    min_targets: 1,
                    keys: vec![decl(ADMIN, &admin, &[Role::Admin], None)],
                });
                l.sign_append(ADMIN, &admin, 1, g)
            },
            Err(LedgerError::Refused(RuleError::Invalid { field: "admin_approvals", .. }))
        ),
        "a quorum of 2 needs 2 admins at genesis"
    );
    let mut w = World::genesis(2, &[("bob", 20)]);
    let carol = key(2);
    w.ok(ADMIN, Body::KeyAdd(decl("carol", &carol, &[Role::Approver], None)));
    let (seq, id) = w.last();
    assert!(!w.ledger.state().keys().contains_key("carol"), "one admin only proposes");
    assert!(w.ledger.state().proposals().contains_key(&seq));
    let bad = |seq, id| Body::KeyApprove(KeyApprove { seq, id });
    assert!(matches!(w.refused(ADMIN, bad(seq, id)), RuleError::BadKeyApproval { .. }), "not the proposer");
    assert!(
        matches!(w.refused("bob", bad(seq, Hash([0; 32]))), RuleError::BadKeyApproval { .. }),
        "exact id"
    );
    assert!(matches!(w.refused("bob", bad(seq + 9, id)), RuleError::BadKeyApproval { .. }));
    w.ok("bob", bad(seq, id));
    assert!(w.ledger.state().active_key("carol").is_some(), "two admins enrol");
    assert!(w.ledger.state().proposals().is_empty());
    assert!(matches!(w.refused("bob", bad(seq, id)), RuleError::BadKeyApproval { .. }), "done once");
    // Revoking an admin would leave fewer than the quorum: refused even as a proposal.
    assert!(matches!(
        w.refused(ADMIN, revoke("bob", RevokeKind::Left)),
        RuleError::LastAdmin { left: 1, need: 2, .. }
    ));
}

#[test]
fn a_proposal_is_checked_again_when_it_completes() {
    let mut w = World::genesis(2, &[("bob", 20)]);
    w.ok(ADMIN, Body::KeyAdd(decl("carol", &key(2), &[Role::Approver], None)));
    let first = w.last();
    w.ok(ADMIN, Body::KeyAdd(decl("carol", &key(3), &[Role::Approver], None)));
    let second = w.last();
    w.ok("bob", Body::KeyApprove(KeyApprove { seq: first.0, id: first.1 }));
    assert!(matches!(
        w.refused("bob", Body::KeyApprove(KeyApprove { seq: second.0, id: second.1 })),
        RuleError::DuplicateKey { .. }
    ));
}

#[test]
fn a_key_file_acts_only_under_the_name_and_environment_it_was_enrolled_with() {
    let w = World::new();
    let s = w.ledger.state();
    let dev1 = key(3).public();
    assert_eq!(identify(s, &dev1, None, None).unwrap().name, "dev-1");
    assert_eq!(identify(s, &dev1, Some("dev-1"), Some("dev")).unwrap().env.as_deref(), Some("dev"));
    let name = identify(s, &dev1, Some("dev-2"), None).unwrap_err().to_string();
    assert!(name.contains("--as dev-2") && name.contains("enrols as dev-1"), "{name}");
    let env = identify(s, &dev1, None, Some("prod")).unwrap_err().to_string();
    assert!(env.contains("--env prod") && env.contains("a target of dev"), "{env}");
    assert!(matches!(identify(s, &key(99).public(), None, None), Err(IdentifyError::NotEnrolled { .. })));
}

/// A rotation of `name` to `new`'s key (with a certificate) in holder custody.
fn rotate_to(name: &str, new: &SecretKey, old: RevokeKind) -> Body {
    let req = EnrolmentRequest::create(name, new, Some("CERT".into()));
    Body::KeyRotate(KeyRotate {
        name: name.into(),
        public_key: req.public_key,
        openpgp: req.openpgp,
        custody: Custody::Holder(req.proof),
        old,
        reason: "x".into(),
    })
}

#[test]
fn a_compromised_admin_key_loses_its_support_for_pending_key_changes() {
    let mut w = World::genesis(2, &[("bob", 20), ("cy", 21)]);
    // The stolen admin key proposes a fake admin and stands behind another proposal.
    w.ok(ADMIN, Body::KeyAdd(decl("mallory", &key(40), &[Role::Admin], None)));
    let fake = w.last();
    w.ok("bob", Body::KeyAdd(decl("carol", &key(41), &[Role::Approver], None)));
    let carol = w.last();
    w.ok(ADMIN, Body::KeyApprove(KeyApprove { seq: carol.0, id: carol.1 }));
    assert!(w.ledger.state().active_key("carol").is_some(), "two admins enrolled carol");
    w.ok("bob", Body::KeyAdd(decl("dave", &key(42), &[Role::Approver], None)));
    let dave = w.last();
    // bob and cy rotate admin's key as compromised.
    w.ok("bob", rotate_to(ADMIN, &key(43), RevokeKind::Compromised));
    let rot = w.last();
    w.ok("cy", Body::KeyApprove(KeyApprove { seq: rot.0, id: rot.1 }));
    let s = w.ledger.state();
    assert!(!s.proposals().contains_key(&fake.0), "the stolen key's proposal is dropped");
    assert!(s.proposals().contains_key(&dave.0), "others' proposals stay");
    assert!(matches!(
        w.refused("cy", Body::KeyApprove(KeyApprove { seq: fake.0, id: fake.1 })),
        RuleError::BadKeyApproval { .. }
    ));
}

#[test]
fn under_an_admin_quorum_an_admin_key_cannot_be_generated_by_another_admin() {
    let mut w = World::genesis(2, &[("bob", 20)]);
    let mut d = decl("eve", &key(50), &[Role::Admin], None);
    d.custody = Custody::Admin;
    assert!(matches!(w.refused(ADMIN, Body::KeyAdd(d.clone())), RuleError::Invalid { field: "custody", .. }));
    d.roles = vec![Role::Approver];
    w.ok(ADMIN, Body::KeyAdd(d));
}

#[test]
fn a_compromised_targets_acks_stop_counting_and_its_new_key_acks_again() {
    let mut w = World::new();
    let v = Version::new(1, 0, 0);
    let h = w.package(v);
    w.ok("carol", approve(v, h));
    w.ok(ADMIN, push("dev", v, h));
    w.ok("dev-1", ack("dev", v, h));
    assert!(w.ledger.state().slot("dev", "llm_policy").unwrap().report("dev-1").is_some());
    w.ok(ADMIN, rotate_to("dev-1", &key(60), RevokeKind::Compromised));
    let s = w.ledger.state();
    assert!(
        s.slot("dev", "llm_policy").unwrap().report("dev-1").is_none(),
        "a stolen key's ack is not adoption"
    );
    assert!(pd_ledger::adoption::adoption(s, "dev", "llm_policy").waiting().contains(&"dev-1".to_string()));
}

/// Adoption, one line per history: what the slot holds after the steps, and whether the
/// promotion rule lets the version on to staging (the two must agree).
#[test]
fn adoption_table() {
    use pd_ledger::adoption::{adoption, Status};
    type Steps = &'static [(&'static str, &'static str)];
    // (steps, adopted, dev-1, dev-2); steps act on v1 ("push1", "ack1 dev-1", …) and v2.
    let table: &[(Steps, bool, Status, Status)] = &[
        (&[("push", "v1")], false, Status::Waiting, Status::Waiting),
        (&[("push", "v1"), ("ack dev-1", "v1")], false, Status::Loaded, Status::Waiting),
        (&[("push", "v1"), ("ack dev-1", "v1"), ("ack dev-2", "v1")], true, Status::Loaded, Status::Loaded),
        (
            &[("push", "v1"), ("fail dev-1", "v1"), ("ack dev-2", "v1")],
            false,
            Status::Failed("no".into()),
            Status::Loaded,
        ),
        (
            &[("push", "v1"), ("fail dev-1", "v1"), ("retry", "v1"), ("ack dev-2", "v1")],
            false,
            Status::Waiting,
            Status::Loaded,
        ),
        (
            &[("push", "v1"), ("fail dev-1", "v1"), ("ack dev-1", "v1"), ("ack dev-2", "v1")],
            true,
            Status::Loaded,
            Status::Loaded,
        ),
        // Acks before a rollback made v1 desired again do not count for it.
        (
            &[("push", "v1"), ("ack dev-1", "v1"), ("ack dev-2", "v1"), ("push", "v2"), ("rollback", "v1")],
            false,
            Status::Waiting,
            Status::Waiting,
        ),
    ];
    for (i, (steps, adopted, one, two)) in table.iter().enumerate() {
        let mut w = World::new();
        let (v1, v2) = (Version::new(1, 0, 0), Version::new(1, 1, 0));
        let (h1, h2) = (w.package(v1), w.package(v2));
        w.ok("carol", approve(v1, h1));
        w.ok("carol", approve(v2, h2));
        for (what, v) in steps.iter() {
            let (v, h) = if *v == "v1" { (v1, h1) } else { (v2, h2) };
            let (kind, target) = what.split_once(' ').unwrap_or((what, ""));
            let body = match kind {
                "push" => push("dev", v, h),
                "ack" => ack("dev", v, h),
                "fail" => Body::Ack(Ack {
                    env: "dev".into(),
                    version: v,
                    package: h,
                    outcome: Outcome::Failed("no".into()),
                }),
                "retry" => {
                    Body::Retry(Retry { env: "dev".into(), version: v, package: h, reason: "fixed".into() })
                }
                "rollback" => {
                    Body::Rollback(Rollback { env: "dev".into(), version: v, package: h, reason: "r".into() })
                }
                other => panic!("{other}"),
            };
            w.ok(if target.is_empty() { ADMIN } else { target }, body);
        }
        let a = adoption(w.ledger.state(), "dev", "llm_policy");
        assert_eq!(a.adopted(), *adopted, "line {i}");
        assert_eq!(
            a.targets,
            vec![("dev-1".to_string(), one.clone()), ("dev-2".to_string(), two.clone())],
            "line {i}"
        );
        let v = a.desired.as_ref().map(|d| d.version).unwrap();
        let promoted = pd_ledger::adoption::check_promotion(
            w.ledger.state(),
            "staging",
            v,
            &if v == v1 { h1 } else { h2 },
        );
        assert_eq!(promoted.is_ok(), *adopted, "line {i}: the rule and adoption disagree: {promoted:?}");
    }
}

/// Two policy sets in one environment: each has its own slot, pushing one leaves the other's
/// desired version and acks as they were, and a path of one set cannot be packaged in another.
#[test]
fn policy_sets_are_independent_and_a_path_belongs_to_one_set() {
    let mut w = World::new();
    let (v1, v2) = (Version::new(1, 0, 0), Version::new(2, 0, 0));
    let h1 = w.package(v1);
    let web = |name: &str, path: &str, seed: u8| {
        let h = Hash([seed; 32]);
        Body::Package(Package {
            version: v2,
            name: name.into(),
            files: vec![FileDigest { path: path.into(), size: 1, sha256: h, blake3: h }],
            tarball: Artifact { blake3: h, sha256: h, size: 10 },
            openpgp_sig: "SIG".into(),
            checked: Default::default(),
            source: None,
            reason: "r".into(),
        })
    };
    match w.refused(ADMIN, web("web", "llm_policy.yaml", 7)) {
        RuleError::Invalid { field: "file path", problem } => {
            assert!(problem.contains("llm_policy"), "{problem}")
        }
        other => panic!("{other:?}"),
    }
    w.ok(ADMIN, web("web", "web.yaml", 7));
    let h2 = Hash([7; 32]);
    w.ok("carol", approve(v1, h1));
    w.ok("carol", approve(v2, h2));
    w.ok(ADMIN, push("dev", v1, h1));
    w.ok("dev-1", ack("dev", v1, h1));
    w.ok(ADMIN, push("dev", v2, h2));
    let st = w.ledger.state();
    assert_eq!(
        st.desired("dev", "llm_policy").map(|d| d.version),
        Some(v1),
        "pushing web left llm_policy alone"
    );
    assert_eq!(st.desired("dev", "web").map(|d| d.version), Some(v2));
    let llm = pd_ledger::adoption::adoption(st, "dev", "llm_policy");
    assert_eq!(
        llm.targets[0].1,
        pd_ledger::adoption::Status::Loaded,
        "dev-1's ack of llm_policy still counts"
    );
}

/// A slot as the model sees it: the desired version and its entry, each target's status,
/// and whether the slot is adopted.
type Model = (Option<(Version, u64)>, Vec<(String, adoption::Status)>, bool);

/// What the adoption module must say, derived from the raw entries by a model that knows
/// nothing but the definition: per slot, the last push or rollback makes a version desired;
/// an active target of the environment adopted it if its last ack there is a `loaded` of that
/// tarball after that entry; a failure counts until a later `retry`; a slot is adopted when
/// every one of at least max(1, minimum) targets adopted it.
fn model(entries: &[SignedEntry], env: &str) -> Model {
    use adoption::Status;
    let (mut desired, mut retry, mut min) = (None, 0, 1u32);
    let mut targets: Vec<String> = Vec::new();
    let mut last_ack: std::collections::BTreeMap<String, (u64, Version, Outcome)> = Default::default();
    for e in entries {
        let seq = e.entry.seq;
        match &e.entry.body {
            Body::Push(p) if p.env == env => desired = Some((p.version, seq)),
            Body::Rollback(r) if r.env == env => desired = Some((r.version, seq)),
            Body::Retry(r) if r.env == env => retry = seq,
            Body::EnvSet(s) if s.env == env => min = s.policy.min_targets,
            Body::KeyAdd(k) if k.env.as_deref() == Some(env) => targets.push(k.name.clone()),
            Body::KeyRevoke(k) => targets.retain(|t| *t != k.name),
            Body::Ack(a) if a.env == env => {
                drop(last_ack.insert(e.entry.actor.clone(), (seq, a.version, a.outcome.clone())))
            }
            _ => {}
        }
    }
    let statuses: Vec<(String, Status)> = targets
        .iter()
        .map(|t| {
            let status = match (desired, last_ack.get(t)) {
                (Some((v, at)), Some((seq, av, outcome))) if *av == v && *seq > at => match outcome {
                    Outcome::Loaded => Status::Loaded,
                    Outcome::Failed(_) if retry > *seq => Status::Waiting,
                    Outcome::Failed(e) => Status::Failed(e.clone()),
                },
                _ => Status::Waiting,
            };
            (t.clone(), status)
        })
        .collect();
    let adopted = desired.is_some()
        && statuses.len() >= min.max(1) as usize
        && statuses.iter().all(|(_, s)| *s == Status::Loaded);
    (desired, statuses, adopted)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
    /// Over random histories of pushes, rollbacks, acks, failures, retries, revocations and
    /// fleet minimums: the adoption module agrees with the model, the deploy wait's reading
    /// of it (nothing failed, nothing waiting, a full fleet) with `adopted`, the promotion rule
    /// with adoption one environment down, and the verifier's replay of the entries with the
    /// appender's state.
    #[test]
    fn adoption_the_wait_the_rule_and_the_verifier_agree(ops in proptest::collection::vec((0u8..20, 0usize..3, 0usize..3), 1..40)) {
        use adoption::{adoption, check_promotion};
        let mut w = World::new();
        let versions: Vec<(Version, Hash)> = (0..3).map(|i| {
            let v = Version::new(1, i, 0);
            let h = w.package(v);
            w.ok("carol", approve(v, h));
            (v, h)
        }).collect();
        let targets = [("dev-1", "dev"), ("dev-2", "dev"), ("staging-1", "staging")];
        for (kind, t, v) in ops {
            let ((version, package), (target, tenv)) = (versions[v], targets[t]);
            // Weighted towards acks, which most histories are made of.
            let (actor, body) = match kind {
                0..=2 => (ADMIN, push("dev", version, package)),
                3 => (ADMIN, push("staging", version, package)),
                4..=5 => (ADMIN, Body::Rollback(Rollback { env: tenv.into(), version, package, reason: "r".into() })),
                6..=13 => (target, ack(tenv, version, package)),
                14..=15 => (target, Body::Ack(Ack { env: tenv.into(), version, package, outcome: Outcome::Failed("no".into()) })),
                16..=17 => (ADMIN, Body::Retry(Retry { env: tenv.into(), version, package, reason: "again".into() })),
                18 => (ADMIN, revoke(target, RevokeKind::Left)),
                _ => (ADMIN, Body::EnvSet(EnvSet { env: tenv.into(), policy: EnvPolicy::with_min_targets(v as u32 + 1), reason: "fleet".into() })),
            };
            let before = w.ledger.state().head();
            if w.try_as(actor, body).is_err() {
                proptest::prop_assert_eq!(w.ledger.state().head(), before, "a refusal changes nothing");
            }
            let st = w.ledger.state();
            let entries: Vec<SignedEntry> = w.ledger.entries(0).map(|e| e.unwrap()).collect();
            for env in ["dev", "staging"] {
                let a = adoption(st, env, "llm_policy");
                let (desired, statuses, adopted) = model(&entries, env);
                proptest::prop_assert_eq!(a.desired.as_ref().map(|d| (d.version, d.seq)), desired);
                proptest::prop_assert_eq!(&a.targets, &statuses);
                proptest::prop_assert_eq!(a.adopted(), adopted);
                let waited = a.failed().is_empty() && a.waiting().is_empty() && a.short_by() == 0;
                proptest::prop_assert_eq!(a.desired.is_some() && waited, a.adopted(), "the wait's reading");
            }
            let dev = adoption(st, "dev", "llm_policy");
            let staging = adoption(st, "staging", "llm_policy");
            let highest = st.slot("staging", "llm_policy").and_then(|s| s.history().iter().map(|d| d.version).max());
            for (version, package) in &versions {
                let allowed = dev.adopted_version(*version)
                    && staging.short_by() == 0
                    && highest.is_none_or(|h| *version > h);
                let rule = check_promotion(st, "staging", *version, package);
                proptest::prop_assert_eq!(rule.is_ok(), allowed, "{} to staging: {:?}", version, rule);
            }
            let bytes: Vec<Vec<u8>> = entries.iter().map(|e| e.bytes.clone()).collect();
            let replayed = replay::replay(bytes.iter().map(|b| b.as_slice()), replay::Signatures::Verify).unwrap();
            proptest::prop_assert_eq!(
                serde_json::to_value(adoption::overview(&replayed)).unwrap(),
                serde_json::to_value(adoption::overview(st)).unwrap()
            );
        }
    }
}

/// A withdrawn package can never be approved, pushed, rolled back to or retried, an agent
/// installs nothing withdrawn, and the slot moves on from what it had before it.
#[test]
fn a_withdrawn_package_is_never_deployable_and_no_longer_blocks() {
    use pd_ledger::adoption::{agent_step, AgentView, Step};
    let mut w = World::new();
    let (v1, v2, v3) = (Version::new(1, 0, 0), Version::new(2, 0, 0), Version::new(3, 0, 0));
    let (h1, h2) = (w.package(v1), w.package(v2));
    w.ok("carol", approve(v1, h1));
    w.ok("carol", approve(v2, h2));
    w.ok(ADMIN, push("dev", v2, h2));
    assert!(matches!(w.refused(ADMIN, push("dev", v1, h1)), RuleError::NotForward { .. }));
    let withdraw = |v, h| Body::Withdraw(Withdraw { version: v, package: h, reason: "junk".into() });
    assert!(
        matches!(w.refused("dev-1", withdraw(v2, h2)), RuleError::MissingRole { .. }),
        "a target may not"
    );
    w.ok("carol", withdraw(v2, h2));
    assert!(matches!(w.refused(ADMIN, withdraw(v2, h2)), RuleError::Withdrawn { .. }), "once");
    let h3 = w.package(v3);
    assert!(matches!(w.refused("carol", approve(v2, h2)), RuleError::Withdrawn { .. }));
    for body in [
        push("staging", v2, h2),
        Body::Retry(Retry { env: "dev".into(), version: v2, package: h2, reason: "r".into() }),
    ] {
        assert!(matches!(w.refused(ADMIN, body), RuleError::Withdrawn { .. }));
    }
    let st = w.ledger.state();
    let view = AgentView { running: Some((v1, h1)), ..AgentView::default() };
    assert_eq!(
        agent_step(st, "dev-1", "dev", "llm_policy", view),
        Step::Idle,
        "nothing withdrawn is installed"
    );
    // v1 is below v2, but v2 no longer counts: the older good package goes out again.
    w.ok(ADMIN, push("dev", v1, h1));
    w.ok("carol", approve(v3, h3));
    w.ok(ADMIN, push("dev", v3, h3));
    assert!(matches!(
        w.refused(
            ADMIN,
            Body::Rollback(Rollback { env: "dev".into(), version: v2, package: h2, reason: "r".into() })
        ),
        RuleError::Withdrawn { .. }
    ));
}

/// Statements are placed by the appender: one lands wherever the ledger's end is, as long as
/// it is fresh (its base exists and is within the window, its time near the appender's) and
/// not already in the ledger.
#[test]
fn a_statement_lands_once_fresh_and_refuses_replays_stale_bases_and_far_clocks() {
    let mut w = World::new();
    let admin = key(1);
    let id = w.ledger.state().ledger_id();
    let base = w.ledger.state().len();
    let place = |w: &mut World, s: Statement, time_ms: u64| -> Result<SignedEntry, RuleError> {
        let mut batch = w.ledger.batch();
        let placed = batch.push(s, time_ms, None).cloned();
        if placed.is_ok() {
            w.ledger.commit(batch).unwrap();
        }
        placed
    };
    let add = |name: &str, seed: u8| Body::KeyAdd(decl(name, &key(seed), &[Role::Approver], None));
    // Based on an older length, it still lands at the end: others appended meanwhile.
    let first = Statement::sign(&id, ADMIN, base, 1000, add("ed", 50), &admin);
    w.ok(ADMIN, add("fay", 51));
    let landed = place(&mut w, first.clone(), 1000).expect("a statement based on an older length lands");
    assert_eq!((landed.entry.seq, landed.entry.base), (base + 1, base));
    // The same statement again, anywhere in the window: refused as a replay.
    assert_eq!(place(&mut w, first, 1000).unwrap_err(), RuleError::Replayed { actor: ADMIN.into() });
    let len = w.ledger.state().len();
    let future = Statement::sign(&id, ADMIN, len + 1, 1000, add("gil", 52), &admin);
    assert_eq!(place(&mut w, future, 1000).unwrap_err(), RuleError::FutureBase { base: len + 1, seq: len });
    // Signed a minute and more ahead of the appender's clock, or ten minutes and more before.
    let ahead =
        Statement::sign(&id, ADMIN, len, 1000 + limits::MAX_CLOCK_AHEAD_MS + 1, add("gil", 52), &admin);
    assert!(matches!(place(&mut w, ahead, 1000), Err(RuleError::StatementTime { .. })));
    let old = Statement::sign(&id, ADMIN, len, 1000, add("gil", 52), &admin);
    assert!(matches!(
        place(&mut w, old, 1001 + limits::MAX_STATEMENT_AGE_MS),
        Err(RuleError::StatementTime { .. })
    ));
    // A statement for another ledger does not verify here.
    let foreign = Statement::sign(&Hash([8; 32]), ADMIN, len, 1000, add("gil", 52), &admin);
    assert_eq!(place(&mut w, foreign, 1000).unwrap_err(), RuleError::BadSignature { actor: ADMIN.into() });
    assert_eq!(w.ledger.state().len(), len, "refusals append nothing");
}

/// Past the window a statement is stale: its digest is no longer kept, so it must not land.
#[test]
fn a_statement_older_than_the_window_is_stale() {
    let mut d = testkit::deployed(MemStore::default());
    let id = d.ledger.state().ledger_id();
    let base = d.ledger.state().len();
    let ack = Statement::sign(&id, "dev-1", base, 3, d.ack(), &d.target);
    let mut batch = d.ledger.batch();
    batch.push(ack.clone(), 3, None).expect("fresh, it would land");
    d.append_acks(limits::STATEMENT_WINDOW as usize + 1);
    let seq = d.ledger.state().len();
    let mut batch = d.ledger.batch();
    assert_eq!(
        batch.push(ack, 3, None).unwrap_err(),
        RuleError::StaleStatement { base, seq, window: limits::STATEMENT_WINDOW }
    );
}

/// Acks of superseded versions are facts, so one may land after a rollback; the rollback
/// still lets the target go back (found by the fleet simulation, seed 2028609229881526261).
#[test]
fn a_late_ack_of_the_version_rolled_back_from_does_not_block_the_rollback() {
    let mut d = pd_ledger::testkit::deployed(MemStore::default());
    let (v1, h1) = (d.version, d.package);
    let (v2, h2) = (Version::new(1, 1, 0), Hash([6; 32]));
    let carol = key(2);
    // v1 was adopted (a rollback returns only to a version that got through).
    d.ledger.sign_append("dev-1", &d.target, 2, ack("dev", v1, h1)).expect("loads v1");
    d.ledger.sign_append("admin", &d.admin, 2, pd_ledger::testkit::package(v2, h2)).expect("package");
    d.ledger.sign_append("carol", &carol, 2, approve(v2, h2)).expect("approve");
    d.ledger.sign_append("admin", &d.admin, 2, push("dev", v2, h2)).expect("push v2");
    let back = Body::Rollback(Rollback { env: "dev".into(), version: v1, package: h1, reason: "bad".into() });
    d.ledger.sign_append("admin", &d.admin, 3, back).expect("rollback");
    // dev-1 loaded v2 before the rollback; its ack arrives after it.
    d.ledger.sign_append("dev-1", &d.target, 3, ack("dev", v2, h2)).expect("a late ack of v2 is a fact");
    d.ledger.sign_append("dev-1", &d.target, 4, ack("dev", v1, h1)).expect("the rollback lets it go back");
    assert!(pd_ledger::adoption::adoption(d.ledger.state(), "dev", "p").adopted());
    // Without a rollback after v2 was desired, going back stays refused.
    let (v3, h3) = (Version::new(1, 2, 0), Hash([7; 32]));
    d.ledger.sign_append("admin", &d.admin, 4, pd_ledger::testkit::package(v3, h3)).expect("package");
    d.ledger.sign_append("carol", &carol, 4, approve(v3, h3)).expect("approve");
    d.ledger.sign_append("admin", &d.admin, 4, push("dev", v3, h3)).expect("push v3");
    d.ledger.sign_append("dev-1", &d.target, 5, ack("dev", v3, h3)).expect("loads v3");
    let err = d.ledger.sign_append("dev-1", &d.target, 5, ack("dev", v1, h1)).expect_err("a downgrade");
    assert!(err.to_string().contains("needs a rollback"), "{err}");
}

#[test]
fn what_a_target_runs_is_the_newest_it_signed_its_heartbeat_or_a_later_ack() {
    use pd_ledger::heartbeat::{running, Heartbeat, Running};
    let mut d = pd_ledger::testkit::deployed(MemStore::default());
    let (v1, h1) = (d.version, d.package);
    let beat = |time_ms: u64, runs: Option<Version>| Heartbeat {
        ledger_id: Hash([9; 32]),
        target: "dev-1".into(),
        time_ms,
        interval_ms: 1_000,
        running: runs.map(|version| Running { set: "p".into(), version, package: h1 }).into_iter().collect(),
        replica_len: 0,
        healthy: None,
    };
    // Before any ack, only a heartbeat tells.
    assert!(running(d.ledger.state(), "dev-1", None).is_empty());
    assert_eq!(running(d.ledger.state(), "dev-1", Some(&beat(3, Some(v1)))).get("p"), Some(&v1));
    d.ledger.sign_append("dev-1", &d.target, 5, ack("dev", v1, h1)).expect("ack signed at 5");
    let st = d.ledger.state();
    // The ack, signed at 5 by the target's clock, is newer than a heartbeat it sent at 4 ...
    assert_eq!(running(st, "dev-1", None).get("p"), Some(&v1));
    assert_eq!(running(st, "dev-1", Some(&beat(4, None))).get("p"), Some(&v1));
    // ... and older than one it sent at 6, which says what runs now (nothing: a new directory).
    assert_eq!(running(st, "dev-1", Some(&beat(6, None))).get("p"), None);
    // A failed ack leaves the version it loaded before, as of that earlier ack.
    let failed =
        Body::Ack(Ack { env: "dev".into(), version: v1, package: h1, outcome: Outcome::Failed("x".into()) });
    d.ledger.sign_append("dev-1", &d.target, 7, failed).expect("a failed ack is a fact");
    assert_eq!(running(d.ledger.state(), "dev-1", Some(&beat(6, None))).get("p"), None);
    assert_eq!(running(d.ledger.state(), "dev-1", Some(&beat(4, None))).get("p"), Some(&v1));
}

fn env_set(env: &str, policy: EnvPolicy) -> Body {
    Body::EnvSet(EnvSet { env: env.into(), policy, reason: "policy".into() })
}

fn stage(env: &str, version: Version, package: Hash, wave: u32) -> Stage {
    Stage { env: env.into(), version, package, wave }
}

fn wave(env: &str, v: Version, h: Hash, n: u32, targets: &[&str]) -> Body {
    Body::Wave(WaveStart {
        stage: stage(env, v, h, n),
        targets: targets.iter().map(|t| t.to_string()).collect(),
    })
}

fn gate(env: &str, v: Version, h: Hash, n: u32, passed: bool) -> Body {
    let value = if passed { "exit 0" } else { "exit 1" }.to_string();
    Body::Gate(GateCheck { stage: stage(env, v, h, n), gate: "cmd:./smoke.sh".into(), value, passed })
}

fn bake(env: &str, v: Version, h: Hash, n: u32, passed: bool) -> Body {
    Body::Bake(Bake { stage: stage(env, v, h, n), passed, reason: "baked".into() })
}

impl World {
    fn enrol_target(&mut self, name: &'static str, seed: u8, env: &str, labels: &[&str]) {
        let k = key(seed);
        let labels = labels.iter().map(|l| l.to_string()).collect();
        self.ok(ADMIN, Body::KeyAdd(KeyDecl { labels, ..decl(name, &k, &[Role::Target], Some(env)) }));
        self.keys.push((name, k));
    }

    fn step(&self, target: &str, env: &str) -> adoption::Step {
        adoption::agent_step(self.ledger.state(), target, env, "llm_policy", adoption::AgentView::default())
    }
}

/// dev: dev-1, dev-2 and dev-3 (a canary); waves `canary` then all, a 1 s bake, one gate.
fn canary_world() -> (World, Version, Hash) {
    let mut w = World::new();
    w.enrol_target("dev-3", 6, "dev", &["canary"]);
    let policy = EnvPolicy {
        waves: vec![WaveSize::Label("canary".into())],
        bake_ms: 1_000,
        gates: vec!["cmd:./smoke.sh".into()],
        ..EnvPolicy::with_min_targets(1)
    };
    w.ok(ADMIN, env_set("dev", policy));
    let v1 = Version::new(23, 1, 0);
    let h1 = w.package(v1);
    w.ok("carol", approve(v1, h1));
    w.ok(ADMIN, push("dev", v1, h1));
    (w, v1, h1)
}

#[test]
fn a_rollout_goes_wave_by_wave_and_each_step_needs_the_one_before() {
    let (mut w, v1, h1) = canary_world();
    let rollout = |w: &World| rollout::progress(w.ledger.state(), "dev", "llm_policy").expect("a rollout");
    assert_eq!(rollout(&w).next, rollout::Next::Start { wave: 1 });
    // Nobody installs before wave 1, and an ack from a queued target is refused.
    assert!(matches!(w.step("dev-3", "dev"), adoption::Step::Queued(_)));
    assert!(matches!(w.refused("dev-3", ack("dev", v1, h1)), RuleError::BadAck { .. }));
    let e = w.refused(ADMIN, wave("dev", v1, h1, 2, &[]));
    assert!(e.to_string().contains("the next is 1"), "{e}");
    let e = w.refused(ADMIN, wave("dev", v1, h1, 1, &["dev-1"]));
    assert!(e.to_string().contains("the plan for it is dev-3"), "{e}");
    assert!(matches!(w.refused("carol", wave("dev", v1, h1, 1, &["dev-3"])), RuleError::MissingRole { .. }));
    w.ok(ADMIN, wave("dev", v1, h1, 1, &["dev-3"]));
    // Started: it installs once a checkpoint covers the push (none here).
    assert!(matches!(w.step("dev-3", "dev"), adoption::Step::AwaitCheckpoint(_)));
    assert!(matches!(w.step("dev-1", "dev"), adoption::Step::Queued(_)));
    assert!(matches!(w.refused("dev-1", ack("dev", v1, h1)), RuleError::BadAck { .. }));
    let e = w.refused(ADMIN, bake("dev", v1, h1, 1, true));
    assert!(e.to_string().contains("before its targets acked (waiting for dev-3)"), "{e}");
    w.ok("dev-3", ack("dev", v1, h1));
    assert!(matches!(rollout(&w).next, rollout::Next::Bake { wave: 1, .. }));
    let e = w.refused(ADMIN, wave("dev", v1, h1, 2, &[]));
    assert!(e.to_string().contains("before wave 1 passed its bake"), "{e}");
    let e = w.refused(ADMIN, bake("dev", v1, h1, 1, true));
    assert!(e.to_string().contains("less than the 1000 ms"), "{e}");
    w.time += 1_000;
    let e = w.refused(ADMIN, bake("dev", v1, h1, 1, true));
    assert!(e.to_string().contains("no passing check of gate cmd:./smoke.sh"), "{e}");
    w.ok(ADMIN, gate("dev", v1, h1, 1, true));
    w.ok(ADMIN, bake("dev", v1, h1, 1, true));
    assert!(matches!(w.refused(ADMIN, gate("dev", v1, h1, 1, true)), RuleError::BadRollout { .. }));
    let e = w.refused(ADMIN, wave("dev", v1, h1, 2, &["dev-1"]));
    assert!(e.to_string().contains("takes every target and names none"), "{e}");
    w.ok(ADMIN, wave("dev", v1, h1, 2, &[]));
    assert!(matches!(w.step("dev-1", "dev"), adoption::Step::AwaitCheckpoint(_)));
    w.ok("dev-1", ack("dev", v1, h1));
    w.ok("dev-2", ack("dev", v1, h1));
    assert!(adoption::adoption(w.ledger.state(), "dev", "llm_policy").adopted());
    // Adopted, but dev bakes: staging waits for the last wave's bake.
    let e = w.refused(ADMIN, push("staging", v1, h1));
    assert!(e.to_string().contains("before its rollout in dev ends"), "{e}");
    w.time += 1_000;
    w.ok(ADMIN, gate("dev", v1, h1, 2, true));
    w.ok(ADMIN, bake("dev", v1, h1, 2, true));
    assert_eq!(rollout(&w).next, rollout::Next::Done);
    w.ok(ADMIN, push("staging", v1, h1));
}

#[test]
fn a_failed_gate_stops_the_rollout_and_later_waves_never_get_the_version() {
    let (mut w, v1, h1) = canary_world();
    w.ok(ADMIN, wave("dev", v1, h1, 1, &["dev-3"]));
    w.ok("dev-3", ack("dev", v1, h1));
    w.ok(ADMIN, gate("dev", v1, h1, 1, false));
    w.time += 1_000;
    let e = w.refused(ADMIN, bake("dev", v1, h1, 1, true));
    assert!(e.to_string().contains("gate cmd:./smoke.sh failed"), "{e}");
    w.ok(ADMIN, bake("dev", v1, h1, 1, false));
    let e = w.refused(ADMIN, wave("dev", v1, h1, 2, &[]));
    assert!(e.to_string().contains("stopped when wave 1 failed its bake"), "{e}");
    assert!(matches!(w.step("dev-1", "dev"), adoption::Step::Queued(_)));
    let a = adoption::adoption(w.ledger.state(), "dev", "llm_policy");
    assert_eq!((a.queued(), a.loaded(), a.adopted()), (2, 1, false));
    // A newer version goes through; a rollback to the stopped one would reach every target
    // at once, so it is refused: a rollback returns only to a version that got through.
    let v2 = Version::new(23, 2, 0);
    let h2 = w.package(v2);
    w.ok("carol", approve(v2, h2));
    w.ok(ADMIN, push("dev", v2, h2));
    w.ok(ADMIN, wave("dev", v2, h2, 1, &["dev-3"]));
    w.ok("dev-3", ack("dev", v2, h2));
    w.time += 1_000;
    w.ok(ADMIN, gate("dev", v2, h2, 1, true));
    w.ok(ADMIN, bake("dev", v2, h2, 1, true));
    w.ok(ADMIN, wave("dev", v2, h2, 2, &[]));
    w.ok("dev-1", ack("dev", v2, h2));
    w.ok("dev-2", ack("dev", v2, h2));
    w.time += 1_000;
    w.ok(ADMIN, gate("dev", v2, h2, 2, true));
    w.ok(ADMIN, bake("dev", v2, h2, 2, true));
    let back =
        |v, h| Body::Rollback(Rollback { env: "dev".into(), version: v, package: h, reason: "r".into() });
    let e = w.refused(ADMIN, back(v1, h1));
    assert!(e.to_string().contains("never got through this environment"), "{e}");
}

#[test]
fn a_deploy_may_add_waves_but_not_remove_them_and_a_wave_must_reach_someone() {
    let (mut w, _, _) = canary_world();
    let v2 = Version::new(23, 2, 0);
    let h2 = w.package(v2);
    w.ok("carol", approve(v2, h2));
    let own = |waves: Vec<WaveSize>| {
        Body::Push(Push { env: "dev".into(), version: v2, package: h2, waves, reason: "own".into() })
    };
    let e = w.refused(ADMIN, own(vec![WaveSize::Percent(100)]));
    assert!(e.to_string().contains("a deploy may add waves, never remove them"), "{e}");
    // No target carries the label of the first wave: it would reach nobody.
    w.ok(ADMIN, own(vec![WaveSize::Label("region=eu".into()), WaveSize::Percent(50)]));
    let e = w.refused(ADMIN, wave("dev", v2, h2, 1, &[]));
    assert!(e.to_string().contains("reaches no target"), "{e}");
}

#[test]
fn the_plan_puts_canaries_first_then_counts_and_percentages_in_name_hash_order() {
    let enrol = |order: &[usize]| {
        let mut w = World::new();
        const NAMES: [&str; 8] =
            ["prod-a", "prod-b", "prod-c", "prod-d", "prod-e", "prod-f", "prod-g", "prod-h"];
        for &i in order {
            let labels: &[&str] = if i == 5 { &["canary"] } else { &[] };
            w.enrol_target(NAMES[i], 20 + i as u8, "prod", labels);
        }
        w
    };
    let waves = [WaveSize::Count(1), WaveSize::Percent(50)];
    let a = enrol(&[0, 1, 2, 3, 4, 5, 6, 7]);
    let b = enrol(&[7, 6, 5, 4, 3, 2, 1, 0]);
    let plan = rollout::plan(a.ledger.state(), "prod", "llm_policy", &rollout::normalise(&waves));
    assert_eq!(plan, rollout::plan(b.ledger.state(), "prod", "llm_policy", &rollout::normalise(&waves)));
    assert_eq!(
        plan.iter().map(Vec::len).collect::<Vec<_>>(),
        [1, 3, 4],
        "1, then up to 50% of 8, then the rest"
    );
    assert_eq!(plan[0], ["prod-f"], "the canary comes first");
}

/// [`World::new`] with these approvers (name, key seed, groups), and dev asking for two
/// approvals covering the groups platform and security.
fn two_groups_world(approvers: &[(&'static str, u8, &[&str])]) -> World {
    let mut w = World::new();
    for &(name, seed, groups) in approvers {
        let k = key(seed);
        let groups = groups.iter().map(|g| g.to_string()).collect();
        w.ok(ADMIN, Body::KeyAdd(KeyDecl { groups, ..decl(name, &k, &[Role::Approver], None) }));
        w.keys.push((name, k));
    }
    let policy = EnvPolicy {
        approvals: 2,
        approver_groups: vec!["platform".into(), "security".into()],
        ..EnvPolicy::with_min_targets(1)
    };
    w.ok(ADMIN, env_set("dev", policy));
    w
}

#[test]
fn an_environment_approval_policy_needs_approvers_of_distinct_groups() {
    let mut w = two_groups_world(&[
        ("sec-1", 30, &["security"]),
        ("sec-2", 31, &["security"]),
        ("plat-1", 32, &["platform"]),
    ]);
    let v1 = Version::new(23, 1, 0);
    let h1 = w.package(v1);
    w.ok("sec-1", approve(v1, h1));
    let e = w.refused(ADMIN, push("dev", v1, h1));
    assert!(matches!(e, RuleError::ApprovalPolicy { .. }), "one approval: {e}");
    w.ok("carol", approve(v1, h1));
    let e = w.refused(ADMIN, push("dev", v1, h1));
    assert!(e.to_string().contains("counted: sec-1 (security)"), "carol has no group: {e}");
    w.ok("sec-2", approve(v1, h1));
    let e = w.refused(ADMIN, push("dev", v1, h1));
    assert!(e.to_string().contains("covering 2 of the groups platform, security"), "two of one group: {e}");
    w.ok("plat-1", approve(v1, h1));
    w.ok(ADMIN, push("dev", v1, h1));
    // Groups belong to approvers only.
    let k = key(33);
    let groups = vec!["security".to_string()];
    let e =
        w.refused(ADMIN, Body::KeyAdd(KeyDecl { groups, ..decl("t-9", &k, &[Role::Target], Some("dev")) }));
    assert!(e.to_string().contains("only approver keys"), "{e}");
}

#[test]
fn a_freeze_window_refuses_a_push_until_the_required_approvers_override_it() {
    let mut w = World::new();
    let policy =
        EnvPolicy { freeze: vec!["1970-01-01..1970-01-01 UTC".into()], ..EnvPolicy::with_min_targets(1) };
    w.ok(ADMIN, env_set("dev", policy));
    let v1 = Version::new(23, 1, 0);
    let h1 = w.package(v1);
    w.ok("carol", approve(v1, h1));
    let e = w.refused(ADMIN, push("dev", v1, h1));
    assert!(matches!(&e, RuleError::Frozen { window, .. } if window.contains("1970-01-01")), "{e}");
    let over = Body::FreezeOverride(FreezeOverride {
        env: "dev".into(),
        version: v1,
        package: h1,
        reason: "incident fix".into(),
    });
    assert!(matches!(w.refused(ADMIN, over.clone()), RuleError::MissingRole { .. }));
    w.ok("carol", over.clone());
    assert!(matches!(w.refused("carol", over), RuleError::DuplicateApproval { .. }));
    w.ok(ADMIN, push("dev", v1, h1));
    let bad = EnvPolicy {
        freeze: vec!["Fri 16:00-Mon 08:00 Mars/Olympus".into()],
        ..EnvPolicy::with_min_targets(1)
    };
    let e = w.refused(ADMIN, env_set("dev", bad));
    assert!(e.to_string().contains("Mars/Olympus"), "{e}");
}

#[test]
fn under_an_admin_quorum_environment_policy_is_a_proposal_until_another_admin_approves() {
    let mut w = World::genesis(2, &[("bob", 7)]);
    let frozen =
        EnvPolicy { freeze: vec!["1970-01-01..1970-01-01 UTC".into()], ..EnvPolicy::with_min_targets(1) };
    w.ok(ADMIN, env_set("dev", frozen.clone()));
    let (seq, id) = w.last();
    assert_eq!(w.ledger.state().policy("dev").map(|p| p.freeze.len()), Some(0), "one admin changed nothing");
    w.ok("bob", Body::KeyApprove(KeyApprove { seq, id }));
    assert_eq!(w.ledger.state().policy("dev"), Some(&frozen), "the second admin's approval applies it");
}

#[test]
fn an_environment_policy_past_its_limits_or_with_a_gate_twice_is_refused() {
    let mut w = World::new();
    let with = |f: &dyn Fn(&mut EnvPolicy)| {
        let mut p = EnvPolicy::with_min_targets(1);
        f(&mut p);
        env_set("dev", p)
    };
    let smoke = |n: usize| format!("cmd:./smoke.sh {n}");
    let refusals: Vec<(Body, &str)> = vec![
        // A repeated gate, even when another stands between the two.
        (with(&|p| p.gates = vec![smoke(1), smoke(2), smoke(1)]), "each once"),
        (with(&|p| p.gates = (0..=pd_ledger::gate::MAX_GATES).map(smoke).collect()), "each once"),
        (with(&|p| p.bake_ms = pd_ledger::limits::MAX_BAKE_MS + 1), "at most 24 hours"),
        (
            with(&|p| p.freeze = vec!["Sat 00:00-Sun 00:00 UTC".into(); pd_ledger::limits::MAX_FREEZES + 1]),
            "freeze",
        ),
        (with(&|p| p.waves = (1..=rollout::MAX_WAVES as u32 + 1).map(WaveSize::Count).collect()), "wave"),
    ];
    for (body, says) in refusals {
        let e = w.refused(ADMIN, body);
        assert!(matches!(e, RuleError::Invalid { .. }) && e.to_string().contains(says), "{e}");
    }
    w.ok(ADMIN, with(&|p| p.gates = vec![smoke(1), smoke(2)]));
}

#[test]
fn a_rollback_returns_to_the_newest_version_the_rule_allows() {
    let mut w = World::new();
    let (v1, v2, v3) = (Version::new(1, 0, 0), Version::new(2, 0, 0), Version::new(3, 0, 0));
    let target = |w: &World| pd_ledger::rules::rollback_target(w.ledger.state(), "dev", "llm_policy");
    assert_eq!(target(&w), None, "nothing pushed");
    for (v, expected) in [(v1, None), (v2, Some(v1)), (v3, Some(v2))] {
        let h = w.package(v);
        w.ok("carol", approve(v, h));
        w.ok(ADMIN, push("dev", v, h));
        assert_eq!(target(&w), expected, "after pushing {v}");
    }
    // A withdrawn version is passed over: the rule would refuse it.
    let h2 = w.ledger.state().package(v2).expect("v2").package.tarball.blake3;
    w.ok("carol", Body::Withdraw(Withdraw { version: v2, package: h2, reason: "junk".into() }));
    assert_eq!(target(&w), Some(v1));
}

#[test]
fn approver_groups_are_matched_not_taken_greedily() {
    // `both` approves first and could fill either group; only a matching sees that `plat-2`
    // fills platform and `both` security.
    let mut w = two_groups_world(&[("both", 34, &["platform", "security"]), ("plat-2", 35, &["platform"])]);
    let v1 = Version::new(23, 1, 0);
    let h1 = w.package(v1);
    w.ok("both", approve(v1, h1));
    w.ok("plat-2", approve(v1, h1));
    w.ok(ADMIN, push("dev", v1, h1));
}

#[test]
fn a_wave_does_not_start_inside_a_freeze_window_without_an_override() {
    let (mut w, v1, h1) = canary_world();
    let mut policy = w.ledger.state().policy("dev").expect("dev's policy").clone();
    policy.freeze = vec!["1970-01-01..1970-01-01 UTC".into()];
    w.ok(ADMIN, env_set("dev", policy));
    let e = w.refused(ADMIN, wave("dev", v1, h1, 1, &["dev-3"]));
    assert!(matches!(&e, RuleError::Frozen { .. }), "{e}");
    let over = FreezeOverride { env: "dev".into(), version: v1, package: h1, reason: "incident fix".into() };
    w.ok("carol", Body::FreezeOverride(over));
    w.ok(ADMIN, wave("dev", v1, h1, 1, &["dev-3"]));
}
