//! A webhook receiver for the alerting tests: every POSTed body arrives on a channel.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;

/// A webhook receiver on 127.0.0.1, port 0 (an alert receiver for the tests): every POSTed
/// body, parsed as JSON (`null` when it is not), arrives on the channel; each is answered 200.
pub async fn webhook_receiver() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a webhook receiver");
    webhook_receiver_on(listener)
}

/// [`webhook_receiver`] on `listener` (a test that stops and restarts a receiver on the same
/// port binds it again itself).
pub fn webhook_receiver_on(
    listener: tokio::net::TcpListener,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let address = listener.local_addr().expect("bound");
    let (sender, bodies) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let sender = sender.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let sender = sender.clone();
                        async move {
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|collected| collected.to_bytes())
                                .unwrap_or_default();
                            let _ = sender.send(
                                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                            );
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::new(),
                            )))
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (address, bodies)
}

/// The next body a [`webhook_receiver`] got, within 20 s (else the test fails, naming `what`).
pub async fn next_notification(
    bodies: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    what: &str,
) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(20), bodies.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} notification within 20 s"))
        .expect("the receiver runs")
}
