//! Who may open a connection at all, decided before any negotiation or
//! upgrade: [`ConnectionLimits`] (a global and a per-IP ceiling on live
//! connections, the client's address read through [`TrustedProxy`]s) and
//! the allowed browser origins (CORS on the HTTP requests, the `Origin`
//! check on WebSocket upgrades).
//!
//! Browsers enforce CORS on `fetch` and `XMLHttpRequest`, but not on
//! WebSockets: any page may open a WebSocket to any server, with the user's
//! cookies. Refusing upgrades whose `Origin` is neither this server's own nor
//! an allowed one closes that cross-site WebSocket hijacking hole; clients
//! outside browsers send no `Origin` and are not affected.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::Arc,
};

use axum::{
    extract::ConnectInfo,
    http::{HeaderName, HeaderValue, Method, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use parking_lot::Mutex;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

/// Ceilings on live connections, shared by the endpoints given the same
/// value ([`HubEndpoint::connection_limits`](crate::HubEndpoint::connection_limits)).
///
/// A connection counts from its negotiation (or, without one, from the
/// moment its transport is accepted) until it ends or its negotiation
/// expires unused. Over the per-IP ceiling a request is answered `429 Too
/// Many Requests`, over the global one `503 Service Unavailable` — at
/// negotiate, or before a transport is accepted (before a WebSocket upgrade)
/// for clients that skip negotiation, so a refused client costs no
/// connection state. The peer address comes from
/// axum's `ConnectInfo<SocketAddr>` ([`serve`](crate::serve) provides it;
/// with `axum::serve`, use `into_make_service_with_connect_info`); without it
/// only the global ceiling applies.
///
/// Behind a reverse proxy every connection comes from the proxy's address,
/// and a per-IP ceiling would hold all clients together: name the proxies
/// with [`trusted_proxies`](Self::trusted_proxies), and the client's address
/// is read from the `Forwarded` (RFC 7239) or `X-Forwarded-For` header
/// instead.
#[derive(Clone, Debug, Default)]
pub struct ConnectionLimits {
    max_total: Option<usize>,
    max_per_ip: Option<usize>,
    proxies: Arc<[TrustedProxy]>,
    live: Arc<Mutex<Live>>,
}

#[derive(Debug, Default)]
struct Live {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Full,
    TooManyFromAddress,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The server has reached its connection limit.",
            )
                .into_response(),
            Refused::TooManyFromAddress => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many connections from this address.",
            )
                .into_response(),
        }
    }
}

impl ConnectionLimits {
    /// No ceilings (add them with the methods below).
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `max` live connections in all.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_total = Some(max);
        self
    }

    /// At most `max` live connections from one IP address.
    pub fn max_connections_per_ip(mut self, max: usize) -> Self {
        self.max_per_ip = Some(max);
        self
    }

    /// Peers whose forwarding header names the client: the `for` addresses
    /// of RFC 7239's `Forwarded` where the request has that header, else
    /// `X-Forwarded-For`. The list is read from its end: each address a
    /// trusted peer (or trusted proxy before it) reports replaces the
    /// peer's own, until one is not trusted — as ASP.NET Core's
    /// forwarded-headers middleware does with its known proxies. A request
    /// from any other peer is counted under the peer's address whatever its
    /// headers say: anyone can write them.
    pub fn trusted_proxies(mut self, proxies: impl IntoIterator<Item = TrustedProxy>) -> Self {
        self.proxies = proxies.into_iter().collect();
        self
    }

    /// The live connections counted now.
    pub fn connections(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Live> {
        self.live.lock()
    }

    fn full(&self, live: &Live, ip: Option<IpAddr>) -> Option<Refused> {
        if self.max_total.is_some_and(|max| live.total >= max) {
            return Some(Refused::Full);
        }
        let from_ip = ip.and_then(|ip| live.per_ip.get(&ip)).copied();
        if self
            .max_per_ip
            .is_some_and(|max| from_ip.unwrap_or(0) >= max)
        {
            return Some(Refused::TooManyFromAddress);
        }
        None
    }

    /// Admits a connection from the request's address: it counts until the
    /// returned slot is dropped.
    pub(crate) fn admit(&self, parts: &Parts) -> Result<Slot, Refused> {
        let ip = self.client_ip(parts);
        let mut live = self.lock();
        if let Some(refused) = self.full(&live, ip) {
            return Err(refused);
        }
        live.total += 1;
        if let Some(ip) = ip {
            *live.per_ip.entry(ip).or_default() += 1;
        }
        Ok(Slot {
            limits: self.clone(),
            ip,
        })
    }
}

