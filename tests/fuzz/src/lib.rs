//! The fuzz targets of pd, one function per API boundary. Each binary under `src/bin/` hands
//! AFL's input to one of these; `cargo test` here runs every seed through them (and checks
//! the committed seeds are the ones `seeds.rs` generates), so a target that rots fails in
//! an ordinary test run too.
//!
//! A target calls the real decoder and, when it accepts, asserts what an accepted input
//! promises (mostly `encode(decode(b)) == b`). A panic is a finding: either the decoder
//! panicked on outside input, or it accepted something that breaks its own promise.

use std::path::Path;

use pd_ledger::entry::canonical_cbor;
use pd_ledger::export::Export;
use pd_ledger::note::{self, SignedCheckpoint};
use pd_ledger::proof::Proof;
use pd_ledger::{replay, rules, Entry, Hash, Signatures, SignedEntry, State, Statement};
use pd_store::{openpgp, tarball, Limits};

/// The server's wire types, compiled from the server's own source file: the real decoders
/// without the pd-server crate and its aws-sdk, tokio and axum (see FUZZING.md). This holds
/// only while `server/src/wire.rs` uses nothing but pd-ledger, serde, blake3 and hex.
#[path = "../../../server/src/wire.rs"]
#[allow(dead_code)]
pub mod wire;

#[cfg(test)]
mod seeds;

/// `SignedEntry::decode`: one canonical entry, its id and its JSON form; a genesis is also
/// run through the rule and the fold.
pub fn entry_decode(data: &[u8]) {
    let Ok(e) = SignedEntry::decode(data) else { return };
    assert_eq!(e.bytes, data, "decode keeps the exact bytes");
    assert_eq!(e.id, Hash::of(data), "the id is the BLAKE3 of the bytes");
    assert_eq!(canonical_cbor(&e.entry), data, "encode(decode(b)) == b");
    assert_eq!(SignedEntry::decode(&e.bytes).as_ref(), Ok(&e), "decoding is deterministic");
    let _ = e.entry.body.kind();
    let _ = e.entry.signed_message(&Hash::ZERO);
    // `pd ledger log --json` and the server's JSON entries: what goes out reads back the same.
    let json = serde_json::to_vec(&e.entry).expect("an entry serializes to JSON");
    let back: Entry = serde_json::from_slice(&json).expect("the JSON of a decoded entry reads back");
    assert_eq!(back, e.entry, "JSON round trip");
    // The rule on an empty ledger: only a genesis can pass; if it does, the fold takes it.
    if rules::check_rules(&State::default(), &e).is_ok() {
        let mut state = State::default();
        state.apply(&e);
        assert_eq!((state.len(), state.head()), (1, e.id), "genesis folds to a ledger of one entry");
    }
}

/// `Export::decode`: the whole file has one byte form; accepted entries are replayed through
/// the rule and the fold (signatures skipped, so mutated bodies reach the rule).
pub fn export_decode(data: &[u8]) {
    let Ok(export) = Export::decode(data) else { return };
    assert_eq!(export.encode(), data, "encode(decode(b)) == b");
    assert_eq!(Export::decode(&export.encode()).as_ref(), Ok(&export));
    let entries = export.entries.iter().map(|b| b.as_slice());
    if let Ok(state) = replay(entries, Signatures::TrustLocalStore) {
        assert_eq!(state.len(), export.entries.len() as u64, "a replayed ledger has every entry");
    }
}

/// `SignedCheckpoint::parse` on the text, and `note::parse_vkey` on the same text: what
/// parses renders back to what parses the same, and to the same bytes when nothing was
/// dropped.
pub fn checkpoint_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok((name, key)) = note::parse_vkey(text) {
        assert_eq!(note::vkey(&name, &key), text.trim(), "vkey(parse_vkey(s)) == s");
    }
    let Ok(cp) = SignedCheckpoint::parse(text) else { return };
    let rendered = cp.render();
    assert_eq!(SignedCheckpoint::parse(&rendered).as_ref(), Ok(&cp), "parse(render(parse(n))) == parse(n)");
    // Signature lines of other types (other lengths) are dropped; with none dropped, the
    // note renders to its exact bytes.
    let lines = text.split_once("\n\n").map_or(0, |(_, sigs)| sigs.lines().count());
    if lines == cp.signatures.len() {
        assert_eq!(rendered, text, "render(parse(n)) == n");
    }
}

