//! A ledger mirrored to S3: immutable numbered segments plus a signed head.
//!
//! Under `s3://bucket/prefix/`:
//! - `ledger/segments/<from>-<end>.cbor`: a CBOR array of the exact bytes of entries
//!   `from..end` (20-digit decimal numbers, so names sort in order). Written once, never
//!   replaced; segments tile `0..len` without gaps or overlaps.
//! - `ledger/head.cbor`: the export head (signed "this ledger had `len` entries ending in
//!   `head`"), the only object that is replaced, written after the segments it covers.
//! - `objects/<blake3 hex>`: every package's artifact, written before the entries that
//!   name it.
//!
//! So a mirror read at any moment is a prefix of the ledger with its artifacts and a head
//! no newer than its segments; [`pull`] turns it back into an [`Export`] that the caller
//! verifies with `pd-verify`'s rules.

use anyhow::{bail, Context, Result};
use pd_ledger::export::{Export, Head, FORMAT};
use pd_ledger::{Hash, State};
use pd_store::BlobStore;
use serde_bytes::ByteBuf;

use crate::s3::S3Store;

/// Entries per segment, at most.
pub const SEGMENT_ENTRIES: u64 = 10_000;
const SEGMENTS: &str = "ledger/segments/";
const HEAD: &str = "ledger/head.cbor";

/// What one [`push`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pushed {
    /// Entries in the mirror now.
    pub entries: u64,
    /// Entries it held before.
    pub before: u64,
    /// Segments written.
    pub segments: usize,
    /// Artifacts uploaded (others were there already).
    pub artifacts: usize,
}

fn segment_name(from: u64, end: u64) -> String {
    format!("{SEGMENTS}{from:020}-{end:020}.cbor")
}

/// The segments in the mirror as `(from, end, name)`, checked to tile `0..len`.
fn segments(s3: &S3Store) -> Result<Vec<(u64, u64, String)>> {
    let mut out: Vec<(u64, u64, String)> = Vec::new();
    for name in s3.list(SEGMENTS)? {
        let range = name.strip_prefix(SEGMENTS).and_then(|n| n.strip_suffix(".cbor")).and_then(|n| {
            let (a, b) = n.split_once('-')?;
            Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
        });
        let Some((from, end)) = range.filter(|(a, b)| a < b) else {
            bail!("the mirror at {} holds {name}, which is not a ledger segment: it is damaged or not a pd mirror", s3.url());
        };
        let expected = out.last().map_or(0, |s| s.1);
        if from != expected {
            bail!(
                "the mirror at {} is damaged: segment {name} starts at entry {from}, expected {expected}",
                s3.url()
            );
        }
        out.push((from, end, name));
    }
    Ok(out)
}

fn read_segment(s3: &S3Store, (from, end, name): &(u64, u64, String)) -> Result<Vec<ByteBuf>> {
    let bytes = s3.read(name)?.with_context(|| format!("segment {name} vanished from {}", s3.url()))?;
    let entries: Vec<ByteBuf> = ciborium::from_reader(bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("segment {name} in {} is not a CBOR array of entries: {e}", s3.url()))?;
    if entries.len() as u64 != end - from {
        bail!("segment {name} in {} holds {} entries, its name says {}", s3.url(), entries.len(), end - from);
    }
    Ok(entries)
}

fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("writing CBOR to memory cannot fail");
    out
}

/// Brings the mirror at `s3` up to `state` (whose entries `read(from, end)` returns, exact
/// bytes), uploading missing artifacts (`fetch(hash)` gives their bytes) first, then new
/// segments, then `head` (signed over `state`). Refuses a mirror that holds another history.
pub fn push(
    s3: &S3Store,
    state: &State,
    head: &Head,
    read: &mut dyn FnMut(u64, u64) -> Result<Vec<Vec<u8>>>,
    fetch: &mut dyn FnMut(&Hash) -> Result<Vec<u8>>,
) -> Result<Pushed> {
    assert_eq!((head.len, head.head), (state.len(), state.head()), "the head is signed over this state");
    let segs = segments(s3)?;
    let before = segs.last().map_or(0, |s| s.1);
    if before > state.len() {
        bail!(
            "the mirror at {} holds {before} entries, this ledger only {}: it mirrors another ledger or a longer history; use another prefix",
            s3.url(),
            state.len()
        );
    }
    if let Some(last) = segs.last() {
        let theirs = read_segment(s3, last)?.pop().map(ByteBuf::into_vec);
        let ours = read(before - 1, before)?.pop();
        if theirs.is_none() || theirs != ours {
            bail!(
                "the mirror at {} diverges from this ledger at entry {}: it mirrors another ledger; use another prefix",
                s3.url(),
                before - 1
            );
        }
    }
    let mut pushed = Pushed { entries: state.len(), before, ..Pushed::default() };
    for p in state.packages().iter().filter(|p| p.seq >= before) {
        let hash = p.package.tarball.blake3;
        if !s3.contains(&hash.0)? {
            let bytes = fetch(&hash).with_context(|| format!("the artifact of {}", p.package.version))?;
            s3.put(&bytes)?;
            pushed.artifacts += 1;
        }
    }
    let mut from = before;
    while from < state.len() {
        let end = (from + SEGMENT_ENTRIES).min(state.len());
        let entries: Vec<ByteBuf> = read(from, end)?.into_iter().map(ByteBuf::from).collect();
        if entries.len() as u64 != end - from {
            bail!("the ledger returned {} entries for {from}..{end}", entries.len());
        }
        let bytes = cbor(&entries);
        let name = segment_name(from, end);
        if !s3.write_new(&name, bytes.clone())? && s3.read(&name)?.as_deref() != Some(bytes.as_slice()) {
            bail!(
                "{name} in {} was written meanwhile with other entries: another ledger mirrors there",
                s3.url()
            );
        }
        pushed.segments += 1;
        from = end;
    }
    s3.write(HEAD, cbor(head))?;
    Ok(pushed)
}

/// The mirror at `s3` as an export without artifacts (not yet verified: the caller runs
/// `pd-verify`'s rules over it).
pub fn pull(s3: &S3Store, progress: &mut dyn FnMut(u64, u64)) -> Result<Export> {
    let segs = segments(s3)?;
    let Some(total) = segs.last().map(|s| s.1) else {
        bail!("no ledger mirror at {}: run `pd ledger mirror {}` first", s3.url(), s3.url());
    };
    let mut entries = Vec::with_capacity(total as usize);
    for seg in &segs {
        entries.extend(read_segment(s3, seg)?);
        progress(seg.1, total);
    }
    let head =
        s3.read(HEAD)?.with_context(|| format!("the mirror at {} has segments but no {HEAD}", s3.url()))?;
    let head: Head = ciborium::from_reader(head.as_slice())
        .map_err(|e| anyhow::anyhow!("{HEAD} in {} is not a signed ledger head: {e}", s3.url()))?;
    // The head is written after its segments; a mirror may have grown past it meanwhile.
    if head.len > total {
        bail!(
            "the mirror at {} is damaged: its head names {} entries, its segments hold {total}",
            s3.url(),
            head.len
        );
    }
    entries.truncate(head.len as usize);
    Ok(Export { format: FORMAT.to_string(), entries, artifacts: Vec::new(), head })
}
