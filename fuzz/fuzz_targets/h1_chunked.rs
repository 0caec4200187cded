//! The owned path's chunked-body reader on arbitrary bytes, split into reads where the input
//! says: it never panics, and what it makes of the bytes — the body, the trailers, what is left
//! for the next request, or the error — does not depend on how they were split into reads.
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run h1_chunked` from `fuzz/`.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sekisho_h1::{Chunk, ChunkError, ChunkedDecoder};

/// Body, trailers and what followed, or the error; `None` when the input ended first.
type Read = Option<Result<(Vec<u8>, Vec<(String, Vec<u8>)>, Vec<u8>), ChunkError>>;

fn read(data: &[u8], step: usize) -> Read {
    let mut decoder = ChunkedDecoder::new();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let step = step.max(1);
    for (index, piece) in data.chunks(step).enumerate() {
        buf.extend_from_slice(piece);
        loop {
            match decoder.next(&mut buf) {
                Err(error) => return Some(Err(error)),
                Ok(None) => break,
                Ok(Some(Chunk::Data(data))) => body.extend_from_slice(&data),
                Ok(Some(Chunk::End(trailers))) => {
                    let fields = trailers
                        .iter()
                        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
                        .collect();
                    let mut rest = buf.to_vec();
                    rest.extend_from_slice(&data[((index + 1) * step).min(data.len())..]);
                    return Some(Ok((body, fields, rest)));
                }
            }
        }
    }
    None
}

fuzz_target!(|input: &[u8]| {
    let Some((&step, data)) = input.split_first() else {
        return;
    };
    let whole = read(data, data.len());
    let split = read(data, usize::from(step % 16) + 1);
    // A split can only tell an error or an end sooner or as soon, never differently: compare
    // when both reached a verdict.
    if let (Some(whole), Some(split)) = (&whole, &split) {
        match (whole, split) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("whole {a:?}, split {b:?}"),
        }
    }
});