/// `EnrolmentRequest::decode` (a `.request` file an admin is handed): what it accepts proves
/// possession, and its JSON decodes back to the same request.
pub fn enrolment_request(data: &[u8]) {
    let Ok(r) = pd_ledger::EnrolmentRequest::decode(data) else { return };
    assert!(
        pd_ledger::enrol::proves_possession(&r.name, &r.public_key, r.openpgp.as_deref(), &r.proof),
        "an accepted request proves possession"
    );
    assert_eq!(
        pd_ledger::EnrolmentRequest::decode(r.to_json().as_bytes()).as_ref(),
        Ok(&r),
        "decode(to_json(r)) == r"
    );
}

/// A proof file: JSON into `Proof`, the JSON round trip, then `Proof::verify(&[])` with the
/// keys the file names.
pub fn proof_file(data: &[u8]) {
    let Ok(proof) = serde_json::from_slice::<Proof>(data) else { return };
    let json = serde_json::to_vec(&proof).expect("a proof serializes to JSON");
    let back: Proof = serde_json::from_slice(&json).expect("the JSON of a proof reads back");
    assert_eq!(back, proof, "JSON round trip");
    if let Ok(proven) = proof.verify(&[]) {
        assert_eq!(proof.verify(&[]), Ok(proven), "verification is deterministic");
    }
}

/// `tarball::read` with default limits; when it accepts, the same files rebuild into a
/// package that reads back the same, and `tarball::unpack` writes exactly those files into
/// a fresh directory.
pub fn tarball_read(data: &[u8]) {
    let limits = Limits::default();
    let Ok(contents) = tarball::read(data, &limits) else { return };
    let m = &contents.manifest;
    let rebuilt = tarball::build(&m.name, &m.version, &contents.files, &limits)
        .expect("the files of an accepted package build into a package");
    let again = tarball::read(&rebuilt.bytes, &limits).expect("a built package reads");
    assert_eq!(again, contents, "read(build(read(b))) == read(b)");
    let dir = scratch_dir();
    let out = dir.path().join("unpacked");
    let manifest = tarball::unpack(data, &out, &limits).expect("what read accepts unpacks");
    assert_eq!(&manifest, m, "unpack reports the manifest read reports");
    assert_unpacked(&out, &contents.files);
}

/// A fresh directory for `unpack`, on tmpfs where there is one: `unpack` syncs every file,
/// and on a disk those syncs alone took over a second per input under load, which AFL
/// reported as a hang. `PD_FUZZ_TMP` picks another parent.
fn scratch_dir() -> tempfile::TempDir {
    let parent: std::path::PathBuf = match std::env::var_os("PD_FUZZ_TMP") {
        Some(dir) => dir.into(),
        None if Path::new("/dev/shm").is_dir() => "/dev/shm".into(),
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new().prefix("pd-fuzz-").tempdir_in(&parent).expect("a temp dir for unpack")
}

fn assert_unpacked(dir: &Path, files: &[tarball::PolicyFile]) {
    for f in files {
        let on_disk = std::fs::read(dir.join(&f.path)).expect("every file is unpacked");
        assert_eq!(on_disk, f.bytes, "{} unpacks to its bytes", f.path);
    }
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("readable") {
            let path = entry.expect("entry").path();
            assert!(path.starts_with(dir), "nothing lands outside the directory");
            if path.is_dir() {
                stack.push(path);
            } else {
                count += 1;
            }
        }
    }
    assert_eq!(count, files.len(), "nothing but the package's files is written");
}

