//! AFL target: see [`pd_fuzz::enrolment_request`].
fn main() {
    afl::fuzz!(|data: &[u8]| pd_fuzz::enrolment_request(data));
}
