//! AFL target: see [`pd_fuzz::server_requests`].
fn main() {
    afl::fuzz!(|data: &[u8]| pd_fuzz::server_requests(data));
}
