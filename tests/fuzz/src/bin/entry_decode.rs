//! AFL target: see [`pd_fuzz::entry_decode`].
fn main() {
    afl::fuzz!(|data: &[u8]| pd_fuzz::entry_decode(data));
}
