//! What one request carries through the steps: the client connection ([`ClientInfo`]) and the
//! request's own context ([`Exchange`]: its id, start, the host it asked for, and the
//! [`Record`] of what happened to it).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HeaderValue;
use sekisho_policy::concurrency::Permit as ConcurrencyPermit;
use sekisho_policy::ratelimit::Decision;
use tokio::time::{Instant, Sleep};

use crate::edge::GatewayError;
use crate::interim::InterimSink;
use crate::lag::SchedulingLag;
use crate::router::CompiledRoute;
use crate::sync::lock;

/// What a connection's last request made of its host, for the requests that follow (requests
/// on one connection usually name one host): one allocation per connection.
#[derive(Debug, Default)]
pub(super) struct HostMemo {
    /// The host (a copy: a request's values are slices of its head's bytes, which would be
    /// kept alive), `None` for a request that named none.
    pub(super) host: Option<HeaderValue>,
    /// This hop's whole `Forwarded` value for it (a first hop).
    pub(super) forwarded: Option<HeaderValue>,
    /// The forwarding fields as head lines for it (a first hop).
    pub(super) lines: Option<bytes::Bytes>,
}

impl HostMemo {
    /// The memo for `host`: this one if it is for that host, else emptied and kept for it.
    pub(super) fn for_host(&mut self, host: Option<&HeaderValue>) -> &mut Self {
        if self.host.as_ref() != host {
            // A copy: a request's values are slices of its head's bytes, which the memo would
            // keep alive (and with them the connection's read buffer) for as long as the
            // connection.
            *self = Self {
                host: host.map(|host| {
                    HeaderValue::from_bytes(host.as_bytes()).unwrap_or_else(|_| host.clone())
                }),
                ..Self::default()
            };
        }
        self
    }
}

/// A deadline timer kept for a connection's next call.
type KeptTimer = Option<Pin<Box<Sleep>>>;

/// What the gateway knows about the client connection.
#[derive(Debug, Clone)]
pub(crate) struct ClientInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The peer's IP as text, formatted once per connection.
    pub(super) ip_text: Arc<str>,
    /// The peer's IP as a header value (`X-Forwarded-For` of a first hop), once per connection.
    pub(super) ip_value: HeaderValue,
    /// `for=<node>;proto=<scheme>`, the start of this hop's `Forwarded` element (RFC 7239
    /// quoting), once per connection.
    pub(super) forwarded_prefix: Arc<str>,
    /// What the last request made of its host.
    pub(super) memo: Arc<Mutex<HostMemo>>,
    /// Where the upstream's interim (1xx) answers go: set when the connection can send them
    /// (the owned HTTP/1.1 path), one for the connection's requests, which come one at a time.
    pub interim: Option<InterimSink>,
    /// The deadline timers of the connection's last call (the route's, an attempt's), for its
    /// next one ([`ClientInfo::deadline_timer`]): two places, not a `Vec` (whose buffer would
    /// be one more allocation kept per connection).
    deadline_timers: Arc<Mutex<[KeptTimer; 2]>>,
}

