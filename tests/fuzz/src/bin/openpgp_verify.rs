//! AFL target: see [`pd_fuzz::openpgp_verify`].
fn main() {
    afl::fuzz!(|data: &[u8]| pd_fuzz::openpgp_verify(data));
}
