//! The accept loop every server of this crate shares (the chaos upstream, the demo services,
//! the alert receiver): accept until shutdown, one task per connection, and an accept error
//! (out of file descriptors and the like) met with a short pause rather than a spin.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

/// How long to wait after a failed accept before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Accepts connections on `listener` until `shutdown` resolves, spawning `connection(stream)`
/// for each; returns once `shutdown` resolved (the connections' tasks go on). `what` names the
/// server in the log.
pub(crate) async fn serve<F, Fut>(
    listener: &TcpListener,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
    mut connection: F,
) where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream));
                }
                Err(error) => {
                    tracing::warn!(%error, server = what, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// [`serve`] with each connection served by hyper (HTTP/1.1, or h2c by prior knowledge), every
/// request answered by `answer`, which cannot fail.
pub(crate) async fn serve_http<A, Fut>(
    listener: &TcpListener,
    what: &'static str,
    shutdown: impl Future<Output = ()>,
    answer: A,
) where
    A: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    serve(listener, what, shutdown, |stream| {
        let answer = answer.clone();
        async move {
            let service = service_fn(move |request| {
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(answer(request).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await;
}
