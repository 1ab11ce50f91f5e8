//! The seed corpora under `seeds/<target>/`: real entries, exports, notes, proofs, packages
//! and wire messages made by pd's own code from the pd-ledger testkit ledger. Deterministic
//! (fixed keys and times), so the committed files are checked against a fresh generation.
//!
//! Regenerate after a format change: `PD_FUZZ_WRITE_SEEDS=1 cargo test` in `tests/fuzz`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pd_ledger::export::ExportArtifact;
use pd_ledger::proof::Proof;
use pd_ledger::storage::MemStore;
use pd_ledger::testkit::{deployed, Deployed};
use pd_ledger::{Hash, SignedEntry};
use pd_store::tarball::{self, PolicyFile};
use pd_store::{openpgp, Limits};

use crate::wire;

/// Target name → file name → bytes.
type Corpora = BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>;

/// The testkit ledger, then a checkpoint, three acks and a second checkpoint.
fn ledger() -> Deployed<MemStore> {
    let mut d = deployed(MemStore::default());
    let cp = d.ledger.state().sign_checkpoint(&d.admin);
    d.ledger.sign_append("admin", &d.admin, 5, cp).expect("first checkpoint");
    d.append_acks(3);
    let cp = d.ledger.state().sign_checkpoint(&d.admin);
    d.ledger.sign_append("admin", &d.admin, 6, cp).expect("second checkpoint");
    d
}

fn entries(d: &Deployed<MemStore>) -> Vec<SignedEntry> {
    d.ledger.entries(0).map(|e| e.expect("fixture entry")).collect()
}

fn package() -> Vec<u8> {
    let files = [
        PolicyFile { path: "llm_policy.yaml".into(), bytes: b"models:\n  allow: [small]\n".to_vec() },
        PolicyFile { path: "rules/extra.yaml".into(), bytes: b"max_tokens: 512\n".to_vec() },
    ];
    tarball::build("llm_policy", "PD-1.0.0", &files, &Limits::default()).expect("package builds").bytes
}

fn generate() -> Corpora {
    let d = ledger();
    let all = entries(&d);
    let mut c = Corpora::new();
    c.insert("entry_decode", entry_seeds(&all));
    c.insert("export_decode", export_seeds(&d));
    c.insert("checkpoint_parse", note_seeds(&d));
    c.insert("proof_file", proof_seeds(&d, &all));
    c.insert("tarball_read", BTreeMap::from([("package.tar.gz".to_string(), package())]));
    c.insert("server_requests", wire_seeds(&d, &all));
    c.insert("enrolment_request", request_seeds());
    c
}

/// Requests with and without a certificate, by a fixed key (the decoder does not parse the
/// certificate, so a fixed armored text stands in for a random OpenPGP key).
fn request_seeds() -> BTreeMap<String, Vec<u8>> {
    let key = pd_ledger::SecretKey::from_seed([9; 32]);
    let cert = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxjMEZ0AAABYJKwYBBAHaRw8BAQdA\n-----END PGP PUBLIC KEY BLOCK-----\n";
    let plain = pd_ledger::EnrolmentRequest::create("dev-1", &key, None);
    let with_cert = pd_ledger::EnrolmentRequest::create("carol", &key, Some(cert.into()));
    BTreeMap::from([
        ("plain.request".to_string(), plain.to_json().into_bytes()),
        ("with-openpgp.request".to_string(), with_cert.to_json().into_bytes()),
    ])
}

/// The first entry of each kind.
fn entry_seeds(all: &[SignedEntry]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in all {
        let kind = e.entry.body.kind();
        if !out.keys().any(|k: &String| k.ends_with(&format!("-{kind}.cbor"))) {
            out.insert(format!("{:02}-{kind}.cbor", e.entry.seq), e.bytes.clone());
        }
    }
    out
}

fn export_seeds(d: &Deployed<MemStore>) -> BTreeMap<String, Vec<u8>> {
    let plain = d.export();
    let mut with_artifact = plain.clone();
    let bytes = package();
    with_artifact.artifacts.push(ExportArtifact { blake3: Hash::of(&bytes), bytes: bytes.into() });
    BTreeMap::from([
        ("export.cbor".to_string(), plain.encode()),
        ("with-artifact.cbor".to_string(), with_artifact.encode()),
    ])
}