/// One admitted connection's place under the [`ConnectionLimits`].
#[derive(Debug)]
pub(crate) struct Slot {
    limits: ConnectionLimits,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut live = self.limits.lock();
        live.total = live.total.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(count) = live.per_ip.get_mut(&ip)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                live.per_ip.remove(&ip);
            }
        }
    }
}

impl ConnectionLimits {
    /// The client's address: the peer's, or what trusted proxies report.
    fn client_ip(&self, parts: &Parts) -> Option<IpAddr> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(address)| address.ip().to_canonical())?;
        if self.proxies.is_empty() {
            return Some(peer);
        }
        let trusted = |ip: IpAddr| self.proxies.iter().any(|proxy| proxy.contains(ip));
        // Every header of one kind, in order, as one list of hops: the
        // standard `Forwarded` where a proxy sent it, else X-Forwarded-For.
        // Never both: a proxy that writes one does not update the other.
        let values = |name| {
            parts
                .headers
                .get_all(name)
                .into_iter()
                .filter_map(|value| value.to_str().ok())
        };
        let hops: Vec<Option<IpAddr>> = if parts.headers.contains_key(header::FORWARDED) {
            values(header::FORWARDED)
                .flat_map(|value| split_unquoted(value, ','))
                .map(forwarded_for)
                .collect()
        } else {
            values(X_FORWARDED_FOR)
                .flat_map(|value| value.split(','))
                .map(|hop| forwarded_address(hop.trim()))
                .collect()
        };
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            if !trusted(client) {
                break;
            }
            match hop {
                Some(ip) => client = ip,
                // A hop that is not an address ends the trust (what came
                // before it cannot be checked).
                None => break,
            }
        }
        Some(client)
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The address in the `for` parameter of one element of an RFC 7239
/// `Forwarded` header (`for=192.0.2.60;proto=https`,
/// `for="[2001:db8::17]:4711"`); `None` where there is none, or where the
/// proxy hid it (`for=unknown`, `for=_hidden`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = split_unquoted(element, ';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let value = value
        .strip_prefix('"')
        .and_then(|value| value.strip_suffix('"'))
        .unwrap_or(value);
    forwarded_address(value)
}

/// `text` split at every `separator` outside a quoted string (a quoted
/// `for="[v6]:port"` may hold what would otherwise separate).
fn split_unquoted(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let (mut quoted, mut escaped) = (false, false);
    text.split(move |c: char| {
        if escaped {
            escaped = false;
            return false;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c => return c == separator && !quoted,
        }
        false
    })
}

/// An address as forwarding headers write it: `a.b.c.d`, an IPv6 address, either
/// with a port (`a.b.c.d:p`, `[v6]:p`), or a bracketed IPv6 address.
fn forwarded_address(hop: &str) -> Option<IpAddr> {
    let ip = hop
        .parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            hop.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<IpAddr>()
                .ok()
        })?;
    Some(ip.to_canonical())
}

/// A reverse proxy or load balancer, or a network of them, whose
/// forwarding headers are believed ([`ConnectionLimits::trusted_proxies`]).
/// Parsed from an address (`10.0.0.7`, `::1`) or a network in CIDR
/// notation (`10.0.0.0/8`, `fd00::/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustedProxy(ipnet::IpNet);

