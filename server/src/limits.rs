//! Limits on what crosses the network, both ways: what `pd serve` accepts per connection and
//! per route, and what its clients (the CLI, agents, S3 reads) accept from a server. One
//! place, each one tested by exceeding it (`api.rs` and `client.rs` tests, `tests/abuse.rs`).

use std::time::Duration;

use pd_ledger::limits::{MAX_ENTRY_BYTES, MAX_HEARTBEAT_BYTES};

/// Room for framing around one entry or heartbeat in a request body.
const FRAMING_BYTES: usize = 64 * 1024;

/// Largest `POST /v1/entries` body: one encoded statement.
pub const ENTRY_BODY_BYTES: usize = MAX_ENTRY_BYTES + FRAMING_BYTES;
/// Largest `POST /v1/heartbeats` body: one encoded heartbeat.
pub const HEARTBEAT_BODY_BYTES: usize = MAX_HEARTBEAT_BYTES + 1024;
/// Largest body of any other route (none of them reads one).
pub const OTHER_BODY_BYTES: usize = 0;

/// How long a connection may take to send a request's headers; the same timer closes a
/// kept-alive connection that sends no next request (the idle timeout).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long clients keep an idle pooled connection: less than the server's idle timeout, so a
/// client never reuses a connection the server is closing.
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(5);
/// Connections `pd serve` keeps open at most when the file limit allows it.
pub const MAX_CONNECTIONS: usize = 4096;
/// File descriptors kept free of connections (ledger, objects, logs, accept headroom).
pub const FD_HEADROOM: usize = 256;

/// Entry bytes in one entries page the server sends (at least one entry, whatever its size).
pub const PAGE_ENTRY_BYTES: usize = 16 * 1024 * 1024;
/// Largest entries page a client accepts: the server's page plus CBOR framing (at most 9
/// bytes for each of at most 10,000 entries).
pub const PAGE_ANSWER_BYTES: u64 = PAGE_ENTRY_BYTES as u64 + 1024 * 1024;
/// Largest single Server-Sent Event a client accepts: one entry hex-encoded, in JSON.
pub const EVENT_BYTES: usize = 3 * ENTRY_BODY_BYTES;
/// Largest small JSON answer (head, receipt, turn, error) a client accepts.
pub const JSON_ANSWER_BYTES: u64 = 1024 * 1024;
/// Largest heartbeats answer a client accepts: a fleet's newest heartbeats, hex-encoded.
pub const HEARTBEATS_ANSWER_BYTES: u64 = 256 * 1024 * 1024;
/// Largest state answer a client accepts (the whole folded state as JSON).
pub const STATE_ANSWER_BYTES: u64 = 256 * 1024 * 1024;
/// Largest export a client accepts: what `pd-verify` reads.
pub const EXPORT_ANSWER_BYTES: u64 = pd_ledger::limits::MAX_EXPORT_BYTES;
/// Largest S3 object read that is not an artifact (a mirror segment of
/// [`crate::mirror::SEGMENT_ENTRIES`] entries, or the head).
pub const S3_LEDGER_OBJECT_BYTES: u64 = 4 * 1024 * 1024 * 1024;

pub use pd_ledger::limits::human_bytes;

/// The connection limit when none is given: [`MAX_CONNECTIONS`], or fewer when the process's
/// open-file limit minus [`FD_HEADROOM`] is lower (at least 16).
pub fn default_max_connections() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own and touches nothing else.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if got != 0 {
        return MAX_CONNECTIONS.min(1024 - FD_HEADROOM);
    }
    let files = usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX);
    MAX_CONNECTIONS.min(files.saturating_sub(FD_HEADROOM)).max(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_binary_units() {
        for (n, text) in [
            (0, "0 B"),
            (512, "512 B"),
            (4 * 1024 * 1024, "4 MiB"),
            (ENTRY_BODY_BYTES as u64, "4.1 MiB"),
            (256 << 20, "256 MiB"),
            (16 << 30, "16 GiB"),
        ] {
            assert_eq!(human_bytes(n), text, "{n}");
        }
    }

    #[test]
    fn the_connection_limit_leaves_room_for_files() {
        let n = default_max_connections();
        assert!((16..=MAX_CONNECTIONS).contains(&n), "{n}");
    }

    #[test]
    fn an_honest_page_fits_what_clients_accept() {
        // A page holds at most the budget (or one entry, smaller than it) plus its framing.
        const { assert!(MAX_ENTRY_BYTES <= PAGE_ENTRY_BYTES) };
        let worst = PAGE_ENTRY_BYTES as u64 + 9 * 10_000 + 9;
        assert!(worst <= PAGE_ANSWER_BYTES);
    }
}
