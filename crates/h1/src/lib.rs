//! sekisho's own HTTP/1.1 request-head reader: the common case of a request head (HTTP/1.1, no
//! body, one of a `Content-Length` or a chunked one — read by [`ChunkedDecoder`] —, no upgrade,
//! an origin-form target, one `Host`) read with `httparse` into an
//! `http::Request` whose values are slices of the bytes read; everything else is left to hyper
//! (`Parsed::HandOff`). The gateway's connection code (`sekisho-gateway`'s `h1`) serves what
//! this takes and hands the rest to hyper unread.
//!
//! With feature `reference`, [`reference`] reads the same bytes with hyper's own server, for
//! the differential test and the fuzz target: what this takes, hyper must take and read the
//! same way.

mod chunked;
mod head;
mod maps;
mod names;
mod raw;
mod response;

pub use chunked::{Chunk, ChunkError, ChunkedDecoder, MAX_LINE, MAX_TRAILERS};
pub use head::{content_length, field, parse, Fields, Head, Parsed, MAX_FIELDS};
pub use maps::{map_with_room, recycle};
pub use names::is_hop_by_hop;
pub use raw::RawFields;
pub use response::{parse_response, Framing, ResponseError, ResponseHead, MAX_HEAD};

#[cfg(feature = "reference")]
pub mod reference;
