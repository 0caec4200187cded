//! Differential fuzzing of sekisho's own request-head reader against hyper's HTTP/1 server:
//! whatever head `sekisho_h1::parse` takes, hyper must take too and read the same way (method,
//! target, version, fields in order, body length); a head it leaves to hyper is fine. Run with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run h1_head` from `fuzz/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sekisho_h1::reference::{compare, hyper_reads_blocking, owned};

fuzz_target!(|data: &[u8]| {
    let ours = owned(data);
    if ours.is_none() {
        return;
    }
    if let Err(disagreement) = compare(ours, hyper_reads_blocking(data)) {
        panic!("{disagreement}");
    }
});
