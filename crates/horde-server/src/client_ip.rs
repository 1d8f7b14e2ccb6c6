//! The client's address behind trusted reverse proxies (`[api] trusted_proxies`), for per-IP
//! rate limits.
//!
//! A request whose socket peer is a trusted proxy is attributed to the nearest address in its
//! `X-Forwarded-For` (or, without it, `Forwarded: for=`) chain that is not itself a trusted
//! proxy, read from the right: the hops a proxy appended are the ones it vouches for, the left
//! end is whatever the client claimed. From any other peer these headers are ignored, so a
//! client cannot choose its own address.

use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// The trusted proxies, parsed from the configuration.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Reads addresses (`10.0.0.1`, `::1`) and CIDRs (`10.0.0.0/8`).
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        entries
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("'{entry}' is not an address or a CIDR"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&address))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut nearest = peer;
        for hop in forwarded_hops(headers).iter().rev() {
            let Some(address) = hop else {
                // A hop that is no address: the chain cannot be followed past it.
                return nearest;
            };
            if !self.trusts(*address) {
                return *address;
            }
            nearest = *address;
        }
        nearest
    }
}

/// The forwarded-for chain, left (client end) to right (nearest proxy); `None` for a hop that
/// is not an address (`unknown`, an obfuscated name, garbage).
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let joined = |name: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    };
    let x_forwarded_for = joined("x-forwarded-for");
    if !x_forwarded_for.trim().is_empty() {
        return x_forwarded_for.split(',').map(parse_hop).collect();
    }
    joined("forwarded")
        .split(',')
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_hop(value))
            })
        })
        .collect()
}

/// An address as proxies write it: `203.0.113.7`, `203.0.113.7:4711`, `"[2001:db8::1]:4711"`.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(address) = text.parse::<IpAddr>() {
        return Some(address);
    }
    if let Some(rest) = text.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let (host, port) = text.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn proxies(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_trusted_proxy_names_the_client_and_anyone_else_is_ignored() {
        let trusted = proxies(&["10.0.0.0/8"]);
        let forwarded = headers(&[("x-forwarded-for", "198.51.100.4")]);
        assert_eq!(
            trusted.client(ip("10.1.2.3"), &forwarded),
            ip("198.51.100.4")
        );
        assert_eq!(
            trusted.client(ip("203.0.113.9"), &forwarded),
            ip("203.0.113.9"),
            "an untrusted peer cannot pick its address"
        );
        assert_eq!(
            trusted.client(ip("10.1.2.3"), &HeaderMap::new()),
            ip("10.1.2.3")
        );
    }

    #[test]
    fn the_chain_is_read_from_the_right_past_every_trusted_hop() {
        let trusted = proxies(&["10.0.0.0/8", "192.0.2.1"]);
        // The client claimed 1.1.1.1; 198.51.100.4 is who reached the first trusted proxy.
        let chain = headers(&[("x-forwarded-for", "1.1.1.1, 198.51.100.4, 192.0.2.1")]);
        assert_eq!(trusted.client(ip("10.0.0.2"), &chain), ip("198.51.100.4"));
        let garbage = headers(&[("x-forwarded-for", "nonsense, 10.0.0.7")]);
        assert_eq!(trusted.client(ip("10.0.0.2"), &garbage), ip("10.0.0.7"));
    }

    #[test]
    fn forwarded_is_read_when_x_forwarded_for_is_absent() {
        let trusted = proxies(&["::1"]);
        let forwarded = headers(&[(
            "forwarded",
            r#"for="[2001:db8::7]:4711";proto=https, for=198.51.100.4:80"#,
        )]);
        assert_eq!(trusted.client(ip("::1"), &forwarded), ip("198.51.100.4"));
        let one = headers(&[("forwarded", r#"for="[2001:db8::7]:4711""#)]);
        assert_eq!(trusted.client(ip("::1"), &one), ip("2001:db8::7"));
    }

    #[test]
    fn entries_that_are_not_addresses_are_refused() {
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.example".into()]).is_err());
        assert!(TrustedProxies::parse(&["127.0.0.1".into(), "fd00::/8".into()]).is_ok());
    }
}
