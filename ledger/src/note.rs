//! Checkpoints as C2SP signed notes (c2sp.org/signed-note, c2sp.org/tlog-checkpoint).
//!
//! A checkpoint's text is the origin (which log), the tree size in decimal, the root hash in
//! standard base64, and then any extension lines the spec allows (pd writes none, and reads
//! and signs over those of others). After a blank line come signature lines,
//! `— <key name> base64(key id || Ed25519 signature)`, where the key id is the first four
//! bytes of `SHA-256(name || "\n" || 0x01 || public key)` and the signature is over the
//! text exactly. As tlog-checkpoint asks of a log's own signature, the key name is the
//! origin: every `log` (or `admin`) key of a ledger signs as `pd.ledger/<ledger id>`, and the
//! key id tells which one. Any tool that speaks signed notes checks a pd checkpoint with that
//! key's [`vkey`] (`pd key export NAME --vkey`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::Digest as _;

use crate::bytes::{Hash, PublicKey, Signature};
use crate::keys::{self, SecretKey};

/// Signature type byte of Ed25519 note signatures.
const ED25519: u8 = 0x01;
/// Longest note pd reads.
pub const MAX_NOTE_BYTES: usize = 16 * 1024;

/// What a checkpoint says: this log, at this size, has this root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log: `pd.ledger/<ledger id>`.
    pub origin: String,
    /// Entries covered.
    pub size: u64,
    /// RFC 6962 head of the SHA-256 tree over their ids.
    pub root: Hash,
    /// Extension lines after the root, as the spec allows; pd writes none.
    pub extensions: Vec<String>,
}

/// One signature line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key's name (pd: the ledger key name).
    pub name: String,
    /// First four bytes of the key hash.
    pub key_id: [u8; 4],
    /// Ed25519 signature over the text.
    pub sig: Signature,
}

/// A checkpoint with its signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// Its signatures (Ed25519 ones; others are dropped when parsing).
    pub signatures: Vec<NoteSignature>,
}

/// A note pd cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a pd checkpoint note: {0}")]
pub struct NoteError(pub String);

fn bad(why: impl Into<String>) -> NoteError {
    NoteError(why.into())
}

/// The origin line of a ledger's checkpoints.
pub fn origin(ledger_id: &Hash) -> String {
    format!("pd.ledger/{ledger_id}")
}

/// The note key id of `name` with `key`.
pub fn key_id(name: &str, key: &PublicKey) -> [u8; 4] {
    let mut h = sha2::Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(key.0);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The verifier key string of the signed-note ecosystem: `name+<key id hex>+base64(0x01 || key)`.
pub fn vkey(name: &str, key: &PublicKey) -> String {
    let mut k = vec![ED25519];
    k.extend_from_slice(&key.0);
    format!("{name}+{}+{}", hex::encode(key_id(name, key)), B64.encode(k))
}

/// Parses a verifier key string into its name and Ed25519 key.
pub fn parse_vkey(s: &str) -> Result<(String, PublicKey), NoteError> {
    let mut parts = s.trim().splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("a verifier key is NAME+KEYID+BASE64"));
    };
    let key = B64.decode(key).map_err(|e| bad(format!("verifier key: {e}")))?;
    let [ED25519, rest @ ..] = key.as_slice() else {
        return Err(bad("the verifier key is not an Ed25519 key"));
    };
    let key = PublicKey(rest.try_into().map_err(|_| bad("the verifier key is not 32 bytes"))?);
    if hex::encode(key_id(name, &key)) != id {
        return Err(bad("the verifier key's id does not match its name and key"));
    }
    Ok((name.to_string(), key))
}

impl Checkpoint {
    /// The note text that is signed.
    pub fn text(&self) -> String {
        let mut out = format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root.0));
        for line in &self.extensions {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Signs the text as `name`.
    pub fn sign(&self, name: &str, key: &SecretKey) -> NoteSignature {
        NoteSignature {
            name: name.to_string(),
            key_id: key_id(name, &key.public()),
            sig: key.sign_raw(self.text().as_bytes()),
        }
    }

    /// Whether `sig` is a valid signature of this checkpoint by `name` with `key`.
    pub fn signed_by(&self, sig: &NoteSignature, name: &str, key: &PublicKey) -> bool {
        sig.name == name
            && sig.key_id == key_id(name, key)
            && keys::verify_raw(key, self.text().as_bytes(), &sig.sig)
    }
}

impl SignedCheckpoint {
    /// The signed note, ready to write to a file.
    pub fn render(&self) -> String {
        let mut out = self.checkpoint.text();
        out.push('\n');
        for s in &self.signatures {
            let mut blob = s.key_id.to_vec();
            blob.extend_from_slice(&s.sig.0);
            out.push_str(&format!("\u{2014} {} {}\n", s.name, B64.encode(blob)));
        }
        out
    }

