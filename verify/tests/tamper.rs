//! The promise to auditors: any single-byte change, truncation, reordering or duplication of
//! an export is rejected.

use pd_ledger::export::{Contents, Export, Head, FORMAT};
use pd_ledger::storage::MemStore;
use pd_ledger::testkit::{decl, package};
use pd_ledger::*;
use proptest::prelude::*;

/// A small but varied ledger: genesis, keys, a package, approval, push, ack, rollback.
fn ledger() -> Export {
    let admin = SecretKey::from_seed([1; 32]);
    let carol = SecretKey::from_seed([2; 32]);
    let dev1 = SecretKey::from_seed([3; 32]);
    let mut l = Ledger::open(MemStore::default()).unwrap();
    let mut t = 1_000;
    let mut add = |l: &mut Ledger<MemStore>, who: &str, k: &SecretKey, body: Body| {
        t += 1;
        l.sign_append(who, k, t, body).unwrap();
    };
    add(
        &mut l,
        "admin",
        &admin,
        Body::Genesis(Genesis {
            format: pd_ledger::entry::FORMAT_VERSION,
            ledger_id: Hash([7; 32]),
            envs: vec!["dev".into(), "prod".into()],
            approvals_required: 1,
            admin_approvals: 1,
            min_targets: 1,
            keys: vec![decl("admin", &admin, &[Role::Admin, Role::Author, Role::Deployer], None)],
        }),
    );
    add(&mut l, "admin", &admin, Body::KeyAdd(decl("carol", &carol, &[Role::Approver], None)));
    add(&mut l, "admin", &admin, Body::KeyAdd(decl("dev-1", &dev1, &[Role::Target], Some("dev"))));
    let mut versions = Vec::new();
    for i in 1..=2u32 {
        let v = Version::new(1, i, 0);
        let h = Hash([i as u8; 32]);
        versions.push((v, h));
        add(&mut l, "admin", &admin, package(v, h));
        add(&mut l, "carol", &carol, Body::Approve(Approve { version: v, package: h, reason: "ok".into() }));
        add(&mut l, "admin", &admin, pd_ledger::testkit::push("dev", v, h));
        add(
            &mut l,
            "dev-1",
            &dev1,
            Body::Ack(Ack { env: "dev".into(), version: v, package: h, outcome: Outcome::Loaded }),
        );
    }
    let (v, h) = versions[0];
    add(
        &mut l,
        "admin",
        &admin,
        Body::Rollback(Rollback { env: "dev".into(), version: v, package: h, reason: "back".into() }),
    );
    let entries = l.entries(0).map(|e| serde_bytes::ByteBuf::from(e.unwrap().bytes)).collect();
    let head = Head::sign(l.state(), "admin", 99_999, Contents::EntriesOnly, &admin);
    Export { format: FORMAT.into(), entries, artifacts: vec![], head }
}