/// `openpgp::verify_detached` (pd-verify, the agent and `pd deploy` run it on a package's
/// signature and its author's certificate, both from the ledger) and `openpgp::cert_fingerprint`.
/// The input is `CERT \0 SIGNATURE \0 DATA`, the two texts taken lossily as UTF-8 as the API
/// takes `&str`. A signature that verifies must not verify over other data.
pub fn openpgp_verify(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(cert), Some(sig), Some(signed)) = (parts.next(), parts.next(), parts.next()) else { return };
    let (cert, sig) = (String::from_utf8_lossy(cert), String::from_utf8_lossy(sig));
    if let Ok(fpr) = openpgp::cert_fingerprint(&cert) {
        assert!(!fpr.is_empty() && fpr.bytes().all(|b| b.is_ascii_hexdigit()), "fingerprint {fpr:?} is hex");
    }
    if openpgp::verify_detached(&cert, signed, &sig).is_ok() {
        let mut other = signed.to_vec();
        other.push(b'!');
        assert!(
            openpgp::verify_detached(&cert, &other, &sig).is_err(),
            "a signature verifies over other data"
        );
    }
}

/// Which server decoder one `server_requests` input goes to: its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// `POST /v1/entries` body: one signed statement, [`Statement::decode`].
    StatementBody = 0,
    /// `/v1/objects/{hash}` path segment: `Hash::from_hex`.
    HashPath = 1,
    /// Object upload headers: `pd-actor`, a newline, `pd-signature` (hex).
    UploadAuth = 2,
    /// One entry as a follower reads it (the same decoder as `entry_decode`).
    EntryBody = 3,
    /// What a client reads back: `GET /v1/entries` CBOR (an array of entry byte strings).
    EntriesResponse = 4,
    /// What a client reads back: an SSE event's JSON data.
    EventResponse = 5,
    /// What a client reads back: the JSON of a head, a receipt or an error.
    JsonResponses = 6,
    /// `Range` header of an object GET: `wire::parse_range`, against a size from the input.
    Range = 7,
    /// `Last-Event-ID` header of the event stream: `wire::next_after_last_event_id`.
    LastEventId = 8,
    /// What a light agent reads back: a `GET /v1/control` page (CBOR), folded into a
    /// `partial::Follower` with its checkpoint and own-key entries.
    ControlResponse = 9,
}

impl Wire {
    const ALL: [Wire; 10] = [
        Wire::StatementBody,
        Wire::HashPath,
        Wire::UploadAuth,
        Wire::EntryBody,
        Wire::EntriesResponse,
        Wire::EventResponse,
        Wire::JsonResponses,
        Wire::Range,
        Wire::LastEventId,
        Wire::ControlResponse,
    ];
}

/// The server's request decoders that can be reached without pd-server (see FUZZING.md for
/// the Range header, which still lives in `api.rs`), and the client's decoders of what the
/// server answers, which a client does not trust either.
pub fn server_requests(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    match Wire::ALL[which as usize % Wire::ALL.len()] {
        Wire::StatementBody => statement_body(rest),
        Wire::HashPath => hash_path(rest),
        Wire::UploadAuth => upload_auth(rest),
        Wire::EntryBody => entry_decode(rest),
        Wire::EntriesResponse => entries_response(rest),
        Wire::EventResponse => event_response(rest),
        Wire::JsonResponses => json_responses(rest),
        Wire::Range => range(rest),
        Wire::LastEventId => last_event_id(rest),
        Wire::ControlResponse => control_response(rest),
    }
}

