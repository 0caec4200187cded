//! The generator's own HTTP/1.1 connection pool: idle `SendRequest`s kept per authority, taken
//! by one request at a time and put back once its answer has been read to the end.
//!
//! hyper-util's pooled client did the same job at about a third of the generator's CPU per
//! request (callgrind: a SipHash of the pool key twice per request, the checkout future racing
//! a lazy connect, the `Pooled` wrapper's drop and put, a task spawned per answer to wait for
//! the connection to be ready again); at the rates a load generator runs, that was the
//! difference between keeping up and not (docs/benchmarks.md, issue 18). The bound on
//! connections stays where it was — the client's semaphore: a request holds a permit while it
//! holds a connection, and gives the connection back before the permit, so there are never
//! more connections than permits.
//!
//! What the pooled client did that matters here is kept: `Host` is set from the URI, the URI is
//! sent in origin form, a connection the server closed while idle is not used, and a request
//! that could not be sent on a reused connection (the server closed it at that moment) is sent
//! again on a new one. What it did that does not matter to a run of minutes is left out: idle
//! connections are not expired by a timer (a server that closes them is noticed, and the run
//! ends), and connections are not shared between runs.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

/// A connection of the pool, held by one request; give it back with [`H1Pool::put`] once its
/// answer has been read to the end, or drop it (it closes) when it must not be reused.
pub(crate) struct Connection {
    authority: Authority,
    sender: SendRequest<Full<Bytes>>,
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendError {
    /// No connection could be made (or the URI names no host to connect to).
    Connect,
    /// The connection failed while the request was sent or answered.
    Transport,
}

/// Idle connections, with the authority each leads to. A load run talks to one or two
/// authorities, so a short list searched from its end (the most recently used first) beats
/// hashing a key for a map on every request.
pub(crate) struct H1Pool {
    idle: Mutex<Vec<Connection>>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl H1Pool {
    /// A pool whose new connections must be made within `connect_timeout`.
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            connect_timeout,
        }
    }

    /// Sends `request` (an absolute `http://` URI) on an idle connection to its authority, or on
    /// a new one; returns the answer (its body still to be read) and the connection it came on.
    pub(crate) async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Connection), SendError> {
        let authority = to_origin_form(&mut request)?;
        if let Some(mut connection) = self.take_idle(&authority) {
            match connection.sender.try_send_request(request).await {
                Ok(response) => return Ok((response, connection)),
                // Not written: the connection closed as it was taken. Once more, on a new one.
                Err(mut failed) => match failed.take_message() {
                    Some(again) => request = again,
                    None => return Err(SendError::Transport),
                },
            }
        }
        let mut connection = self.connect(authority).await?;
        match connection.sender.send_request(request).await {
            Ok(response) => Ok((response, connection)),
            Err(_) => Err(SendError::Transport),
        }
    }

    /// Gives back a connection whose answer was read to its end, once it can take the next
    /// request: hyper's connection task must first have seen the answer's end (usually it has;
    /// otherwise this waits for it, at most the connect timeout, and drops the connection
    /// after that).
    pub(crate) async fn put(&self, mut connection: Connection) {
        if !connection.sender.is_ready() {
            let ready = tokio::time::timeout(self.connect_timeout, connection.sender.ready()).await;
            if !matches!(ready, Ok(Ok(()))) {
                return;
            }
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(connection);
        }
    }

    /// The most recently used idle connection to `authority` that is still open; the closed
    /// ones met on the way are dropped.
    fn take_idle(&self, authority: &Authority) -> Option<Connection> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(index) = idle.iter().rposition(|c| c.authority == *authority) {
            let connection = idle.swap_remove(index);
            if connection.sender.is_ready() {
                return Some(connection);
            }
        }
        None
    }

    async fn connect(&self, authority: Authority) -> Result<Connection, SendError> {
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .map_err(|_| SendError::Connect)?
        .map_err(|_| SendError::Connect)?;
        // Requests are small and each waits for its answer: no reason to hold one back.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| SendError::Connect)?;
        tokio::spawn(async move {
            // Ends when the server closes the connection, or once its sender is dropped.
            let _ = connection.await;
        });
        Ok(Connection { authority, sender })
    }
}

/// Rewrites an absolute URI into origin form (`/path?query`), with the authority in `Host`
/// unless the request has its own; returns the authority to connect to.
fn to_origin_form(request: &mut Request<Full<Bytes>>) -> Result<Authority, SendError> {
    let uri = request.uri();
    let Some(authority) = uri.authority().cloned() else {
        return Err(SendError::Connect);
    };
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if !request.headers().contains_key(http::header::HOST) {
        // As hyper-util's client does: the host, and the port unless it is http's own.
        let host = match authority.port_u16() {
            Some(port) if port != 80 => HeaderValue::from_str(authority.as_str()),
            _ => HeaderValue::from_str(authority.host()),
        }
        .map_err(|_| SendError::Connect)?;
        request.headers_mut().insert(http::header::HOST, host);
    }
    *request.uri_mut() = Uri::from(path);
    Ok(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_out_in_origin_form_with_their_host() {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = "http://127.0.0.1:8080/api/orders?x=1".parse().expect("uri");
        let authority = to_origin_form(&mut request).expect("origin form");
        assert_eq!(authority.as_str(), "127.0.0.1:8080");
        assert_eq!(request.uri().to_string(), "/api/orders?x=1");
        assert_eq!(request.headers()["host"], "127.0.0.1:8080");

        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = "http://example.com:80".parse().expect("uri");
        request
            .headers_mut()
            .insert(http::header::HOST, HeaderValue::from_static("mine"));
        to_origin_form(&mut request).expect("origin form");
        assert_eq!(request.uri().to_string(), "/");
        assert_eq!(
            request.headers()["host"],
            "mine",
            "a request's own Host is kept"
        );
    }
}