impl ClientInfo {
    /// A timer that fires at `deadline`: the connection's last one set again when it is here.
    /// A timer still waiting in tokio's wheel for an earlier deadline moves to a later one with
    /// one atomic exchange (the wheel takes it up again when its first expiry comes), where a
    /// new timer is put in the wheel when first polled and taken out when dropped: most of a
    /// timer's cost, on every request. (An earlier deadline — another route's shorter timeout,
    /// an attempt's — puts it in the wheel again.) Streams of one HTTP/2 connection that run
    /// side by side each get timers of their own.
    pub(super) fn deadline_timer(&self, deadline: Instant) -> Pin<Box<Sleep>> {
        let kept = {
            let mut places = lock(&self.deadline_timers);
            places[1].take().or_else(|| places[0].take())
        };
        match kept {
            Some(mut timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Keeps `timer` for the connection's next call (two are kept: a call's and an attempt's;
    /// the last kept is the first taken).
    pub(super) fn keep_deadline_timer(&self, timer: Pin<Box<Sleep>>) {
        let mut places = lock(&self.deadline_timers);
        if let Some(place) = places.iter_mut().find(|place| place.is_none()) {
            *place = Some(timer);
        }
    }

    /// Describes a client connection.
    pub(crate) fn new(remote: SocketAddr, tls: bool) -> Self {
        let ip = remote.ip();
        let forwarded_node = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let ip_text = ip.to_string();
        let proto = if tls { "https" } else { "http" };
        Self {
            remote,
            tls,
            ip_value: HeaderValue::from_str(&ip_text)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            ip_text: Arc::from(ip_text),
            forwarded_prefix: Arc::from(format!("for={forwarded_node};proto={proto}")),
            memo: Arc::default(),
            interim: None,
            deadline_timers: Arc::default(),
        }
    }
}

/// What happened to one request, for metrics, the access log and the answer's headers.
#[derive(Default)]
pub(super) struct Record {
    pub(super) route: Option<Arc<CompiledRoute>>,
    pub(super) target: Option<Arc<str>>,
    pub(super) error: Option<GatewayError>,
    /// When the last attempt's request was handed to the target's connection.
    pub(super) sent: Option<Instant>,
    /// When the upstream's answer head arrived (one clock read serves the latency estimate and
    /// the request metrics).
    pub(super) answered: Option<Instant>,
    /// Attempts made (0 when none reached a target).
    pub(super) attempts: u32,
    /// The fallback that answered: "upstream" or "static".
    pub(super) fallback: Option<&'static str>,
    /// The route's adaptive concurrency place, sampled and handed to the response body once the
    /// answer is known.
    pub(super) concurrency: Option<ConcurrencyPermit>,
    /// The upstream timed out (whether or not a fallback answered): a drop for the limit.
    pub(super) timed_out: bool,
    /// The tighter rate-limit decision that applied, for the `RateLimit-*` fields.
    pub(super) rate: Option<Decision>,
    /// What the cache did, for `Cache-Status`.
    pub(super) cache_status: Option<HeaderValue>,
    /// The auth operation this request was (an endpoint, or `validate` on a route with
    /// `auth`) and how long it took, for the auth metrics.
    pub(super) auth: Option<(&'static str, Option<std::time::Duration>)>,
}

/// One request's context through the steps, in place of long argument lists.
pub(super) struct Exchange {
    /// The client connection (shared by its requests: one reference count per request rather
    /// than one per field).
    pub(super) client: Arc<ClientInfo>,
    /// `X-Request-Id`, the client's or ours.
    pub(super) request_id: HeaderValue,
    /// When the gateway started on it; the route's deadline runs from here.
    pub(super) started: Instant,
    /// The host the client asked for (its `Host`, or the request target's authority).
    pub(super) host: Option<HeaderValue>,
    /// The event loop's own scheduling delay when the request started (`lag.rs`; zero while
    /// nothing needs it measured).
    pub(super) own_delay: Duration,
    /// The probe of that delay, read again when a call is judged ([`Exchange::own_delay_now`]).
    pub(super) lag: Arc<SchedulingLag>,
    /// What happened so far.
    pub(super) record: Record,
    /// The checked identity whose headers are written into the upstream request as it is sent,
    /// not set in the request's map (`proxy/auth.rs`; the steps decide which).
    pub(super) identity: Option<Arc<sekisho_auth::Identity>>,
    /// The answer goes to a writer that can write the upstream's fields through as read (the
    /// owned HTTP/1.1 path): when the route does not read them either, no map is made of them.
    pub(super) raw_answer: bool,
}

impl Exchange {
    /// A request that starts now.
    pub(super) fn new(
        client: Arc<ClientInfo>,
        request_id: HeaderValue,
        started: Instant,
        lag: &Arc<SchedulingLag>,
    ) -> Self {
        Self {
            client,
            request_id,
            started,
            own_delay: lag.own_delay(),
            lag: Arc::clone(lag),
            host: None,
            record: Record::default(),
            identity: None,
            raw_answer: false,
        }
    }

    /// How much of a call's time is the gateway's own, as a call ending now is judged: the
    /// larger of the figure when the request started and the figure now, so a call that ran
    /// into a saturation, or out of one, is not read as the upstream's slowness.
    pub(super) fn own_delay_now(&self) -> Duration {
        self.own_delay.max(self.lag.own_delay())
    }
}