fn note_seeds(d: &Deployed<MemStore>) -> BTreeMap<String, Vec<u8>> {
    let st = d.ledger.state();
    let note = st.signed_note(st.latest_checkpoint().expect("a checkpoint")).render();
    // Another log's note: an extension line, and a signature of another type that pd skips.
    let mut other = st.signed_note(&st.checkpoints()[0]);
    other.checkpoint.extensions.push("extension line".into());
    let mut foreign = other.render();
    foreign.push_str("\u{2014} witness.example/w1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n");
    BTreeMap::from([
        ("checkpoint.txt".to_string(), note.into_bytes()),
        ("extension-and-foreign-signature.txt".to_string(), foreign.into_bytes()),
        ("vkey.txt".to_string(), st.note_vkey(&d.admin.public()).into_bytes()),
    ])
}

fn proof_seeds(d: &Deployed<MemStore>, all: &[SignedEntry]) -> BTreeMap<String, Vec<u8>> {
    let (st, tree) = (d.ledger.state(), d.ledger.tree());
    let (first, last) = (&st.checkpoints()[0], &st.checkpoints()[1]);
    let inclusion = Proof::inclusion(st, tree, &all[3], last).expect("inclusion proof");
    let consistency = Proof::consistency(st, tree, &st.signed_note(first), last).expect("consistency proof");
    let json = |p: &Proof| serde_json::to_vec_pretty(p).expect("proof JSON");
    BTreeMap::from([
        ("inclusion.json".to_string(), json(&inclusion)),
        ("consistency.json".to_string(), json(&consistency)),
    ])
}

fn tagged(which: crate::Wire, body: impl AsRef<[u8]>) -> Vec<u8> {
    let mut out = vec![which as u8];
    out.extend_from_slice(body.as_ref());
    out
}

/// Wire seeds are written as JSON values, not struct literals, so that a field added to a
/// wire type in `server/src/wire.rs` fails the acceptance test below instead of the build.
/// The target parses and never verifies, so the signatures only have to be well formed.
fn wire_seeds(d: &Deployed<MemStore>, all: &[SignedEntry]) -> BTreeMap<String, Vec<u8>> {
    use crate::Wire as W;
    let st = d.ledger.state();
    let object = Hash::of(&package());
    let put_sig = d.admin.sign(b"pd-fuzz seed\0", &object.0);
    let push = all.iter().find(|e| e.entry.body.kind() == "push").expect("a push");
    let listed: wire::EntryBytes = all[..3].iter().map(|e| e.bytes.clone().into()).collect();
    let mut listed_cbor = Vec::new();
    ciborium::into_writer(&listed, &mut listed_cbor).expect("CBOR");
    let head = serde_json::json!({
        "ledger_id": st.ledger_id(), "len": st.len(), "head": st.head(), "last_time_ms": st.last_time_ms(),
    });
    BTreeMap::from([
        ("0-statement.cbor".to_string(), tagged(W::StatementBody, push.entry.statement().encode())),
        ("1-hash-path.txt".to_string(), tagged(W::HashPath, object.to_hex())),
        ("2-upload-auth.txt".to_string(), tagged(W::UploadAuth, format!("admin\n{}", put_sig.to_hex()))),
        ("3-entry-body.cbor".to_string(), tagged(W::EntryBody, &push.bytes)),
        ("4-entries-response.cbor".to_string(), tagged(W::EntriesResponse, listed_cbor)),
        ("5-event.json".to_string(), tagged(W::EventResponse, json(&wire::Event::of(push)))),
        (
            "6-receipt.json".to_string(),
            tagged(W::JsonResponses, json(&wire::Receipt { seq: push.entry.seq, id: push.id })),
        ),
        ("6-head.json".to_string(), tagged(W::JsonResponses, json(&head))),
        ("7-range.bin".to_string(), tagged(W::Range, [&4096u64.to_le_bytes()[..], b"bytes=10-99"].concat())),
        ("8-last-event-id.txt".to_string(), tagged(W::LastEventId, "41")),
        ("9-control.cbor".to_string(), tagged(W::ControlResponse, control_page(d, all))),
    ])
}