/// A [`TrustedProxy`] that could not be parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustedProxyError {
    /// Neither an address nor a network.
    #[error("'{0}' is not an IP address or network (10.0.0.7, 10.0.0.0/8, fd00::/8)")]
    Invalid(String),
}

impl TrustedProxy {
    fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

impl FromStr for TrustedProxy {
    type Err = TrustedProxyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || TrustedProxyError::Invalid(text.to_owned());
        let trimmed = text.trim();
        let network = match trimmed.parse::<IpAddr>() {
            Ok(address) => ipnet::IpNet::from(address.to_canonical()),
            Err(_) => trimmed.parse::<ipnet::IpNet>().map_err(|_| invalid())?,
        };
        // An IPv4-mapped IPv6 network is the IPv4 network it maps, as
        // peers' addresses are compared in their canonical form.
        let network = match network {
            ipnet::IpNet::V6(v6) => match (v6.addr().to_ipv4_mapped(), v6.prefix_len()) {
                (Some(v4), prefix @ 96..) => ipnet::Ipv4Net::new(v4, prefix - 96)
                    .map(ipnet::IpNet::V4)
                    .map_err(|_| invalid())?,
                _ => network,
            },
            ipnet::IpNet::V4(_) => network,
        };
        Ok(TrustedProxy(network))
    }
}

impl std::fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The browser origins allowed besides the server's own.
#[derive(Clone, Debug)]
pub(crate) struct Origins {
    /// `*` was given: every origin.
    any: bool,
    /// Lower-cased, without a trailing slash.
    list: Vec<String>,
    /// Whether cross-origin requests may carry credentials (cookies,
    /// `Authorization`): the official JavaScript client sends
    /// `withCredentials` by default.
    pub(crate) credentials: bool,
}

impl Default for Origins {
    fn default() -> Self {
        Origins {
            any: false,
            list: Vec::new(),
            credentials: true,
        }
    }
}

impl Origins {
    /// Whether any origin besides the server's own is allowed.
    pub(crate) fn is_configured(&self) -> bool {
        self.any || !self.list.is_empty()
    }

    pub(crate) fn new<S: AsRef<str>>(origins: impl IntoIterator<Item = S>) -> Self {
        let mut any = false;
        let mut list = Vec::new();
        for origin in origins {
            let origin = origin.as_ref().trim().trim_end_matches('/');
            if origin == "*" {
                any = true;
            } else if !origin.is_empty() {
                list.push(origin.to_ascii_lowercase());
            }
        }
        Origins {
            any,
            list,
            credentials: true,
        }
    }

    fn listed(&self, origin: &str) -> bool {
        self.any
            || self
                .list
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }

    /// Whether a WebSocket upgrade may proceed: no `Origin` (not a
    /// browser), the server's own origin, or an allowed one.
    pub(crate) fn allows_websocket(&self, parts: &Parts) -> bool {
        let Some(origin) = parts.headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        same_origin(origin, parts) || self.listed(origin)
    }

