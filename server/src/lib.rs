//! pd over the network: `pd serve` (the HTTP API over one home), the client every other
//! process uses to talk to it, `pd agent` (follows one environment beside a target) and a
//! small reference target for tests and the demo.
//!
//! The server never signs for a user: clients sign entries at a position the server leases
//! to them (see [`api`]), and the server checks each with the same pure rules as everyone.
#![warn(missing_docs)]

pub mod agent;
pub mod api;
pub mod client;
pub mod console;
pub mod limits;
pub mod mirror;
pub mod notify;
pub mod s3;
pub mod sendfile;
pub mod sequencer;
pub mod target;
pub mod tls;
pub mod wire;

pub use api::{serve, ServeOptions};
pub use client::Client;

/// A source of "now" in milliseconds since the Unix epoch, passed into the server and the
/// agent so a test can run them on a simulated clock.
pub type Clock = std::sync::Arc<dyn Fn() -> u64 + Send + Sync>;

/// A source of random numbers (jittered pauses), passed into the agent so a simulation
/// can seed it.
pub type Random = std::sync::Arc<dyn Fn() -> u64 + Send + Sync>;

/// The operating system's randomness as a [`Random`].
pub fn system_random() -> Random {
    std::sync::Arc::new(|| {
        let mut b = [0u8; 8];
        // Without randomness (never on Linux) the middle of the range is still a spread-out guess.
        getrandom::fill(&mut b).map_or(u64::MAX / 2, |()| u64::from_le_bytes(b))
    })
}

/// The system clock as a [`Clock`].
pub fn system_clock() -> Clock {
    std::sync::Arc::new(now_ms)
}

/// Milliseconds since the Unix epoch, from the system clock (0 if it is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
