//! The client's address, as far as it can be trusted.
//!
//! The peer of the TCP connection is the client unless it is one of `server.trusted_proxies`.
//! When it is, the proxies' own record is read: `X-Forwarded-For` from right to left (each hop
//! appends the address it saw), skipping addresses that are themselves trusted proxies; the first
//! untrusted address is the client. Without `X-Forwarded-For`, the `for=` nodes of `Forwarded`
//! (RFC 7239) are read the same way. What a client wrote itself — anything left of the first
//! untrusted hop — is never believed, so a client cannot pick its own rate-limit key by sending
//! `X-Forwarded-For: 1.2.3.4`. This is the algorithm of nginx's `real_ip_recursive on` and
//! Envoy's `xff_num_trusted_hops` by address.

use std::net::IpAddr;

use http::header::{HeaderMap, FORWARDED};
use ipnet::IpNet;

/// `X-Forwarded-For`.
static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The networks whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// From `server.trusted_proxies` (validated: entries that do not parse are skipped).
    pub(crate) fn new<'a>(entries: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            networks: entries
                .into_iter()
                .filter_map(sekisho_config::parse_network)
                .collect(),
        }
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.networks.iter().any(|net| net.contains(&address))
    }

    /// The client's address for a request that came from `peer` with `headers`.
    pub(crate) fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let from_xff = self.walk(
            headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .map(parse_xff_entry),
        );
        if let Some(found) = from_xff {
            return found;
        }
        self.walk(
            headers
                .get_all(FORWARDED)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .map(parse_forwarded_for),
        )
        .unwrap_or(peer)
    }

    /// The rightmost hop not trusted, walking from the right; the leftmost hop when all are
    /// trusted; `None` when there is no hop, or a hop that cannot be read comes first (an
    /// unreadable hop stops the walk: what lies left of it cannot be vouched for).
    fn walk(&self, hops: impl DoubleEndedIterator<Item = Option<IpAddr>>) -> Option<IpAddr> {
        let mut leftmost = None;
        for hop in hops.rev() {
            let address = hop?;
            if !self.trusts(address) {
                return Some(address);
            }
            leftmost = Some(address);
        }
        leftmost
    }
}

/// An IPv4 address mapped into IPv6 compares as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port (`1.2.3.4:5678`,
/// `[::1]:80`).
fn parse_xff_entry(entry: &str) -> Option<IpAddr> {
    parse_node(entry.trim())
}

/// The `for=` parameter of one `Forwarded` element.
fn parse_forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        parse_node(value.trim().trim_matches('"'))
    })
}

fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(address) = node.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (v6, _) = rest.split_once(']')?;
        return v6.parse::<IpAddr>().ok().map(canonical);
    }
    let (v4, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    v4.parse::<IpAddr>().ok().map(canonical)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_says() {
        let trusted = TrustedProxies::new(["10.0.0.0/8"]);
        let sent = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            trusted.client_ip(ip("203.0.113.9"), &sent),
            ip("203.0.113.9")
        );
        let nobody = TrustedProxies::default();
        assert_eq!(nobody.client_ip(ip("10.0.0.1"), &sent), ip("10.0.0.1"));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = TrustedProxies::new(["10.0.0.0/8", "192.168.0.1"]);
        // The client forged "6.6.6.6"; the edge proxy 10.1.1.1 appended the address it saw.
        let sent = headers(&[
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
            ("x-forwarded-for", "192.168.0.1"),
        ]);
        assert_eq!(trusted.client_ip(ip("10.1.1.1"), &sent), ip("198.51.100.7"));
        let all_trusted = headers(&[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]);
        assert_eq!(
            trusted.client_ip(ip("10.1.1.1"), &all_trusted),
            ip("10.9.9.9")
        );
        let garbled = headers(&[("x-forwarded-for", "6.6.6.6, nonsense")]);
        assert_eq!(trusted.client_ip(ip("10.1.1.1"), &garbled), ip("10.1.1.1"));
        let ported = headers(&[("x-forwarded-for", "[2001:db8::1]:443, 198.51.100.8:5000")]);
        assert_eq!(
            trusted.client_ip(ip("10.1.1.1"), &ported),
            ip("198.51.100.8")
        );
    }

    #[test]
    fn forwarded_is_read_when_x_forwarded_for_is_absent() {
        let trusted = TrustedProxies::new(["::1", "127.0.0.1"]);
        let sent = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https, for=127.0.0.1",
        )]);
        assert_eq!(trusted.client_ip(ip("::1"), &sent), ip("2001:db8::7"));
        // A v4-mapped peer is trusted as its IPv4 form.
        assert_eq!(
            trusted.client_ip(ip("::ffff:127.0.0.1"), &sent),
            ip("2001:db8::7")
        );
        assert_eq!(
            trusted.client_ip(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
    }
}
