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
    KeyDecl {
        name: name.into(),
        public_key: k.public(),
        openpgp: roles.contains(&Role::Author).then(|| "CERT".to_string()),
        roles: roles.to_vec(),
        env: env.map(String::from),
    }
}

impl World {
    fn new() -> World {
        let admin = key(1);
        let genesis = Body::Genesis(Genesis {
            format: pd_ledger::entry::FORMAT_VERSION,
            ledger_id: Hash([9; 32]),
            envs: vec!["dev".into(), "staging".into(), "prod".into()],
            approvals_required: 1,
            keys: vec![decl(ADMIN, &admin, &[Role::Admin, Role::Author, Role::Deployer], None)],
        });
        let mut ledger = Ledger::open(MemStore::default()).unwrap();
        ledger.sign_append(ADMIN, &admin, 1, genesis).unwrap();
        let mut w = World { ledger, keys: vec![(ADMIN, admin)], time: 1 };
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

    fn try_as(&mut self, actor: &str, body: Body) -> Result<(), LedgerError> {
        self.time += 1;
        let k = &self.keys.iter().find(|(n, _)| *n == actor).expect("test key").1;
        self.ledger.sign_append(actor, k, self.time, body).map(|_| ())
    }

    fn ok(&mut self, actor: &str, body: Body) {
        self.try_as(actor, body).unwrap();
    }

    fn refused(&mut self, actor: &str, body: Body) -> RuleError {
        let before = self.ledger.state().head;
        let err = match self.try_as(actor, body) {
            Err(LedgerError::Refused(e)) => e,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(self.ledger.state().head, before, "a refusal changes nothing");
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
                reason: "r".into(),
            }),
        );
        h
    }
}

fn push(env: &str, v: Version, h: Hash) -> Body {
    Body::Push(Push { env: env.into(), version: v, package: h, reason: "go".into() })
}
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
                reason: "r".into(),
            })
        ),
        RuleError::VersionNotIncreasing { .. }
    ));
    let h2 = w.package(v2);
    w.ok("carol", approve(v2, h2));
    w.ok(ADMIN, push("dev", v2, h2));
    assert!(matches!(w.refused("dev-1", ack("dev", v1, h1)), RuleError::BadAck { .. }), "stale ack");
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
    let dev = &w.ledger.state().env["dev"];
    assert_eq!(dev.desired.as_ref().map(|d| d.version), Some(v1));
    assert_eq!(dev.history.len(), 3);

    w.ok(ADMIN, Body::KeyRevoke(KeyRevoke { name: "carol".into(), reason: "left".into() }));
    assert!(matches!(w.refused("carol", approve(v2, h2)), RuleError::RevokedKey { .. }));
    assert!(matches!(
        w.refused(ADMIN, Body::KeyRevoke(KeyRevoke { name: ADMIN.into(), reason: "x".into() })),
        RuleError::LastAdmin { .. }
    ));
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
    let forged = w.ledger.sign_next(
        ADMIN,
        &mallory,
        100,
        Body::KeyRevoke(KeyRevoke { name: "carol".into(), reason: "x".into() }),
    );
    assert!(matches!(w.ledger.append(forged), Err(LedgerError::Refused(RuleError::BadSignature { .. }))));
    let stale = Entry::sign(
        state.len,
        Hash([1; 32]),
        100,
        ADMIN,
        Body::KeyRevoke(KeyRevoke { name: "carol".into(), reason: "x".into() }),
        &key(1),
    );
    assert!(matches!(w.ledger.append(stale), Err(LedgerError::Refused(RuleError::Prev { .. }))));
    assert_eq!(w.ledger.state().len, state.len);
}

#[test]
fn batch_append_is_all_or_nothing() {
    let mut w = World::new();
    let len = w.ledger.state().len;
    let admin = key(1);
    let good = Body::KeyAdd(decl("ed", &key(50), &[Role::Approver], None));
    let bad = Body::KeyAdd(decl("ed", &key(51), &[Role::Approver], None));
    let batch = w.ledger.sign_batch(ADMIN, &admin, 10, vec![good.clone(), bad]);
    assert!(matches!(
        w.ledger.append_batch(&batch),
        Err(LedgerError::Refused(RuleError::DuplicateKey { .. }))
    ));
    assert_eq!(w.ledger.state().len, len);
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
    assert_eq!(reopened.head, w.ledger.state().head);
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
