//! A prototype of an owned HTTP/1.1 fast path for sekisho (issue 20, item 3), to measure how
//! far below a bare hyper proxy a Rust proxy on tokio can go when it owns its codec.
//!
//! A reverse proxy to one upstream on one current-thread tokio runtime: request and response
//! heads parsed in place with `httparse`, the client's own header bytes forwarded with this
//! hop's edits spliced in (hop-by-hop headers out; `X-Forwarded-For`, `-Proto`, `-Host`,
//! `Forwarded`, `X-Request-Id` in) in one vectored write, bodies streamed by `Content-Length`
//! or passed through chunked as they came, a pool of keep-alive upstream connections.
//!
//! It refuses, rather than handles, everything unusual (see `head`): in the real gateway those
//! are the places a request would be handed to hyper. It has no routing, no policies, no
//! metrics, no TLS and no logging; it is a measuring instrument, not a gateway.

pub mod chunked;
mod fields;
pub mod head;
pub mod ids;
mod io;
mod proxy;

pub use io::TimerMode;
pub use proxy::{serve, Shared, Timeouts};
