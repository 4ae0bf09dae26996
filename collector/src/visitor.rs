//! Who the visitor is, without storing who they are: whether it is a known bot, the
//! client's address as the trusted proxies report it, and the visitor id of a site's `privacy.visitorId` mode — the
//! client's own, one derived from the collector's `tally_vid` cookie, or a keyed hash of
//! the day's salt, the site, the address and the user agent. The address is used here and
//! nowhere else: it is never put into an event, a log line or a metric.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use cookie::{Cookie, SameSite};
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use tally_contracts::{Event, RuntimeConfig};
use tally_crds::VisitorIdMode;

use crate::api::ApiError;
use crate::salt::{DaySalt, Salts};

/// The collector's visitor cookie.
pub const COOKIE: &str = "tally_vid";
/// How long the cookie lives: a year.
const COOKIE_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 3600);

/// The proxies whose forwarding headers are believed (`spec.collector.trustedProxies`,
/// parsed by the configuration's loader).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Where a request comes from: its peer, or, when the peer is a trusted proxy, the
    /// nearest address of `X-Forwarded-For` (else `Forwarded`) that is not one, with
    /// `X-Forwarded-Proto` saying whether the client used TLS.
    pub fn client(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Client {
        let peer_ip = peer.map(|p| p.ip());
        let Some(peer_ip) = peer_ip.filter(|ip| self.trusts(*ip)) else {
            return Client {
                ip: peer_ip,
                https: false,
            };
        };
        let forwarded = forwarded_for(headers);
        // Walk from the nearest hop back: the first address not of a trusted proxy is the
        // client; one that does not parse ends the walk (it cannot be believed further).
        let mut ip = peer_ip;
        for hop in forwarded.iter().rev() {
            match hop {
                Some(hop) if self.trusts(ip) => ip = *hop,
                _ => break,
            }
        }
        let https = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
        Client {
            ip: Some(ip),
            https,
        }
    }
}

/// The addresses a request passed through, nearest last: `X-Forwarded-For`, else the
/// `for=` parameters of `Forwarded` (RFC 7239). An entry that is not an address is `None`.
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let xff = values("x-forwarded-for");
    if !xff.is_empty() {
        return xff.iter().map(|hop| parse_hop(hop)).collect();
    }
    values("forwarded")
        .iter()
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_hop(value.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// An address as forwarding headers write it: `203.0.113.7`, `203.0.113.7:4711`,
/// `[2001:db8::1]:4711` or `2001:db8::1`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|ip| ip.parse().ok())
}

/// What the collector knows of a request's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    pub ip: Option<IpAddr>,
    /// The client reached the proxy in front of the collector over TLS.
    pub https: bool,
}

/// Sets the visitor id of every valid event whose site's `privacy.visitorId` is `cookie` or
/// `hash`, replacing the client's. Returns the cookie to set when a cookie site's event
/// came without one. While no salt is available (NATS has not answered since the start), a
/// hash site's event is answered 503, to be retried.
pub fn identify(
    config: &RuntimeConfig,
    salts: &Salts,
    headers: &HeaderMap,
    client: Client,
    items: &mut [Result<Event, ApiError>],
) -> Option<String> {
    // The request's cookie (or a new one) and the salt, read once a site needs them.
    let mut cookie: Option<String> = None;
    let mut issued = false;
    let mut salt = None;
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // Without a socket (in-process tests) there is no address: the unspecified one.
    let ip = client
        .ip
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    for item in items.iter_mut() {
        let Ok(event) = item else { continue };
        let Some(site) = config.site(&event.site_id) else {
            continue;
        };
        match site.privacy.visitor_id {
            VisitorIdMode::Client => {}
            VisitorIdMode::Cookie => {
                let cookie = cookie.get_or_insert_with(|| {
                    cookie_of(headers).unwrap_or_else(|| {
                        issued = true;
                        new_cookie()
                    })
                });
                event.visitor_id = cookie_visitor_id(&event.site_id, cookie);
            }
            VisitorIdMode::Hash => match salt.get_or_insert_with(|| salts.current()) {
                Some(salt) => event.visitor_id = hashed_visitor_id(salt, &event.site_id, ip, agent),
                None => {
                    *item = Err(ApiError::Unavailable(
                        "the visitor-id salt is not available yet; retry shortly".into(),
                    ));
                }
            },
        }
    }
    cookie.filter(|_| issued)
}

/// The request's `User-Agent`, cut to the 1024 bytes an event's `user_agent` may hold.
pub fn user_agent(headers: &HeaderMap) -> Option<&str> {
    let agent = headers.get(header::USER_AGENT)?.to_str().ok()?;
    let mut end = agent.len().min(1024);
    while !agent.is_char_boundary(end) {
        end -= 1;
    }
    Some(&agent[..end]).filter(|a| !a.is_empty())
}

/// Whether the request's `User-Agent` is a known bot or crawler (the `isbot` list).
pub fn is_bot(headers: &HeaderMap) -> bool {
    static BOTS: std::sync::LazyLock<isbot::Bots> = std::sync::LazyLock::new(isbot::Bots::default);
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|agent| BOTS.is_bot(agent))
}

/// The `tally_vid` cookie of a request, if it carries a well-formed one.
pub fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|v| Uuid::try_parse(v).is_ok())
}

/// A fresh cookie value: a random UUID.
pub fn new_cookie() -> String {
    Uuid::new_v4().to_string()
}