/// A light agent's page over the whole fixture: its control entries and a checkpoint.
fn control_page(d: &Deployed<MemStore>, all: &[SignedEntry]) -> Vec<u8> {
    let mut st = pd_ledger::State::default();
    let mut entries = Vec::new();
    for e in all {
        if st.is_control(&e.entry.body) {
            entries.push(e.bytes.clone().into());
        }
        st.apply(e);
    }
    let body = d.ledger.state().sign_checkpoint(&d.admin);
    let checkpoint = d.ledger.sign_next("admin", &d.admin, d.ledger.state().last_time_ms(), body);
    let page = wire::ControlPage {
        control_len: entries.len() as u64,
        entries,
        checkpoint: Some(checkpoint.bytes.into()),
        consistency: Vec::new(),
        own: Vec::new(),
    };
    let mut out = Vec::new();
    ciborium::into_writer(&page, &mut out).expect("CBOR");
    out
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire JSON")
}

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds")
}

fn on_disk(target: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = seeds_dir().join(target);
    let Ok(read) = std::fs::read_dir(&dir) else { return BTreeMap::new() };
    read.map(|e| {
        let e = e.expect("seed dir entry");
        (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("seed file"))
    })
    .collect()
}

fn write(target: &str, files: &BTreeMap<String, Vec<u8>>) {
    let dir = seeds_dir().join(target);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("seed dir");
    for (name, bytes) in files {
        std::fs::write(dir.join(name), bytes).expect("write seed");
    }
}

/// OpenPGP keys are random and signatures carry their creation time, so these seeds cannot
/// be regenerated byte for byte: they are made once (when missing or no longer verifying)
/// and then checked to verify. `CERT \0 SIGNATURE \0 DATA`, as the target reads them.
fn openpgp_seeds() -> BTreeMap<String, Vec<u8>> {
    let key = openpgp::generate("fuzz seed (pd)").expect("OpenPGP key");
    let cert = key.public_armored().expect("certificate");
    let data = package();
    let sig = key.sign_detached_armored(&data).expect("signature");
    let mut tampered = data.clone();
    tampered[20] ^= 1;
    BTreeMap::from([
        ("signed-package.txt".to_string(), pgp_frame(&cert, &sig, &data)),
        ("tampered-package.txt".to_string(), pgp_frame(&cert, &sig, &tampered)),
    ])
}

fn pgp_frame(cert: &str, sig: &str, data: &[u8]) -> Vec<u8> {
    [cert.as_bytes(), b"\0", sig.as_bytes(), b"\0", data].concat()
}

/// Whether a seed's signature verifies over its data.
fn pgp_verifies(seed: &[u8]) -> bool {
    let mut parts = seed.splitn(3, |&b| b == 0);
    let (Some(cert), Some(sig), Some(data)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(cert), Ok(sig)) = (std::str::from_utf8(cert), std::str::from_utf8(sig)) else { return false };
    openpgp::verify_detached(cert, data, sig).is_ok()
}

#[test]
fn committed_seeds_are_the_generated_ones() {
    let corpora = generate();
    if std::env::var_os("PD_FUZZ_WRITE_SEEDS").is_some() {
        for (target, files) in &corpora {
            write(target, files);
        }
        if !on_disk("openpgp_verify").get("signed-package.txt").is_some_and(|s| pgp_verifies(s)) {
            write("openpgp_verify", &openpgp_seeds());
        }
    }
    let pgp = on_disk("openpgp_verify");
    assert!(
        pgp.get("signed-package.txt").is_some_and(|s| pgp_verifies(s))
            && pgp.get("tampered-package.txt").is_some_and(|s| !pgp_verifies(s)),
        "seeds/openpgp_verify: the signed seed must verify and the tampered one not; \
         run `PD_FUZZ_WRITE_SEEDS=1 cargo test` in tests/fuzz"
    );
    for (target, files) in &corpora {
        let disk = on_disk(target);
        let stale: std::collections::BTreeSet<&String> =
            files.keys().chain(disk.keys()).filter(|name| disk.get(*name) != files.get(*name)).collect();
        assert!(
            stale.is_empty(),
            "seeds/{target}: {stale:?} differ from what seeds.rs generates; \
             run `PD_FUZZ_WRITE_SEEDS=1 cargo test` in tests/fuzz"
        );
    }
}

