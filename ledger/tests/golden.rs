//! The golden ledger: one real ledger built from fixed keys, times, ledger id and packages,
//! holding an entry of every kind, and each of its encodings (entries, export, checkpoint
//! note, proof files) compared byte for byte with the files in `tests/data/golden/`. A
//! ciborium, serde or format change that alters one byte, and with it every id, fails here.
//! `PD_BLESS=1` rewrites them; see tests/data/golden/README.md.

#[path = "../../tests/data/golden/check.rs"]
mod check;

use std::collections::BTreeSet;
use std::io::Write as _;

use check::{Fixture, Mode};
use pd_ledger::entry::{canonical_cbor, FORMAT_VERSION};
use pd_ledger::export::{Contents, Export, ExportArtifact, Head, FORMAT};
use pd_ledger::note::SignedCheckpoint;
use pd_ledger::proof::Proof;
use pd_ledger::storage::MemStore;
use pd_ledger::*;
use pd_store::openpgp::{self, PgpKey};
use pd_store::tarball::{self, Built};

const LEDGER_ID: Hash = Hash([0x42; 32]);
/// 2026-01-01T00:00:00Z; entry `i` is signed `i` minutes later.
const T0_MS: u64 = 1_767_225_600_000;
const MINUTE_MS: u64 = 60_000;

/// The author's OpenPGP certificate and its throwaway secret key: inputs, made once.
const CERT: &str = "author.cert.asc";
const PGP_KEY: &str = "author.key.pgp";
/// The golden packages (made by `store/tests/golden.rs`) and their detached signatures.
const PACKAGES: [(&str, Version); 2] =
    [("package-1.0.0.tar.gz", Version::new(1, 0, 0)), ("package-1.1.0.tar.gz", Version::new(1, 1, 0))];

/// Entry labels: the body kind, and for acks the outcome. `label` matches every `Body`
/// exhaustively; a new kind must get a label here and an entry in `steps`.
const LABELS: [&str; 19] = [
    "genesis",
    "key_add",
    "key_rotate",
    "key_revoke",
    "key_approve",
    "package",
    "approve",
    "push",
    "ack_loaded",
    "ack_failed",
    "retry",
    "rollback",
    "withdraw",
    "env_set",
    "freeze_override",
    "wave",
    "gate",
    "bake",
    "checkpoint",
];

fn label(body: &Body) -> &'static str {
    match body {
        Body::Genesis(_) => "genesis",
        Body::KeyAdd(_) => "key_add",
        Body::KeyRotate(_) => "key_rotate",
        Body::KeyRevoke(_) => "key_revoke",
        Body::KeyApprove(_) => "key_approve",
        Body::Package(_) => "package",
        Body::Approve(_) => "approve",
        Body::Push(_) => "push",
        Body::Ack(Ack { outcome: Outcome::Loaded, .. }) => "ack_loaded",
        Body::Ack(Ack { outcome: Outcome::Failed(_), .. }) => "ack_failed",
        Body::Retry(_) => "retry",
        Body::Rollback(_) => "rollback",
        Body::EnvSet(_) => "env_set",
        Body::Withdraw(_) => "withdraw",
        Body::FreezeOverride(_) => "freeze_override",
        Body::Wave(_) => "wave",
        Body::Gate(_) => "gate",
        Body::Bake(_) => "bake",
        Body::Checkpoint(_) => "checkpoint",
    }
}

/// The ledger keys, from fixed seeds.
struct Keys {
    admin: SecretKey,
    bob: SecretKey,
    carol: SecretKey,
    carol2: SecretKey,
    dev1: SecretKey,
    prod1: SecretKey,
}

impl Keys {
    fn new() -> Self {
        Keys {
            admin: SecretKey::from_seed([1; 32]),
            carol: SecretKey::from_seed([2; 32]),
            dev1: SecretKey::from_seed([3; 32]),
            carol2: SecretKey::from_seed([4; 32]),
            bob: SecretKey::from_seed([5; 32]),
            prod1: SecretKey::from_seed([6; 32]),
        }
    }

