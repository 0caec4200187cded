//! What the tests of this crate share: a chaos upstream in the background, and a small
//! HTTP/1.1 server answering with a closure and counting the connections it accepts.
// Not every test file uses every helper.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use sekisho_load::{ChaosOptions, ChaosServer};

/// A chaos upstream named `known` answering after `latency`, serving until the test ends.
pub async fn chaos(latency: Duration) -> SocketAddr {
    let server = ChaosServer::bind(ChaosOptions {
        listen: "127.0.0.1:0".parse().unwrap(),
        latency,
        error_rate: 0.0,
        name: Some("known".to_owned()),
    })
    .await
    .unwrap();
    let address = server.local_addr();
    tokio::spawn(server.run(std::future::pending()));
    address
}

/// A server on 127.0.0.1 speaking keep-alive HTTP/1.1, each request answered by `answer`; its
/// address, and the count of connections it accepted so far.
pub async fn http1_server<A, Fut>(answer: A) -> (SocketAddr, Arc<AtomicU64>)
where
    A: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let answer = answer.clone();
                    async move { Ok::<_, Infallible>(answer(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, accepted)
}

/// A 200 with `ok`.
pub fn ok() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}