/// Every seed runs through its target, and each is one the real decoder accepts, so the
/// fuzzer starts from deep inside each format rather than from its first error.
#[test]
fn every_seed_is_accepted_and_passes_its_target() {
    let c = generate();
    for bytes in c["entry_decode"].values() {
        assert!(SignedEntry::decode(bytes).is_ok());
        crate::entry_decode(bytes);
    }
    for bytes in c["export_decode"].values() {
        assert!(pd_ledger::Export::decode(bytes).is_ok());
        crate::export_decode(bytes);
    }
    for (name, bytes) in &c["checkpoint_parse"] {
        let text = std::str::from_utf8(bytes).expect("UTF-8");
        let parsed = if name == "vkey.txt" {
            pd_ledger::note::parse_vkey(text).map(drop)
        } else {
            pd_ledger::note::SignedCheckpoint::parse(text).map(drop)
        };
        assert!(parsed.is_ok(), "{name}: {parsed:?}");
        crate::checkpoint_parse(bytes);
    }
    for (name, bytes) in &c["proof_file"] {
        let proof: Proof = serde_json::from_slice(bytes).expect("proof JSON");
        assert!(proof.verify(&[]).is_ok(), "{name}");
        crate::proof_file(bytes);
    }
    for bytes in c["tarball_read"].values() {
        assert!(tarball::read(bytes, &Limits::default()).is_ok());
        crate::tarball_read(bytes);
    }
    for (name, bytes) in &c["enrolment_request"] {
        assert!(pd_ledger::EnrolmentRequest::decode(bytes).is_ok(), "{name}");
        crate::enrolment_request(bytes);
    }
    for bytes in on_disk("openpgp_verify").values() {
        crate::openpgp_verify(bytes);
    }
    for (name, bytes) in &c["server_requests"] {
        let body = &bytes[1..];
        let accepted = match name.as_str() {
            "0-statement.cbor" => pd_ledger::Statement::decode(body).is_ok(),
            "1-hash-path.txt" => Hash::from_hex(std::str::from_utf8(body).expect("UTF-8")).is_ok(),
            "2-upload-auth.txt" => std::str::from_utf8(body)
                .ok()
                .and_then(|s| s.split_once('\n'))
                .is_some_and(|(_, sig)| pd_ledger::Signature::from_hex(sig).is_ok()),
            "3-entry-body.cbor" => SignedEntry::decode(body).is_ok(),
            "4-entries-response.cbor" => ciborium::from_reader::<wire::EntryBytes, _>(body).is_ok(),
            "5-event.json" => serde_json::from_slice::<wire::Event>(body).is_ok(),
            "6-receipt.json" => serde_json::from_slice::<wire::Receipt>(body).is_ok(),
            "6-head.json" => serde_json::from_slice::<wire::HeadInfo>(body).is_ok(),
            "7-range.bin" => {
                let (size, spec) = body.split_first_chunk::<8>().expect("size");
                let spec = std::str::from_utf8(spec).expect("UTF-8");
                wire::parse_range(spec, u64::from_le_bytes(*size)).is_some()
            }
            "8-last-event-id.txt" => {
                wire::next_after_last_event_id(std::str::from_utf8(body).expect("UTF-8")).is_some()
            }
            "9-control.cbor" => ciborium::from_reader::<wire::ControlPage, _>(body).is_ok_and(|page| {
                let entries: Vec<SignedEntry> =
                    page.entries.iter().map(|b| SignedEntry::decode(b).expect("entry")).collect();
                let mut f = pd_ledger::partial::Follower::new();
                let checkpoint =
                    SignedEntry::decode(page.checkpoint.as_deref().expect("checkpoint")).expect("entry");
                f.apply(&entries).is_ok() && f.accept_checkpoint(&checkpoint, &[], None).is_ok()
            }),
            other => panic!("no acceptance check for seed {other}"),
        };
        assert!(accepted, "server_requests/{name} is not accepted by its decoder: update wire_seeds");
        crate::server_requests(bytes);
    }
}
