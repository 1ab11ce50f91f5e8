//! AFL target: see [`pd_fuzz::proof_file`].
fn main() {
    afl::fuzz!(|data: &[u8]| pd_fuzz::proof_file(data));
}