    /// The CORS layer answering preflights and marking responses for the
    /// allowed origins.
    pub(crate) fn cors(&self) -> CorsLayer {
        let origins = if self.any {
            // With credentials, `*` is not allowed by browsers: echo the
            // request's origin instead.
            AllowOrigin::mirror_request()
        } else {
            let values: Vec<HeaderValue> = self
                .list
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect();
            AllowOrigin::list(values)
        };
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers(AllowHeaders::mirror_request())
            .allow_credentials(self.credentials)
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the host the request
/// was sent to.
fn same_origin(origin: &str, parts: &Parts) -> bool {
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    host.is_some_and(|host| host.eq_ignore_ascii_case(authority))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    fn parts(origin: Option<&str>, host: &str, ip: [u8; 4]) -> Parts {
        let mut request = Request::builder().uri("/hub").header(header::HOST, host);
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        let (mut parts, ()) = request.body(()).unwrap_or_default().into_parts();
        parts
            .extensions
            .insert(ConnectInfo(SocketAddr::from((ip, 1000))));
        parts
    }

    #[test]
    fn websocket_origins() {
        let origins = Origins::new(["https://app.example/", " "]);
        let host = "chat.example:8443";
        assert!(origins.allows_websocket(&parts(None, host, [1, 1, 1, 1])));
        assert!(origins.allows_websocket(&parts(
            Some("https://chat.example:8443"),
            host,
            [1, 1, 1, 1]
        )));
        assert!(origins.allows_websocket(&parts(Some("https://APP.example"), host, [1, 1, 1, 1])));
        assert!(!origins.allows_websocket(&parts(
            Some("https://evil.example"),
            host,
            [1, 1, 1, 1]
        )));
        assert!(!origins.allows_websocket(&parts(Some("null"), host, [1, 1, 1, 1])));
        let any = Origins::new(["*"]);
        assert!(any.allows_websocket(&parts(Some("https://evil.example"), host, [1, 1, 1, 1])));
    }

    #[test]
    fn limits_count_slots() {
        let limits = ConnectionLimits::new()
            .max_connections(3)
            .max_connections_per_ip(2);
        let a = parts(None, "h", [1, 1, 1, 1]);
        let b = parts(None, "h", [2, 2, 2, 2]);
        let a1 = limits.admit(&a).expect("first");
        let a2 = limits.admit(&a).expect("second");
        assert_eq!(limits.admit(&a).err(), Some(Refused::TooManyFromAddress));
        let b1 = limits.admit(&b).expect("other address");
        assert_eq!(limits.admit(&b).err(), Some(Refused::Full));
        drop(a1);
        assert_eq!(limits.connections(), 2);
        let a3 = limits.admit(&a).expect("a place freed up");
        drop((a2, a3, b1));
        assert_eq!(limits.connections(), 0);
    }

    fn forwarded(peer: [u8; 4], headers: &[&str]) -> Parts {
        with_headers(peer, "x-forwarded-for", headers)
    }

    fn with_headers(peer: [u8; 4], name: &'static str, headers: &[&str]) -> Parts {
        let mut parts = parts(None, "h", peer);
        for value in headers {
            if let Ok(value) = HeaderValue::from_str(value) {
                parts.headers.append(name, value);
            }
        }
        parts
    }

    #[test]
    fn rfc7239_forwarded_names_the_client() -> Result<(), TrustedProxyError> {
        let limits = ConnectionLimits::new().trusted_proxies(["10.0.0.0/8".parse()?]);
        let ip =
            |peer, headers: &[&str]| limits.client_ip(&with_headers(peer, "forwarded", headers));
        let v4 = |a, b, c, d| Some(IpAddr::from([a, b, c, d]));
        assert_eq!(ip([10, 0, 0, 1], &["for=7.7.7.7"]), v4(7, 7, 7, 7));
        // Other parameters, any case, quotes, ports, and a trusted hop.
        assert_eq!(
            ip(
                [10, 0, 0, 1],
                &["For=\"7.7.7.7:4711\";proto=https;by=10.0.0.1, for=10.2.2.2"]
            ),
            v4(7, 7, 7, 7)
        );
        assert_eq!(
            ip([10, 0, 0, 1], &["proto=http;for=\"[2001:db8::17]:4711\""]),
            Some(IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x17]))
        );
        // Several headers are one list; the untrusted hop ends the walk.
        assert_eq!(
            ip(
                [10, 0, 0, 1],
                &["for=1.1.1.1", "for=8.8.8.8", "for=10.3.3.3"]
            ),
            v4(8, 8, 8, 8)
        );
        // A hidden or missing address leaves the nearest known one.
        assert_eq!(ip([10, 0, 0, 1], &["for=_hidden"]), v4(10, 0, 0, 1));
        assert_eq!(ip([10, 0, 0, 1], &["for=unknown"]), v4(10, 0, 0, 1));
        assert_eq!(ip([10, 0, 0, 1], &["proto=https"]), v4(10, 0, 0, 1));
        // A comma inside quotes does not split an element.
        assert_eq!(
            ip([10, 0, 0, 1], &["for=7.7.7.7;ext=\"a,b\""]),
            v4(7, 7, 7, 7)
        );
        // `Forwarded` wins over X-Forwarded-For when both are present.
        let mut both = with_headers([10, 0, 0, 1], "forwarded", &["for=7.7.7.7"]);
        both.headers
            .append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        assert_eq!(limits.client_ip(&both), v4(7, 7, 7, 7));
        // From an untrusted peer the header is ignored.
        assert_eq!(ip([8, 8, 8, 8], &["for=7.7.7.7"]), v4(8, 8, 8, 8));
        Ok(())
    }

