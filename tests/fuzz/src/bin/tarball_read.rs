//! AFL target: see [`pd_fuzz::tarball_read`].
fn main() {
    afl::fuzz!(|data: &[u8]| pd_fuzz::tarball_read(data));
}