    /// Parses a signed checkpoint note. Signatures are not checked here: see
    /// [`Checkpoint::signed_by`].
    pub fn parse(note: &str) -> Result<SignedCheckpoint, NoteError> {
        if note.len() > MAX_NOTE_BYTES {
            return Err(bad(format!("longer than {MAX_NOTE_BYTES} bytes")));
        }
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(bad("control characters other than newline"));
        }
        let (text, sigs) =
            note.split_once("\n\n").ok_or_else(|| bad("no blank line before the signatures"))?;
        let mut lines = text.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next()) else {
            return Err(bad("a checkpoint has an origin, a size and a root hash line"));
        };
        // Text and signatures are split at the first blank line, so no extension is empty.
        let extensions: Vec<String> = lines.map(str::to_string).collect();
        if origin.is_empty() {
            return Err(bad("empty origin"));
        }
        let size = size
            .parse::<u64>()
            .ok()
            .filter(|_| !size.starts_with('+') && (size == "0" || !size.starts_with('0')));
        let size = size.ok_or_else(|| bad("the size line is not a decimal number"))?;
        let root = B64.decode(root).ok().and_then(|r| <[u8; 32]>::try_from(r).ok());
        let root = Hash(root.ok_or_else(|| bad("the root line is not 32 bytes of base64"))?);
        let checkpoint = Checkpoint { origin: origin.to_string(), size, root, extensions };
        if !sigs.ends_with('\n') {
            return Err(bad("the note does not end with a newline"));
        }
        let mut signatures = Vec::new();
        for line in sigs.lines() {
            let rest = line
                .strip_prefix("\u{2014} ")
                .ok_or_else(|| bad(format!("not a signature line: {line:?}")))?;
            let (name, blob) = rest.split_once(' ').ok_or_else(|| bad("a signature line is `— NAME SIG`"))?;
            let blob = B64.decode(blob).map_err(|e| bad(format!("signature of {name}: {e}")))?;
            // Other signature types (other lengths) are not for pd to judge: skip them.
            if let Ok(blob) = <[u8; 68]>::try_from(blob.as_slice()) {
                let mut sig = [0; 64];
                sig.copy_from_slice(&blob[4..]);
                signatures.push(NoteSignature {
                    name: name.to_string(),
                    key_id: [blob[0], blob[1], blob[2], blob[3]],
                    sig: Signature(sig),
                });
            }
        }
        if signatures.is_empty() {
            return Err(bad("no Ed25519 signature"));
        }
        Ok(SignedCheckpoint { checkpoint, signatures })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp() -> Checkpoint {
        Checkpoint { origin: origin(&Hash([9; 32])), size: 42, root: Hash([7; 32]), extensions: vec![] }
    }

    #[test]
    fn signed_note_round_trips_and_verifies() {
        let key = SecretKey::from_seed([1; 32]);
        let signed = SignedCheckpoint { checkpoint: cp(), signatures: vec![cp().sign("admin", &key)] };
        let note = signed.render();
        assert!(note.starts_with(&format!("pd.ledger/{}\n42\n", Hash([9; 32]))));
        assert!(note.contains("\n\n\u{2014} admin "));
        let back = SignedCheckpoint::parse(&note).unwrap();
        assert_eq!(back, signed);
        assert!(back.checkpoint.signed_by(&back.signatures[0], "admin", &key.public()));
        let other = SecretKey::from_seed([2; 32]).public();
        assert!(!back.checkpoint.signed_by(&back.signatures[0], "admin", &other));
        assert!(!back.checkpoint.signed_by(&back.signatures[0], "carol", &key.public()));
        let mut moved = back.checkpoint.clone();
        moved.size += 1;
        assert!(!moved.signed_by(&back.signatures[0], "admin", &key.public()));
    }

    /// The example of golang.org/x/mod/sumdb/note (note_test.go, and c2sp.org/signed-note):
    /// the same key gives the same key id, verifier key and signature line.
    #[test]
    fn matches_the_go_sumdb_note_vector() {
        let vk = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let skey = B64.decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz").unwrap();
        let key = SecretKey::from_seed(skey[1..].try_into().unwrap());
        let (name, public) = parse_vkey(vk).unwrap();
        assert_eq!((name.as_str(), public), ("PeterNeumann", key.public()));
        assert_eq!(vkey(&name, &public), vk);
        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let mut blob = key_id(&name, &public).to_vec();
        blob.extend_from_slice(&key.sign_raw(text.as_bytes()).0);
        assert_eq!(
            B64.encode(blob),
            "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
        );
        assert!(parse_vkey("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").is_err());
    }

    #[test]
    fn extension_lines_are_read_and_signed_over() {
        let key = SecretKey::from_seed([1; 32]);
        let mut with = cp();
        with.extensions = vec!["Timestamp: 1700000000".into(), "witness-ext x".into()];
        let o = with.origin.clone();
        let note =
            SignedCheckpoint { checkpoint: with.clone(), signatures: vec![with.sign(&o, &key)] }.render();
        assert!(note.contains("\nTimestamp: 1700000000\nwitness-ext x\n\n"));
        let back = SignedCheckpoint::parse(&note).unwrap();
        assert_eq!(back.checkpoint, with);
        assert!(back.checkpoint.signed_by(&back.signatures[0], &o, &key.public()));
        // Dropping an extension changes the signed text.
        let mut cut = back.checkpoint.clone();
        cut.extensions.pop();
        assert!(!cut.signed_by(&back.signatures[0], &o, &key.public()));
    }

    #[test]
    fn malformed_notes_are_refused() {
        let key = SecretKey::from_seed([1; 32]);
        let good = SignedCheckpoint { checkpoint: cp(), signatures: vec![cp().sign("admin", &key)] }.render();
        for bad in [
            good.replace("\n42\n", "\n042\n"),
            good.replace("\n42\n", "\n-1\n"),
            good.replace("\n\n", "\n"),
            good.trim_end().to_string(),
            good.replace("\u{2014} ", "- "),
            format!("x\r{good}"),
            cp().text() + "\n",
        ] {
            assert!(SignedCheckpoint::parse(&bad).is_err(), "accepted {bad:?}");
        }
    }
}