/// The `Set-Cookie` header of a new cookie. Over TLS it is `SameSite=None; Secure`, so a
/// browser sends it to a collector on another host than the site's; over plain HTTP (a
/// local stack) browsers refuse `SameSite=None`, so it is `Lax`.
pub fn set_cookie(value: &str, https: bool) -> HeaderValue {
    let cookie = Cookie::build((COOKIE, value.to_owned()))
        .path("/")
        .http_only(true)
        .max_age(cookie::time::Duration::seconds(
            COOKIE_MAX_AGE.as_secs() as i64
        ))
        .same_site(if https { SameSite::None } else { SameSite::Lax })
        .secure(https)
        .build();
    HeaderValue::from_str(&cookie.to_string()).expect("a cookie is a valid header value")
}

/// The visitor id a site stores for a cookie: derived from the cookie and the site, so one
/// browser's ids on two sites cannot be joined.
pub fn cookie_visitor_id(site_id: &str, cookie: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"tally cookie visitor\0")
        .chain_update(site_id.as_bytes())
        .chain_update(b"\0")
        .chain_update(cookie.as_bytes())
        .finalize();
    hex16(&digest)
}

/// The visitor id of `hash` mode: HMAC-SHA-256 keyed with the day's salt over the site,
/// the address and the user agent, its first 16 bytes in hex.
pub fn hashed_visitor_id(salt: &DaySalt, site_id: &str, ip: IpAddr, user_agent: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(salt.key()).expect("HMAC takes any key");
    mac.update(site_id.as_bytes());
    mac.update(b"\0");
    mac.update(ip.to_string().as_bytes());
    mac.update(b"\0");
    mac.update(user_agent.as_bytes());
    hex16(&mac.finalize().into_bytes())
}

fn hex16(bytes: &[u8]) -> String {
    bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn peer(ip: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().unwrap(), 40000))
    }

    #[test]
    fn forwarding_headers_are_believed_only_from_trusted_proxies() {
        let proxies = TrustedProxies(vec![
            "10.0.0.0/8".parse().unwrap(),
            "192.0.2.1/32".parse().unwrap(),
        ]);
        let forwarded = headers(&[
            ("x-forwarded-for", "198.51.100.9, 203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ]);
        // From a stranger: its own address, the headers ignored.
        let direct = proxies.client(peer("198.51.100.1"), &forwarded);
        assert_eq!(direct.ip, Some("198.51.100.1".parse().unwrap()));
        assert!(!direct.https);
        // From a trusted proxy: the nearest address that is not a proxy.
        let proxied = proxies.client(peer("10.1.2.3"), &forwarded);
        assert_eq!(proxied.ip, Some("203.0.113.7".parse().unwrap()));
        assert!(proxied.https);
        // A chain of trusted proxies is walked through; a forged first hop is not reached.
        let chain = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.7, 192.0.2.1")]);
        assert_eq!(
            proxies.client(peer("10.0.0.1"), &chain).ip,
            Some("203.0.113.7".parse().unwrap())
        );
        // RFC 7239 Forwarded, with a port and IPv6.
        let rfc = headers(&[(
            "forwarded",
            r#"for="[2001:db8::1]:4711";proto=https, for=10.9.9.9"#,
        )]);
        assert_eq!(
            proxies.client(peer("10.0.0.1"), &rfc).ip,
            Some("2001:db8::1".parse().unwrap())
        );
        assert!(
            TrustedProxies::default()
                .client(None, &forwarded)
                .ip
                .is_none()
        );
    }

    #[test]
    fn the_cookie_is_read_written_and_derived_per_site() {
        let value = new_cookie();
        let request = headers(&[("cookie", &format!("a=b; {COOKIE}={value}; c=d"))]);
        assert_eq!(cookie_of(&request), Some(value.clone()));
        assert_eq!(
            cookie_of(&headers(&[("cookie", "tally_vid=<script>")])),
            None
        );
        let secure = set_cookie(&value, true).to_str().unwrap().to_owned();
        for part in [
            "HttpOnly",
            "SameSite=None",
            "Secure",
            "Max-Age=31536000",
            "Path=/",
        ] {
            assert!(secure.contains(part), "{secure}");
        }
        let plain = set_cookie(&value, false).to_str().unwrap().to_owned();
        assert!(
            plain.contains("SameSite=Lax") && !plain.contains("Secure"),
            "{plain}"
        );
        let shop = cookie_visitor_id("shop", &value);
        assert_eq!(shop, cookie_visitor_id("shop", &value));
        assert_ne!(shop, cookie_visitor_id("blog", &value));
        assert_eq!(shop.len(), 32);
    }

    #[test]
    fn the_hash_changes_with_the_salt_site_address_and_agent() {
        let (today, tomorrow) = (DaySalt::from_bytes([1; 32]), DaySalt::from_bytes([2; 32]));
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let id = hashed_visitor_id(&today, "shop", ip, "Firefox");
        assert_eq!(id, hashed_visitor_id(&today, "shop", ip, "Firefox"));
        for other in [
            hashed_visitor_id(&tomorrow, "shop", ip, "Firefox"),
            hashed_visitor_id(&today, "blog", ip, "Firefox"),
            hashed_visitor_id(&today, "shop", "203.0.113.8".parse().unwrap(), "Firefox"),
            hashed_visitor_id(&today, "shop", ip, "Chrome"),
        ] {
            assert_ne!(id, other);
        }
        assert!(!id.contains("203"));
    }
}