#[test]
fn the_untouched_export_verifies() {
    let bytes = ledger().encode();
    let report = pd_verify::verify_bytes(&bytes, None).unwrap();
    assert_eq!(report.state.len(), 12);
    assert_eq!(
        pd_ledger::adoption::adoption_of(&report.state, "dev", Version::new(1, 1, 0))
            .desired
            .unwrap()
            .version,
        Version::new(1, 1, 0)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_single_byte_change_is_rejected(pos in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let mut bytes = ledger().encode();
        let i = pos.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        prop_assert!(pd_verify::verify_bytes(&bytes, None).is_err(), "byte {} changed by {} was accepted", i, delta);
    }

    #[test]
    fn any_truncation_is_rejected(cut in any::<prop::sample::Index>()) {
        let bytes = ledger().encode();
        let n = cut.index(bytes.len());
        prop_assert!(pd_verify::verify_bytes(&bytes[..n], None).is_err());
    }

    #[test]
    fn reordering_dropping_or_duplicating_entries_is_rejected(a in 0usize..12, b in 0usize..12, op in 0u8..3) {
        let mut export = ledger();
        match op {
            0 => { prop_assume!(a != b); export.entries.swap(a, b); }
            1 => { export.entries.remove(a); }
            _ => { let e = export.entries[a].clone(); export.entries.insert(b, e); }
        }
        prop_assert!(pd_verify::verify_bytes(&export.encode(), None).is_err());
    }
}

#[test]
fn dropping_the_last_entries_is_caught_by_the_signed_head() {
    let mut export = ledger();
    export.entries.pop();
    match pd_verify::verify_bytes(&export.encode(), None) {
        Err(pd_verify::VerifyError::Head(m)) => {
            assert!(m.contains("covers 12 entries") && m.contains("export's 11 entries"), "{m}")
        }
        other => panic!("expected a head error, got {other:?}"),
    }
}

#[test]
fn a_truncated_export_whose_head_a_target_re_signed_is_refused() {
    // Regression: cutting the last entries off and re-signing the head with any enrolled key,
    // a target's included, passed with exit 0 and a different derived state.
    let mut export = ledger();
    export.entries.pop();
    let cut = replay(export.entries.iter().map(|e| e.as_slice()), Signatures::Verify).unwrap();
    let dev1 = SecretKey::from_seed([3; 32]);
    export.head = Head::sign(&cut, "dev-1", 99_999, Contents::EntriesOnly, &dev1);
    match pd_verify::verify_bytes(&export.encode(), None) {
        Err(pd_verify::VerifyError::Head(m)) => {
            assert!(m.contains("\"dev-1\", a key with roles target"), "{m}");
            assert!(m.contains("only a log or admin key may sign a head"), "{m}");
        }
        other => panic!("expected the head's signer to be refused, got {other:?}"),
    }
    // The same cut re-signed by an admin key verifies: only a pinned head (`--expect-head`,
    // `--since`) proves nothing was cut by the admin.
    let admin = SecretKey::from_seed([1; 32]);
    export.head = Head::sign(&cut, "admin", 99_999, Contents::EntriesOnly, &admin);
    assert!(pd_verify::verify_bytes(&export.encode(), None).is_ok());
}

#[test]
fn an_export_whose_artifacts_were_stripped_is_refused_and_entries_only_needs_consent() {
    let mut export = ledger();
    let admin = SecretKey::from_seed([1; 32]);
    let state = replay(export.entries.iter().map(|e| e.as_slice()), Signatures::Verify).unwrap();
    // A head that says every artifact is included, with none there: stripped.
    export.head = Head::sign(&state, "admin", 99_999, Contents::WithArtifacts, &admin);
    match pd_verify::verify_bytes(&export.encode(), None) {
        Err(pd_verify::VerifyError::Artifact { problem, .. }) => {
            assert!(problem.contains("artifacts were stripped"), "{problem}")
        }
        other => panic!("expected missing artifacts to be named, got {other:?}"),
    }
    // An entries-only export verifies, but says so and is refused unless accepted.
    export.head = Head::sign(&state, "admin", 99_999, Contents::EntriesOnly, &admin);
    let report = pd_verify::verify_bytes(&export.encode(), None).unwrap();
    assert!(matches!(report.require_artifacts(), Err(pd_verify::VerifyError::NoArtifacts)));
}

#[test]
fn a_forged_entry_is_named() {
    let mut export = ledger();
    let mallory = SecretKey::from_seed([66; 32]);
    // Re-sign entry 5 (carol's approval) with another key, keeping the chain intact up to it.
    let old = SignedEntry::decode(&export.entries[5]).unwrap().entry;
    let ledger =
        pd_ledger::replay(export.entries[..1].iter().map(|b| b.as_slice()), pd_ledger::Signatures::Verify)
            .unwrap()
            .ledger_id();
    let forged = Entry::sign(&ledger, old.seq, old.prev, old.time_ms, &old.actor, old.body.clone(), &mallory);
    export.entries[5] = serde_bytes::ByteBuf::from(forged.bytes);
    match pd_verify::verify_bytes(&export.encode(), None) {
        Err(pd_verify::VerifyError::Entry(e)) => {
            assert_eq!(e.seq, 5);
            assert!(matches!(e.kind, replay::ReplayErrorKind::BadSignature { .. }), "{e}");
        }
        other => panic!("expected entry 5 to be named, got {other:?}"),
    }
}

#[test]
fn an_export_over_the_size_limit_is_refused_before_reading() {
    let dir = std::env::temp_dir().join(format!("pd-verify-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("huge.pdx");
    // Sparse: takes no disk space.
    std::fs::File::create(&path).unwrap().set_len(pd_ledger::limits::MAX_EXPORT_BYTES + 1).unwrap();
    let result = pd_verify::verify_file(&path, None);
    std::fs::remove_dir_all(&dir).unwrap();
    match result {
        Err(e @ pd_verify::VerifyError::TooLarge { .. }) => {
            assert!(e.to_string().contains("over the limit"), "{e}")
        }
        other => panic!("expected a size refusal, got {other:?}"),
    }
}

#[test]
fn an_export_that_does_not_reach_the_expected_head_is_refused() {
    let full = ledger();
    let (seq, id) = (full.entries.len() as u64 - 1, Hash::of(full.entries.last().unwrap()));
    pd_verify::check_expected_head(&full, seq, &id).expect("the full export reaches its head");
    pd_verify::check_expected_head(&full, 3, &Hash::of(&full.entries[3])).expect("and every earlier one");
    let err = pd_verify::check_expected_head(&full, seq + 1, &id).unwrap_err().to_string();
    assert!(err.contains("ends before #12"), "{err}");
    let err = pd_verify::check_expected_head(&full, seq, &Hash([1; 32])).unwrap_err().to_string();
    assert!(err.contains("another history"), "{err}");
    assert_eq!(pd_verify::parse_head(&format!("{seq}:{id}")), Ok((seq, id)));
    assert!(pd_verify::parse_head("12:abc").unwrap_err().contains("full id"));
    assert!(pd_verify::parse_head("x:y").is_err() && pd_verify::parse_head("12").is_err());
}
