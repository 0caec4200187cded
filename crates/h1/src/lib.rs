//! sekisho's own HTTP/1.1 request-head reader: the common case of a request head (HTTP/1.1, no
//! body or one of a `Content-Length`, no upgrade, an origin-form target, one `Host`) read with `httparse` into an
//! `http::Request` whose values are slices of the bytes read; everything else is left to hyper
//! (`Parsed::HandOff`). The gateway's connection code (`sekisho-gateway`'s `h1`) serves what
//! this takes and hands the rest to hyper unread.
//!
//! With feature `reference`, [`reference`] reads the same bytes with hyper's own server, for
//! the differential test and the fuzz target: what this takes, hyper must take and read the
//! same way.

mod head;

pub use head::{content_length, parse, Fields, Head, Parsed, MAX_FIELDS};

#[cfg(feature = "reference")]
pub mod reference;
