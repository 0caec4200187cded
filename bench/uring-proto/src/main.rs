//! One bare keep-alive HTTP/1.1 reverse-proxy loop, written twice over the same framing code:
//! on tokio (epoll: a readiness wait, then one `recv`/`send` system call per read and write) and
//! on monoio's io_uring driver (reads and writes submitted to a ring, completions reaped in
//! batches). Issue 20, item 3 asks whether an io_uring runtime would cut the kernel's share of
//! a proxied request; this measures it with nothing else in the way: no routing, no policies,
//! no header edits — a client connection paired with one upstream connection, the request's
//! bytes forwarded as read, the answer's head parsed only for its length.
//!
//! Not a server: GET-shaped requests (a `Content-Length` body is forwarded, chunked is refused),
//! answers framed by `Content-Length`.
//!
//! `uring-tuned` sets the ring up for one thread that reaps its own completions
//! (`COOP_TASKRUN`, `SINGLE_ISSUER`, `DEFER_TASKRUN`: no interrupt to run completion work, which
//! waits for the thread's next `io_uring_enter`).
//!
//! `uring-proto epoll|uring|uring-tuned LISTEN UPSTREAM`

use std::io;
use std::net::SocketAddr;

const READ_CHUNK: usize = 16 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(kind), Some(listen), Some(upstream)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: uring-proto epoll|uring|uring-tuned LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let (Ok(listen), Ok(upstream)) = (listen.parse::<SocketAddr>(), upstream.parse()) else {
        eprintln!("uring-proto: LISTEN and UPSTREAM are ADDR:PORT");
        std::process::exit(2);
    };
    let result = match kind.as_str() {
        "epoll" => epoll::serve(listen, upstream),
        "uring" => uring::serve(listen, upstream, false),
        "uring-tuned" => uring::serve(listen, upstream, true),
        other => Err(io::Error::other(format!("no runtime {other:?}"))),
    };
    if let Err(error) = result {
        eprintln!("uring-proto: {error}");
        std::process::exit(1);
    }
}

/// The length of the request at the start of `buf` once all of it is there.
fn request_frame(buf: &[u8]) -> io::Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let parsed = request.parse(buf);
    whole(buf, parsed, request.headers)
}

/// The length of the answer at the start of `buf` once all of it is there.
fn response_frame(buf: &[u8]) -> io::Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let parsed = response.parse(buf);
    whole(buf, parsed, response.headers)
}

/// A parsed head plus its body's length, when `buf` holds that much.
fn whole(
    buf: &[u8],
    parsed: httparse::Result<usize>,
    headers: &[httparse::Header<'_>],
) -> io::Result<Option<usize>> {
    match parsed {
        Ok(httparse::Status::Complete(head)) => {
            let total = head + body_length(headers)?;
            Ok((buf.len() >= total).then_some(total))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(error) => Err(io::Error::new(io::ErrorKind::InvalidData, error)),
    }
}

fn body_length(headers: &[httparse::Header<'_>]) -> io::Result<usize> {
    let mut length = 0;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunked: not here",
            ));
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "content-length"))?;
        }
    }
    Ok(length)
}

mod epoll {
    use super::{request_frame, response_frame, READ_CHUNK};
    use std::io;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    pub(crate) fn serve(listen: SocketAddr, upstream: SocketAddr) -> io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        runtime.block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            loop {
                let (client, _) = listener.accept().await?;
                client.set_nodelay(true)?;
                tokio::spawn(async move {
                    let _ = connection(client, upstream).await;
                });
            }
        })
    }

    async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.reserve(READ_CHUNK);
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    async fn connection(mut client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
        let mut up: Option<TcpStream> = None;
        let mut request = Vec::with_capacity(READ_CHUNK);
        let mut answer = Vec::with_capacity(READ_CHUNK);
        loop {
            let total = loop {
                if let Some(total) = request_frame(&request)? {
                    break total;
                }
                read_more(&mut client, &mut request).await?;
            };
            let up = match &mut up {
                Some(up) => up,
                None => {
                    let stream = TcpStream::connect(upstream).await?;
                    stream.set_nodelay(true)?;
                    up.insert(stream)
                }
            };
            up.write_all(&request[..total]).await?;
            request.drain(..total);
            answer.clear();
            let total = loop {
                if let Some(total) = response_frame(&answer)? {
                    break total;
                }
                read_more(up, &mut answer).await?;
            };
            client.write_all(&answer[..total]).await?;
        }
    }
}

mod uring {
    use super::{request_frame, response_frame, READ_CHUNK};
    use monoio::buf::{IoBuf, IoBufMut};
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    use monoio::net::{TcpListener, TcpStream};
    use std::io;
    use std::net::SocketAddr;

    pub(crate) fn serve(listen: SocketAddr, upstream: SocketAddr, tuned: bool) -> io::Result<()> {
        let mut builder = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().with_entries(4096);
        if tuned {
            let mut ring = io_uring::IoUring::builder();
            ring.setup_coop_taskrun()
                .setup_single_issuer()
                .setup_defer_taskrun();
            builder = builder.uring_builder(ring);
        }
        let mut runtime = builder.build()?;
        runtime.block_on(async move {
            let listener = TcpListener::bind(listen)?;
            loop {
                let (client, _) = listener.accept().await?;
                client.set_nodelay(true)?;
                monoio::spawn(async move {
                    let _ = connection(client, upstream).await;
                });
            }
        })
    }

    /// Reads after what `buf` holds (the ring writes into its spare capacity).
    async fn read_more(stream: &mut TcpStream, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
        buf.reserve(READ_CHUNK);
        let (len, capacity) = (buf.len(), buf.capacity());
        let (result, slice) = stream.read(buf.slice_mut(len..capacity)).await;
        if result? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(slice.into_inner())
    }

    async fn connection(mut client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
        let mut up: Option<TcpStream> = None;
        let mut request = Vec::with_capacity(READ_CHUNK);
        let mut answer = Vec::with_capacity(READ_CHUNK);
        loop {
            let total = loop {
                if let Some(total) = request_frame(&request)? {
                    break total;
                }
                request = read_more(&mut client, request).await?;
            };
            let up = match &mut up {
                Some(up) => up,
                None => {
                    let stream = TcpStream::connect(upstream).await?;
                    stream.set_nodelay(true)?;
                    up.insert(stream)
                }
            };
            let (result, slice) = up.write_all(request.slice(0..total)).await;
            request = slice.into_inner();
            result?;
            request.drain(..total);
            answer.clear();
            let total = loop {
                if let Some(total) = response_frame(&answer)? {
                    break total;
                }
                answer = read_more(up, answer).await?;
            };
            let (result, slice) = client.write_all(answer.slice(0..total)).await;
            answer = slice.into_inner();
            result?;
        }
    }
}
