//! AFL target: see [`pd_fuzz::export_decode`].
fn main() {
    afl::fuzz!(|data: &[u8]| pd_fuzz::export_decode(data));
}