    fn of(&self, actor: &str) -> &SecretKey {
        match actor {
            "admin" => &self.admin,
            "carol" => &self.carol,
            "bob" => &self.bob,
            "dev-1" => &self.dev1,
            "prod-1" => &self.prod1,
            other => unreachable!("no golden key {other}"),
        }
    }
}

/// One golden package: the tarball rebuilt from the fixture's own files, and its signature.
struct GoldenPackage {
    version: Version,
    built: Built,
    sig: String,
}

impl GoldenPackage {
    fn hash(&self) -> Hash {
        Hash(self.built.digest.blake3)
    }

    fn body(&self, reason: &str, checked: Checked, source: Option<Source>) -> Body {
        let p = self.built.to_package(self.version, self.sig.clone(), reason.into());
        Body::Package(Package { checked, source, ..p })
    }
}

/// What an entry is: signed by an actor, an actor's approval of the key change just
/// proposed, or a checkpoint by `admin` over the entries so far.
#[allow(clippy::large_enum_variant)] // a short list of test steps
enum Step {
    Sign(&'static str, Body),
    ApproveLast(&'static str),
    Checkpoint,
}

fn key_decl(
    name: &str,
    key: &SecretKey,
    openpgp: Option<String>,
    roles: &[Role],
    env: Option<&str>,
) -> KeyDecl {
    EnrolmentRequest::create(name, key, openpgp).decl(roles.to_vec(), env.map(Into::into))
}

/// Every kind of entry, in an order the rule accepts: two admins must agree on each key change
/// (proposal, then bob's approval); the target's key is in admin custody; v1 reaches dev,
/// v1.1 fails to load there, is rolled back and withdrawn; the approver rotates, then leaves;
/// checkpoints at 8 and 33. Between them, PD-1.0.0 goes to prod in two waves (the canary,
/// then the rest) under a freeze override, with a gate and a bake.
fn steps(k: &Keys, cert: &str, p: &[GoldenPackage; 2]) -> Vec<Step> {
    let [v1, v2] = p;
    let push = |p: &GoldenPackage, reason: &str| Push {
        env: "dev".into(),
        version: p.version,
        package: p.hash(),
        waves: Vec::new(),
        reason: reason.into(),
    };
    let ack = |p: &GoldenPackage, outcome| Ack {
        env: "dev".into(),
        version: p.version,
        package: p.hash(),
        outcome,
    };
    let stage = |wave| Stage { env: "prod".into(), version: v1.version, package: v1.hash(), wave };
    let approve =
        |p: &GoldenPackage| Approve { version: p.version, package: p.hash(), reason: "reviewed".into() };
    let admin_roles = [Role::Admin, Role::Author, Role::Deployer, Role::Log];
    vec![
        Step::Sign(
            "admin",
            Body::Genesis(Genesis {
                format: FORMAT_VERSION,
                ledger_id: LEDGER_ID,
                envs: vec!["dev".into(), "prod".into()],
                approvals_required: 1,
                admin_approvals: 2,
                min_targets: 1,
                keys: vec![
                    key_decl("admin", &k.admin, Some(cert.into()), &admin_roles, None),
                    key_decl("bob", &k.bob, None, &[Role::Admin], None),
                ],
            }),
        ),
        Step::Sign(
            "admin",
            Body::KeyAdd(KeyDecl {
                groups: vec!["security".into()],
                ..key_decl("carol", &k.carol, None, &[Role::Approver], None)
            }),
        ),
        Step::ApproveLast("bob"),
        Step::Sign(
            "admin",
            Body::KeyAdd(KeyDecl {
                custody: Custody::Admin,
                ..key_decl("dev-1", &k.dev1, None, &[Role::Target], Some("dev"))
            }),
        ),
        Step::ApproveLast("bob"),
        Step::Sign(
            "admin",
            v1.body(
                "first policy",
                Checked { parsed: true, schema: None, command: None },
                Some(Source { commit: "0123456789abcdef0123456789abcdef01234567".into(), clean: true }),
            ),
        ),
        Step::Sign("carol", Body::Approve(approve(v1))),
        Step::Sign("admin", Body::Push(push(v1, "first rollout"))),
        Step::Checkpoint,
        Step::Sign("dev-1", Body::Ack(ack(v1, Outcome::Loaded))),
        Step::Sign(
            "admin",
            v2.body(
                "larger default model",
                Checked { parsed: true, schema: Some(Hash([0x5c; 32])), command: Some("opa check".into()) },
                None,
            ),
        ),
        Step::Sign("carol", Body::Approve(approve(v2))),
        Step::Sign("admin", Body::Push(push(v2, "try the larger model"))),
        Step::Sign(
            "dev-1",
            Body::Ack(ack(
                v2,
                Outcome::Failed("reload failed: max_tokens 8192 is over the model limit".into()),
            )),
        ),
        Step::Sign(
            "admin",
            Body::Retry(Retry {
                env: "dev".into(),
                version: v2.version,
                package: v2.hash(),
                reason: "the model limit was raised".into(),
            }),
        ),
        Step::Sign(
            "admin",
            Body::Rollback(Rollback {
                env: "dev".into(),
                version: v1.version,
                package: v1.hash(),
                reason: "PD-1.1.0 failed to load on dev-1".into(),
            }),
        ),
        Step::Sign(
            "admin",
            Body::Withdraw(Withdraw {
                version: v2.version,
                package: v2.hash(),
                reason: "over the model limit; superseded".into(),
            }),
        ),
        Step::Sign("dev-1", Body::Ack(ack(v1, Outcome::Loaded))),
        Step::Sign(
            "admin",
            Body::KeyAdd(KeyDecl {
                custody: Custody::Admin,
                labels: vec!["canary".into(), "region=eu".into()],
                ..key_decl("prod-1", &k.prod1, None, &[Role::Target], Some("prod"))
            }),
        ),
        Step::ApproveLast("bob"),
        Step::Sign(
            "admin",
            Body::EnvSet(EnvSet {
                env: "prod".into(),
                policy: EnvPolicy {
                    waves: vec![WaveSize::Label("canary".into())],
                    bake_ms: 60_000,
                    gates: vec!["cmd:./smoke-test.sh".into()],
                    auto_rollback: true,
                    freeze: vec!["2026-01-01T00:00..2026-01-02T00:00 UTC".into()],
                    approvals: 1,
                    approver_groups: vec!["security".into()],
                    ..EnvPolicy::with_min_targets(1)
                },
                reason: "canary first; frozen over new year".into(),
            }),
        ),
        Step::ApproveLast("bob"),
        Step::Sign(
            "carol",
            Body::FreezeOverride(FreezeOverride {
                env: "prod".into(),
                version: v1.version,
                package: v1.hash(),
                reason: "the regulator's deadline".into(),
            }),
        ),
        Step::Sign("admin", Body::Push(Push { env: "prod".into(), ..push(v1, "first prod rollout") })),
        Step::Sign("admin", Body::Wave(WaveStart { stage: stage(1), targets: vec!["prod-1".into()] })),
        Step::Sign("prod-1", Body::Ack(Ack { env: "prod".into(), ..ack(v1, Outcome::Loaded) })),
        Step::Sign(
            "admin",
            Body::Gate(GateCheck {
                stage: stage(1),
                gate: "cmd:./smoke-test.sh".into(),
                value: "exit 0".into(),
                passed: true,
            }),
        ),
        Step::Sign(
            "admin",
            Body::Bake(Bake { stage: stage(1), passed: true, reason: "baked 1m, gates held".into() }),
        ),
        Step::Sign("admin", Body::Wave(WaveStart { stage: stage(2), targets: vec![] })),
        Step::Sign("admin", {
            let new = EnrolmentRequest::create("carol", &k.carol2, None);
            Body::KeyRotate(KeyRotate {
                name: "carol".into(),
                public_key: new.public_key,
                openpgp: None,
                custody: Custody::Holder(new.proof),
                old: RevokeKind::Left,
                reason: "new laptop".into(),
            })
        }),
        Step::ApproveLast("bob"),
        Step::Sign(
            "admin",
            Body::KeyRevoke(KeyRevoke {
                name: "carol".into(),
                kind: RevokeKind::Left,
                reason: "left the team".into(),
            }),
        ),
        Step::ApproveLast("bob"),
        Step::Checkpoint,
    ]
}

/// Appends every step through the real appender (rule and signature checked), signing entry
/// `i` at `T0_MS + i` minutes.
fn build_ledger(k: &Keys, steps: Vec<Step>) -> (Ledger<MemStore>, Vec<SignedEntry>) {
    let mut ledger = Ledger::open(MemStore::default()).expect("an empty store opens");
    let mut entries = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        let (actor, body) = match step {
            Step::Sign(actor, body) => (actor, body),
            Step::ApproveLast(actor) => {
                let last: &SignedEntry = entries.last().expect("a proposal comes first");
                (actor, Body::KeyApprove(KeyApprove { seq: last.entry.seq, id: last.id }))
            }
            Step::Checkpoint => ("admin", ledger.state().sign_checkpoint(&k.admin)),
        };
        let time_ms = T0_MS + i as u64 * MINUTE_MS;
        let e = ledger
            .sign_append(actor, k.of(actor), time_ms, body)
            .unwrap_or_else(|e| panic!("golden entry {i} is refused: {e}"));
        entries.push(e);
    }
    (ledger, entries)
}

/// The OpenPGP certificate and one detached signature per package. Compared runs read them
/// as inputs (sequoia signatures embed their creation time); blessing makes the ones missing
/// and re-signs a package whose stored signature no longer verifies.
fn openpgp_inputs(mode: Mode, tarballs: &[Vec<u8>]) -> (String, Vec<String>) {
    let text = |name: &str| String::from_utf8(check::read_input(name)).expect("armored text is UTF-8");
    let sig_names: Vec<String> = PACKAGES.iter().map(|(name, _)| format!("{name}.asc")).collect();
    if mode == Mode::Compare {
        return (text(CERT), sig_names.iter().map(|n| text(n)).collect());
    }
    if !check::path(PGP_KEY).exists() {
        let key = openpgp::generate("pd golden author <golden@pd.invalid>").expect("key generation");
        write_input(PGP_KEY, &key.to_secret_bytes().expect("secret key"));
        let _ = std::fs::remove_file(check::path(CERT));
    }
    let key = || PgpKey::from_secret_bytes(&check::read_input(PGP_KEY)).expect("the golden OpenPGP key");
    if !check::path(CERT).exists() {
        write_input(CERT, key().public_armored().expect("certificate").as_bytes());
    }
    let cert = text(CERT);
    let sigs = sig_names
        .iter()
        .zip(tarballs)
        .map(|(name, tarball)| {
            let old = std::fs::read_to_string(check::path(name)).ok();
            match old {
                Some(sig) if openpgp::verify_detached(&cert, tarball, &sig).is_ok() => sig,
                _ => {
                    let sig = key().sign_detached_armored(tarball).expect("signature");
                    write_input(name, sig.as_bytes());
                    sig
                }
            }
        })
        .collect();
    (cert, sigs)
}

fn write_input(name: &str, bytes: &[u8]) {
    std::fs::write(check::path(name), bytes).unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
    let _ = writeln!(std::io::stderr(), "PD_BLESS: wrote tests/data/golden/{name}: new input");
}

/// The golden tarballs, checked to be what `pd_store::tarball::build` makes of their files.
fn tarballs() -> Vec<Vec<u8>> {
    PACKAGES
        .iter()
        .map(|(name, _)| {
            let bytes = check::read_input(name);
            let rebuilt = rebuild(&bytes).unwrap_or_else(|e| {
                panic!("tests/data/golden/{name} (checked by `cargo test -p pd-store --test golden`): {e}")
            });
            assert!(
                rebuilt.bytes == bytes,
                "tests/data/golden/{name} is not what pd_store builds from its files: \
                 run `cargo test -p pd-store --test golden` first"
            );
            bytes
        })
        .collect()
}

fn rebuild(bytes: &[u8]) -> Result<Built, String> {
    let limits = pd_store::Limits::default();
    let c = tarball::read(bytes, &limits).map_err(|e| e.to_string())?;
    tarball::build(&c.manifest.name, &c.manifest.version, &c.files, &limits).map_err(|e| e.to_string())
}

fn reencode_entry(b: &[u8]) -> Result<Vec<u8>, String> {
    SignedEntry::decode(b).map(|e| canonical_cbor(&e.entry)).map_err(|e| e.to_string())
}

fn reencode_export(b: &[u8]) -> Result<Vec<u8>, String> {
    Export::decode(b).map(|e| e.encode()).map_err(|e| e.to_string())
}

fn reencode_note(b: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(b).map_err(|e| e.to_string())?;
    SignedCheckpoint::parse(text).map(|n| n.render().into_bytes()).map_err(|e| e.to_string())
}

fn reencode_proof(b: &[u8]) -> Result<Vec<u8>, String> {
    serde_json::from_slice::<Proof>(b).map(|p| proof_file(&p)).map_err(|e| e.to_string())
}

/// A proof file as `pd ledger prove` and `pd ledger consistency` write it.
fn proof_file(p: &Proof) -> Vec<u8> {
    (serde_json::to_string_pretty(p).expect("a proof serializes") + "\n").into_bytes()
}

fn entry_name(e: &SignedEntry) -> String {
    format!("entry-{:02}-{}.cbor", e.entry.seq, label(&e.entry.body))
}

#[test]
fn every_encoding_of_the_golden_ledger_is_byte_identical_to_its_fixture() {
    let mode = check::mode();
    let keys = Keys::new();
    let tarballs = tarballs();
    let (cert, sigs) = openpgp_inputs(mode, &tarballs);
    let packages = [0, 1].map(|i| GoldenPackage {
        version: PACKAGES[i].1,
        built: rebuild(&tarballs[i]).expect("checked above"),
        sig: sigs[i].clone(),
    });
    let (ledger, entries) = build_ledger(&keys, steps(&keys, &cert, &packages));
    let state = ledger.state();
    let [old, new] = [&state.checkpoints()[0], &state.checkpoints()[1]];

    let mut artifacts: Vec<ExportArtifact> = packages
        .iter()
        .zip(&tarballs)
        .map(|(p, t)| ExportArtifact { blake3: p.hash(), bytes: t.clone().into() })
        .collect();
    artifacts.sort_by_key(|a| a.blake3);
    let export = Export {
        format: FORMAT.into(),
        entries: entries.iter().map(|e| e.bytes.clone().into()).collect(),
        artifacts,
        head: Head::sign(
            state,
            "admin",
            T0_MS + entries.len() as u64 * MINUTE_MS,
            Contents::WithArtifacts,
            &keys.admin,
        ),
    };
    let inclusion = Proof::inclusion(state, ledger.tree(), &entries[9], new).expect("inclusion proof");
    let consistency =
        Proof::consistency(state, ledger.tree(), &state.signed_note(old), new).expect("consistency proof");

    let mut table: Vec<Fixture> = entries
        .iter()
        .map(|e| Fixture { name: entry_name(e), built: e.bytes.clone(), reencode: reencode_entry })
        .collect();
    table.extend([
        Fixture { name: "export.cbor".into(), built: export.encode(), reencode: reencode_export },
        Fixture {
            name: "checkpoint-33.note".into(),
            built: state.signed_note(new).render().into_bytes(),
            reencode: reencode_note,
        },
        Fixture {
            name: "proof-inclusion-9.json".into(),
            built: proof_file(&inclusion),
            reencode: reencode_proof,
        },
        Fixture {
            name: "proof-consistency-8-33.json".into(),
            built: proof_file(&consistency),
            reencode: reencode_proof,
        },
    ]);
    let stored = check::run(mode, &table);

    let labels: BTreeSet<&str> = entries.iter().map(|e| label(&e.entry.body)).collect();
    assert_eq!(labels, BTreeSet::from(LABELS), "the golden ledger holds an entry of every kind");
    let kinds: BTreeSet<&str> = entries.iter().map(|e| e.entry.body.kind()).collect();
    assert_eq!(kinds, BTreeSet::from(Body::KINDS), "Body::KINDS names every kind `kind` gives");
    let stored_entries: Vec<&[u8]> = entries.iter().map(|e| stored[&entry_name(e)].as_slice()).collect();
    the_stored_entries_replay_as_a_valid_ledger(&stored_entries, state);
    the_stored_export_verifies_with_pd_verify(&stored, &stored_entries);
    the_stored_proofs_verify(&stored, state, &keys, &entries[9]);
}

fn the_stored_entries_replay_as_a_valid_ledger(stored: &[&[u8]], built: &State) {
    let state = replay(stored.iter().copied(), Signatures::Verify).expect("the golden entries replay");
    assert_eq!((state.len(), state.head(), state.ledger_id()), (34, built.head(), LEDGER_ID));
    let dev = state.desired("dev", "llm-policy").expect("dev has a desired version");
    assert_eq!((dev.version, dev.seq), (Version::new(1, 0, 0), 15), "dev was rolled back to PD-1.0.0");
    assert_eq!(state.policy("prod").map(|p| p.approver_groups.clone()), Some(vec!["security".to_string()]));
    let prod = pd_ledger::rollout::progress(&state, "prod", "llm-policy").expect("prod has a rollout");
    assert_eq!(prod.started, 2, "both waves of the prod rollout started");
    assert_eq!(prod.waves[0].targets, ["prod-1"]);
    assert_eq!(prod.waves[0].baked, Some(true));
    assert!(state.keys()["carol"].revoked.is_some());
    assert_eq!(state.keys()["carol"].past.len(), 1, "carol's first key was rotated away");
    assert!(state.proposals().is_empty(), "bob approved every key change");
    let dependent: Vec<String> = state.not_independent().iter().map(|d| d.actor.clone()).collect();
    assert_eq!(dependent, ["dev-1", "prod-1"], "only the targets' keys were made in the admin's custody");
    assert_eq!(state.checkpoints().iter().map(|c| c.checkpoint.size).collect::<Vec<_>>(), [8, 33]);
}

fn the_stored_export_verifies_with_pd_verify(
    stored: &std::collections::BTreeMap<String, Vec<u8>>,
    entries: &[&[u8]],
) {
    let export = &stored["export.cbor"];
    let decoded = Export::decode(export).expect("the golden export decodes");
    let held: Vec<&[u8]> = decoded.entries.iter().map(|e| e.as_slice()).collect();
    assert_eq!(held, entries, "the export holds exactly the golden entries");
    let note = std::str::from_utf8(&stored["checkpoint-33.note"]).expect("a note is text");
    let since = SignedCheckpoint::parse(note).expect("the golden note parses");
    let report = pd_verify::verify_bytes(export, Some(&since))
        .unwrap_or_else(|e| panic!("pd-verify refuses the golden export: {e}"));
    assert_eq!(report.state.len(), 34);
    assert_eq!(report.artifacts_checked, 2, "both tarballs and their OpenPGP signatures checked");
    let (size, root, _) = report.extends.expect("the export extends checkpoint 33");
    assert_eq!((size, root), (33, since.checkpoint.root));
}

fn the_stored_proofs_verify(
    stored: &std::collections::BTreeMap<String, Vec<u8>>,
    state: &State,
    keys: &Keys,
    included: &SignedEntry,
) {
    let proof = |name: &str| -> Proof {
        serde_json::from_slice(&stored[name]).unwrap_or_else(|e| panic!("{name} does not parse: {e}"))
    };
    let pinned = [(state.origin(), keys.admin.public())];
    let inclusion = proof("proof-inclusion-9.json").verify(&pinned).expect("the inclusion proof holds");
    assert_eq!(inclusion.entry, Some((9, "ack".to_string(), included.id)));
    assert_eq!(inclusion.size, 33);
    let consistency =
        proof("proof-consistency-8-33.json").verify(&pinned).expect("the consistency proof holds");
    assert_eq!(consistency.extends, Some((8, state.checkpoints()[0].checkpoint.root)));
    assert_eq!(consistency.size, 33);
}
