//! Differential fuzzing of sekisho's own response-head reader (with the body read by its
//! framing) against hyper's HTTP/1 client: whatever answer `sekisho_h1::parse_response` takes,
//! hyper must take too with the same status, version, fields in order, body and trailers; an
//! answer only ours refuses is fine (the gateway answers 502 where hyper would pass it on). The
//! first byte's low bit says whether the request was a `HEAD`. Run with
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run h1_response` from `fuzz/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sekisho_h1::reference::{hyper_reads_response_blocking, owned_response};

fuzz_target!(|data: &[u8]| {
    let Some((&first, raw)) = data.split_first() else {
        return;
    };
    let after_head = first & 1 == 1;
    let Some(ours) = owned_response(raw, after_head) else {
        return;
    };
    match hyper_reads_response_blocking(raw, after_head) {
        Some(hypers) if hypers == ours => {}
        Some(hypers) => panic!("read as {ours:?}, hyper {hypers:?}"),
        None => panic!("taken as {ours:?}, refused by hyper"),
    }
});
