//! `pd ledger checkpoint | prove | consistency`: signed tree heads and the proofs checked
//! against them (see `pd_ledger::proof`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use pd_ledger::merkle::{Sha256, Tree};
use pd_ledger::note::SignedCheckpoint;
use pd_ledger::proof::Proof;
use pd_ledger::state::CheckpointState;
use pd_ledger::{Hash, State, Version};

use crate::backend::Backend;
use crate::{home, output, refuse, Ctx};

/// Arguments of `pd ledger checkpoint`.
#[derive(Args)]
pub struct CheckpointArgs {
    /// Also write the signed checkpoint note to this file (keep it to check later ledgers
    /// with `pd-verify --since`).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Arguments of `pd ledger prove`.
#[derive(Args)]
pub struct ProveArgs {
    /// The entry: a version such as PD-23.1.0 (its package entry) or a seq number.
    what: String,
    /// The checkpoint to prove against: a checkpoint entry's seq or a checkpoint note file
    /// (default: the newest checkpoint).
    #[arg(long, value_name = "CHECKPOINT")]
    at: Option<String>,
    /// Write the proof here instead of to stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Arguments of `pd ledger consistency`.
#[derive(Args)]
pub struct ConsistencyArgs {
    /// The earlier checkpoint: a note file kept from before, or a checkpoint entry's seq.
    old: String,
    /// The later checkpoint (default: the newest).
    new: Option<String>,
    /// Write the proof here instead of to stdout.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Appends a checkpoint over every entry so far, signed by the acting key (log role).
pub fn checkpoint(ctx: &Ctx, a: CheckpointArgs) -> Result<()> {
    let (home, mut backend) = Backend::of_home(ctx)?;
    let (actor, key, _) = ctx.signer(&home, &mut backend)?;
    let (entry, state) = backend.append(&actor, &key, |st| Ok(st.sign_checkpoint(&key)))?;
    let cp = state.latest_checkpoint().filter(|c| c.seq == entry.entry.seq).context("checkpoint folded")?;
    let note = state.signed_note(cp).render();
    if let Some(path) = &a.output {
        home::write_file_atomic(path, note.as_bytes())?;
    }
    let vkey = state.note_vkey(&key.public());
    if ctx.json {
        return ctx.emit(&serde_json::json!({
            "seq": cp.seq, "size": cp.checkpoint.size, "root": cp.checkpoint.root, "signer": actor,
            "vkey": vkey, "note": note, "file": a.output,
        }));
    }
    output::ok(format!(
        "checkpoint #{}: {} entries, root {} signed by {actor}",
        cp.seq,
        cp.checkpoint.size,
        cp.checkpoint.root.short()
    ));
    match &a.output {
        Some(path) => outln!("  note    {}", path.display()),
        None => out!("{note}"),
    }
    outln!("  vkey    {vkey}");
    Ok(())
}

/// Writes an inclusion proof of one entry under a checkpoint.
pub fn prove(ctx: &Ctx, a: ProveArgs) -> Result<()> {
    let (state, tree, mut backend) = open(ctx)?;
    let seq = match (a.what.parse::<u64>(), a.what.parse::<Version>()) {
        (Ok(seq), _) => seq,
        (_, Ok(v)) => crate::ledger_cmd::package_of(&state, v)?.seq,
        _ => anyhow::bail!("{:?} is neither a seq number nor a version such as PD-23.1.0", a.what),
    };
    let Some(entry) = backend.entries(seq)?.into_iter().next().filter(|_| seq < state.len()) else {
        refuse!("no entry #{seq}: the ledger has {} entries", state.len());
    };
    let at = match &a.at {
        Some(at) => resolve(&state, &tree, at)?,
        None => match state.latest_checkpoint() {
            Some(c) if c.checkpoint.size > seq => c.clone(),
            _ => refuse!(
                "no checkpoint covers entry #{seq} yet: append one with `pd ledger checkpoint` (a key with \
                 the log role), or wait for `pd serve` to write one"
            ),
        },
    };
    let proof = Proof::inclusion(&state, &tree, &entry, &at).map_err(refused)?;
    let what = format!(
        "entry #{seq} ({}) is in the ledger of {} entries",
        entry.entry.body.kind(),
        at.checkpoint.size
    );
    write(ctx, &proof, a.output.as_deref(), &what)
}

/// Writes a consistency proof from an earlier checkpoint to a later one.
pub fn consistency(ctx: &Ctx, a: ConsistencyArgs) -> Result<()> {
    let (state, tree, _) = open(ctx)?;
    let old = resolve(&state, &tree, &a.old)?;
    let new = match &a.new {
        Some(new) => resolve(&state, &tree, new)?,
        None => state.latest_checkpoint().cloned().context("resolved old, so there is a checkpoint")?,
    };
    let proof = Proof::consistency(&state, &tree, &state.signed_note(&old), &new).map_err(refused)?;
    let what = format!(
        "the ledger of {} entries extends the one of {} entries",
        new.checkpoint.size, old.checkpoint.size
    );
    write(ctx, &proof, a.output.as_deref(), &what)
}

fn refused(e: pd_ledger::proof::ProofError) -> anyhow::Error {
    anyhow::Error::new(crate::Refused(e.to_string()))
}

fn open(ctx: &Ctx) -> Result<(State, Tree<Sha256>, Backend)> {
    let mut backend = Backend::open(ctx, ctx.home().ok())?;
    let (state, tree) = backend.tree()?;
    Ok((state, tree, backend))
}

fn read_note(path: &Path) -> Result<SignedCheckpoint> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    SignedCheckpoint::parse(&text).with_context(|| format!("{} is not a checkpoint note", path.display()))
}

/// A checkpoint named by its entry's seq, or by a note file that must agree with this ledger.
fn resolve(state: &State, tree: &Tree<Sha256>, arg: &str) -> Result<CheckpointState> {
    if let Ok(seq) = arg.parse::<u64>() {
        return match state.checkpoints().iter().find(|c| c.seq == seq) {
            Some(c) => Ok(c.clone()),
            None => refuse!("entry #{seq} is not a checkpoint; `pd ledger log` lists them"),
        };
    }
    let path = Path::new(arg);
    if !path.exists() {
        anyhow::bail!("{arg:?} is neither a checkpoint's seq number nor a checkpoint note file");
    }
    let note = read_note(path)?.checkpoint;
    let origin = pd_ledger::note::origin(&state.ledger_id());
    if note.origin != origin {
        refuse!("{} is a checkpoint of {}, not of this ledger ({origin})", path.display(), note.origin);
    }
    if note.size > state.len() {
        refuse!(
            "{} covers {} entries but this ledger has only {}: it was truncated, or forked",
            path.display(),
            note.size,
            state.len()
        );
    }
    let here = Hash(tree.root(note.size)?);
    if here != note.root {
        refuse!(
            "this ledger's first {} entries have root {here}, but {} says {}: the history was rewritten \
             after that checkpoint was taken",
            note.size,
            path.display(),
            note.root
        );
    }
    match state.checkpoints().iter().find(|c| c.checkpoint.size == note.size) {
        Some(c) => Ok(c.clone()),
        None => refuse!("this ledger has no checkpoint entry of size {}", note.size),
    }
}

fn write(ctx: &Ctx, proof: &Proof, output: Option<&Path>, what: &str) -> Result<()> {
    let text = serde_json::to_string_pretty(proof)? + "\n";
    match output {
        None => out!("{text}"),
        Some(path) => {
            home::write_file_atomic(path, text.as_bytes())?;
            if ctx.json {
                return ctx.emit(&serde_json::json!({ "file": path, "proof": proof }));
            }
            output::ok(format!("{what}: proof in {}", path.display()));
            output::next(format!("pd-verify --proof {}", path.display()));
        }
    }
    Ok(())
}