/// A hostile server's control page never panics the follower, and what it folds it verified.
fn control_response(data: &[u8]) {
    let Ok(page) = ciborium::from_reader::<wire::ControlPage, _>(data) else { return };
    let entries: Vec<SignedEntry> = page.entries.iter().filter_map(|b| SignedEntry::decode(b).ok()).collect();
    let mut f = pd_ledger::partial::Follower::new();
    let folded = f.apply(&entries);
    assert!(f.control_len() <= entries.len() as u64, "folds only what it was given");
    assert_eq!(folded.is_ok(), f.control_len() == entries.len() as u64, "a refusal stops the fold");
    if let Some(cp) = page.checkpoint.as_deref().and_then(|b| SignedEntry::decode(b).ok()) {
        let proof: Vec<_> = page.consistency.iter().map(|h| h.0).collect();
        let _ = f.clone().accept_checkpoint(&cp, &proof, Some((1, Hash::ZERO)));
        let _ = f.accept_checkpoint(&cp, &proof, None);
    }
    let own: Vec<_> = page
        .own
        .iter()
        .filter_map(|(b, p)| Some((SignedEntry::decode(b).ok()?, p.iter().map(|h| h.0).collect())))
        .collect();
    if let Some((e, _)) = own.first() {
        if let pd_ledger::Body::KeyAdd(d) = &e.entry.body {
            let _ = f.accept_own(&d.public_key, &own);
        }
    }
}

/// Decodes `T` from JSON and checks that its JSON reads back to the same JSON.
fn json_round_trip<T: serde::Serialize + serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(data).ok()?;
    let json = serde_json::to_vec(&value).expect("a decoded value serializes");
    let back: T = serde_json::from_slice(&json).expect("its JSON reads back");
    assert_eq!(serde_json::to_vec(&back).expect("serializes"), json, "JSON round trip");
    Some(value)
}

/// A statement decodes only from its one byte form, and the entry that places it decodes
/// back to the same statement.
fn statement_body(data: &[u8]) {
    let Ok(s) = Statement::decode(data) else { return };
    assert_eq!(s.encode(), data, "encode(decode(b)) == b");
    let _ = s.digest(&Hash::ZERO);
    let placed = s.clone().at(7, Hash::ZERO, 9);
    let back = SignedEntry::decode(&placed.bytes).expect("a placed statement is an entry");
    assert_eq!(back.entry.statement(), s, "the entry carries the statement unchanged");
}

fn hash_path(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(h) = Hash::from_hex(s) {
        assert_eq!(h.to_hex(), s.trim().to_ascii_lowercase(), "from_hex(s).to_hex() == s");
    }
}

/// The server's own `wire::upload_auth` over `pd-actor`, a newline, `pd-signature`.
fn upload_auth(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (actor, sig) = s.split_once('\n').unwrap_or((s, ""));
    if let Ok((named, parsed)) = wire::upload_auth(Some(actor), Some(sig)) {
        assert_eq!(named, actor, "the actor is taken as given");
        assert_eq!(parsed.to_hex(), sig.trim().to_ascii_lowercase(), "from_hex(s).to_hex() == s");
    }
}

/// Eight bytes of object size, then the header: a range served lies inside the object.
fn range(data: &[u8]) {
    let Some((size, spec)) = data.split_first_chunk::<8>() else { return };
    let Ok(spec) = std::str::from_utf8(spec) else { return };
    let total = u64::from_le_bytes(*size);
    if let Some((start, end)) = wire::parse_range(spec, total) {
        assert!(start <= end && end < total, "range {start}-{end} of {total}");
    }
}

fn last_event_id(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Some(next) = wire::next_after_last_event_id(s) {
        assert!(next > 0, "never wraps to 0");
    }
}

fn entries_response(data: &[u8]) {
    let Ok(list) = ciborium::from_reader::<wire::EntryBytes, _>(data) else { return };
    for bytes in &list {
        entry_decode(bytes);
    }
}

fn event_response(data: &[u8]) {
    let Some(event) = json_round_trip::<wire::Event>(data) else { return };
    let _ = event.name();
    // A follower appends the entry an event carries: hex, then the entry decoder.
    if let Ok(bytes) = hex::decode(&event.entry) {
        entry_decode(&bytes);
    }
}

fn json_responses(data: &[u8]) {
    let _ = json_round_trip::<wire::HeadInfo>(data);
    let _ = json_round_trip::<wire::Receipt>(data);
    let _ = json_round_trip::<wire::ApiError>(data);
}