    #[test]
    fn trusted_proxies_name_the_client() -> Result<(), TrustedProxyError> {
        let limits = ConnectionLimits::new()
            .trusted_proxies(["10.0.0.0/8".parse()?, "192.168.1.1".parse()?]);
        let ip = |peer, headers: &[&str]| limits.client_ip(&forwarded(peer, headers));
        let client = |a, b, c, d| Some(IpAddr::from([a, b, c, d]));
        // Through one proxy, and through two (the nearer trusted too).
        assert_eq!(ip([10, 1, 2, 3], &["7.7.7.7"]), client(7, 7, 7, 7));
        assert_eq!(
            ip([10, 1, 2, 3], &["7.7.7.7, 192.168.1.1"]),
            client(7, 7, 7, 7)
        );
        // Several headers are one list; ports and IPv4-mapped IPv6 are read.
        assert_eq!(
            ip([10, 1, 2, 3], &["7.7.7.7:5000", "10.9.9.9"]),
            client(7, 7, 7, 7)
        );
        assert_eq!(ip([10, 1, 2, 3], &["::ffff:7.7.7.7"]), client(7, 7, 7, 7));
        // A spoofed entry before an untrusted hop is not believed.
        assert_eq!(ip([10, 1, 2, 3], &["1.1.1.1, 8.8.8.8"]), client(8, 8, 8, 8));
        // An untrusted peer is its own address, whatever it writes.
        assert_eq!(ip([8, 8, 8, 8], &["7.7.7.7"]), client(8, 8, 8, 8));
        // No header, or garbage: the proxy's address.
        assert_eq!(ip([10, 1, 2, 3], &[]), client(10, 1, 2, 3));
        assert_eq!(ip([10, 1, 2, 3], &["unknown"]), client(10, 1, 2, 3));
        // Without trusted proxies the header is ignored.
        let plain = ConnectionLimits::new();
        assert_eq!(
            plain.client_ip(&forwarded([10, 1, 2, 3], &["7.7.7.7"])),
            client(10, 1, 2, 3)
        );
        Ok(())
    }

    #[test]
    fn trusted_proxy_parsing() {
        for good in [
            "10.0.0.7",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "::1",
            "fd00::/8",
            " 10.1.0.0/16 ",
        ] {
            assert!(good.parse::<TrustedProxy>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "10.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/x",
            "host.example",
        ] {
            assert!(bad.parse::<TrustedProxy>().is_err(), "{bad}");
        }
        let Ok(any) = "0.0.0.0/0".parse::<TrustedProxy>() else {
            panic!("0.0.0.0/0 parses");
        };
        assert!(any.contains(IpAddr::from([1, 2, 3, 4])));
        assert!(!any.contains("::2".parse().unwrap_or(IpAddr::from([0; 16]))));
        // An IPv4-mapped network is the IPv4 network; peers compare canonically.
        let Ok(mapped) = "::ffff:10.0.0.0/104".parse::<TrustedProxy>() else {
            panic!("::ffff:10.0.0.0/104 parses");
        };
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.contains(IpAddr::from([10, 9, 8, 7])));
        assert!(mapped.contains("::ffff:10.9.8.7".parse().unwrap_or(IpAddr::from([0; 16]))));
        assert!(!mapped.contains(IpAddr::from([11, 0, 0, 1])));
    }
}
