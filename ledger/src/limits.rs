//! Limits on everything in an entry that comes from outside. One place, each one tested.

/// Largest encoded entry, in bytes. A package of `MAX_FILES` long paths fits.
pub const MAX_ENTRY_BYTES: usize = 4 * 1024 * 1024;
/// Longest key, environment or policy name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest reason or failure text, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Most environments in a ledger.
pub const MAX_ENVS: usize = 16;
/// Most keys declared in the genesis entry.
pub const MAX_GENESIS_KEYS: usize = 64;
/// Most files in one package.
pub const MAX_FILES: usize = 10_000;
/// Longest file path inside a package, in bytes.
pub const MAX_PATH_BYTES: usize = 255;
/// Largest armored OpenPGP certificate or signature, in bytes.
pub const MAX_OPENPGP_BYTES: usize = 64 * 1024;
/// Most approvals a ledger may require per package.
pub const MAX_APPROVALS_REQUIRED: u32 = 16;
/// Largest export file `pd-verify` reads, in bytes.
pub const MAX_EXPORT_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Largest enrolment request, in bytes: an OpenPGP certificate at its limit, JSON-escaped.
pub const MAX_REQUEST_BYTES: usize = 2 * MAX_OPENPGP_BYTES;
/// Most admins a key change may require.
pub const MAX_ADMIN_APPROVALS: u32 = 16;
/// Largest fleet minimum an environment may declare.
pub const MAX_MIN_TARGETS: u32 = 1_000_000;
/// Most policy sets one target key may follow.
pub const MAX_TARGET_SETS: usize = 64;
/// Largest encoded heartbeat, in bytes.
pub const MAX_HEARTBEAT_BYTES: usize = 16 * 1024;
/// How far behind the ledger's end a statement's `base` may be, in entries: an entry lies
/// at most this many positions after the length its signer had verified. Within it, the
/// state keeps every statement's digest, so a replayed statement is refused; past it, a
/// statement is stale and its signer signs anew.
pub const STATEMENT_WINDOW: u64 = 1 << 15;
/// How far a statement's signing time may be ahead of the time it was appended.
pub const MAX_CLOCK_AHEAD_MS: u64 = 60_000;
/// How long after it was signed a statement may still be appended.
pub const MAX_STATEMENT_AGE_MS: u64 = 10 * 60_000;

/// `n` bytes in the largest binary unit that keeps it readable: "4 MiB", "4.1 MiB", "512 B".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Longest bake time an environment may require: a day.
pub const MAX_BAKE_MS: u64 = 24 * 3_600_000;

/// Most freeze windows one environment may have.
pub const MAX_FREEZES: usize = 32;
