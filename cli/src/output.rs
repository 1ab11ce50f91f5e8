//! How pd talks: `✔` lines for humans, JSON for scripts.

use std::io::Write;

/// Set while `pd demo --json` tells its story: the story goes to stderr, so that stdout holds
/// only the JSON result.
static STORY_ON_STDERR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sends what `emit` writes to stderr until the guard is dropped (a panic included).
pub(crate) fn story_on_stderr() -> impl Drop {
    struct Back;
    impl Drop for Back {
        fn drop(&mut self) {
            STORY_ON_STDERR.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }
    STORY_ON_STDERR.store(true, std::sync::atomic::Ordering::Relaxed);
    Back
}

/// Set by the long-running commands with `--json`: their stdout is JSON lines, so an error
/// that ends them is printed on one line too.
static JSON_LINES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks stdout as JSON lines (see [`json_lines`]).
pub(crate) fn set_json_lines() {
    JSON_LINES.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether stdout is JSON lines: a `--json` error is then printed on one line.
pub fn json_lines() -> bool {
    JSON_LINES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Writes to stdout; a reader that closed the pipe is not an error of the command (see
/// `outln!`), any other failure panics as `print!` would.
pub(crate) fn emit(args: std::fmt::Arguments) {
    let written = match STORY_ON_STDERR.load(std::sync::atomic::Ordering::Relaxed) {
        true => std::io::stderr().lock().write_fmt(args),
        false => std::io::stdout().lock().write_fmt(args),
    };
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            panic!("failed printing the command's output: {e}");
        }
    }
}

/// Bytes as they are on stdout (`pd store get -o -`), with `emit`'s handling of a closed pipe.
pub(crate) fn raw(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Whether to colour what goes to `stream`: only a terminal, and never with `NO_COLOR` set
/// (<https://no-color.org>).
pub fn colour(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A finished step.
pub fn ok(line: impl std::fmt::Display) {
    outln!("✔ {line}");
}

/// A step under way.
pub fn working(line: impl std::fmt::Display) {
    outln!("⟳ {line}");
}

/// Something the reader should look at; the work goes on.
pub fn warn(line: impl std::fmt::Display) {
    outln!("! {line}");
}

/// The suggested next command.
pub fn next(line: impl std::fmt::Display) {
    outln!("next: {line}");
}

/// An error and its causes on one line.
pub fn chain(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

/// UTC time of a ledger timestamp.
pub fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Bytes for humans: "4 MiB", "441 B".
pub use pd_ledger::limits::human_bytes as size;
