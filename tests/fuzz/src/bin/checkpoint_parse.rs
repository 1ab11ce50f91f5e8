//! AFL target: see [`pd_fuzz::checkpoint_parse`].
fn main() {
    afl::fuzz!(|data: &[u8]| pd_fuzz::checkpoint_parse(data));
}
