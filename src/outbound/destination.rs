//! Where a subscription may deliver: its URL (http or https) and the destination allowlist.
//!
//! By default a delivery never reaches a private, loopback, link-local, unspecified, multicast,
//! shared (CGNAT), documentation/benchmark or reserved address, nor an IPv6 unique-local address
//! or an IPv4 address wrapped in IPv6 (mapped, compatible, NAT64) that is one of those, so a
//! subscription cannot be used to reach services inside the network callgate runs in.
//! `CALLGATE_OUTBOUND_ALLOW_NETWORKS` lists networks allowed anyway (e.g. `10.1.0.0/16`).
//!
//! The check runs twice: when a subscription is registered (every address its host resolves to
//! must be allowed) and on every connection, against the very address connected to (only allowed
//! addresses are tried), so a name that resolves elsewhere later (DNS rebinding) is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("url: {0}")]
    BadUrl(String),
    #[error(
        "url: {host} resolves to {addr}, a {kind} address; refused (allow its network with CALLGATE_OUTBOUND_ALLOW_NETWORKS)"
    )]
    Refused {
        host: String,
        addr: IpAddr,
        kind: &'static str,
    },
    #[error("url: cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
}

/// A parsed delivery URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub https: bool,
    /// Host name or IP literal (without brackets).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    pub path_and_query: String,
}

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

impl Destination {
    pub fn parse(url: &str) -> Result<Self, DestinationError> {
        let bad = |why: &str| DestinationError::BadUrl(why.to_owned());
        if url.len() > MAX_URL_LEN {
            return Err(bad("longer than 2048 characters"));
        }
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("must start with https:// or http://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("must not carry credentials (user@host)"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        Ok(Destination {
            https,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            host,
        })
    }
}

/// An IP network (`10.0.0.0/8`, `::1/128`; a bare address is a single-address network).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, len: u32, prefix: u8) -> u128 {
            let keep = u32::from(prefix).min(len);
            if keep == 0 { 0 } else { bits >> (len - keep) }
        }
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n).into(), 32, self.prefix)
                    == masked(u32::from(a).into(), 32, self.prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                masked(u128::from(n), 128, self.prefix) == masked(u128::from(a), 128, self.prefix)
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP network (like 10.0.0.0/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0 to {max}"))?,
        };
        Ok(Network {
            addr: canonical(addr),
            prefix,
        })
    }
}

/// Networks allowed although the default refuses them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<Network>);

impl AllowList {
    /// A comma-separated list of networks.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Network::from_str)
            .collect::<Result<Vec<_>, _>>()
            .map(AllowList)
    }

    /// Why `ip` is refused, if it is.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        let kind = forbidden_kind(canonical(ip))?;
        (!self.0.iter().any(|n| n.contains(ip))).then_some(kind)
    }

    /// Every address `dest` resolves to, or the first refused one as an error: the check at
    /// registration.
    pub async fn check_all(&self, dest: &Destination) -> Result<Vec<SocketAddr>, DestinationError> {
        let addrs = resolve(dest).await?;
        for a in &addrs {
            if let Some(kind) = self.refusal(a.ip()) {
                return Err(DestinationError::Refused {
                    host: dest.host.clone(),
                    addr: a.ip(),
                    kind,
                });
            }
        }
        Ok(addrs)
    }

    /// The allowed addresses `dest` resolves to now (at least one, else the refusal): the
    /// check on every connection.
    pub async fn allowed(&self, dest: &Destination) -> Result<Vec<SocketAddr>, DestinationError> {
        let addrs = resolve(dest).await?;
        let mut refused = None;
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|a| match self.refusal(a.ip()) {
                None => true,
                Some(kind) => {
                    refused.get_or_insert((a.ip(), kind));
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), refused) {
            (true, Some((addr, kind))) => Err(DestinationError::Refused {
                host: dest.host.clone(),
                addr,
                kind,
            }),
            _ => Ok(allowed),
        }
    }
}

async fn resolve(dest: &Destination) -> Result<Vec<SocketAddr>, DestinationError> {
    let failed = |reason: String| DestinationError::Resolve {
        host: dest.host.clone(),
        reason,
    };
    if let Ok(ip) = dest.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, dest.port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((dest.host.as_str(), dest.port))
        .await
        .map_err(|e| failed(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(failed("no address".into()));
    }
    Ok(addrs)
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible or NAT64 (64:ff9b::/96) IPv6
/// address, else the address itself.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let v4 = || Ipv4Addr::from((u128::from(v6) & 0xffff_ffff) as u32);
            let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
            let compatible = s[..6] == [0; 6] && u128::from(v6) > 1;
            let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            if mapped || compatible || nat64 {
                IpAddr::V4(v4())
            } else {
                ip
            }
        }
        v4 => v4,
    }
}

/// The kind of address refused by default, if `ip` is one.
fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            if a.is_loopback() {
                Some("loopback")
            } else if a.is_private() {
                Some("private")
            } else if a.is_link_local() {
                Some("link-local")
            } else if a.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if a.is_multicast() {
                Some("multicast")
            } else if a.is_broadcast() || o[0] >= 240 {
                Some("reserved")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("shared (CGNAT)")
            } else if a.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) {
                Some("documentation or benchmark")
            } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
                Some("protocol assignment")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            if a.is_loopback() {
                Some("loopback")
            } else if a.is_unspecified() {
                Some("unspecified")
            } else if a.is_multicast() {
                Some("multicast")
            } else if (first & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if (first & 0xfe00) == 0xfc00 {
                Some("unique-local (private)")
            } else if (first & 0xffc0) == 0xfec0 {
                Some("site-local")
            } else if a.segments()[..2] == [0x2001, 0xdb8] {
                Some("documentation")
            } else if a == Ipv6Addr::UNSPECIFIED {
                Some("unspecified")
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_bad_ones_are_named() {
        let d = Destination::parse("https://crm.example.com/hooks/callgate?x=1").unwrap();
        assert!(d.https);
        assert_eq!((d.host.as_str(), d.port), ("crm.example.com", 443));
        assert_eq!(d.path_and_query, "/hooks/callgate?x=1");
        let d = Destination::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (d.host.as_str(), d.port, d.path_and_query.as_str()),
            ("::1", 8080, "/")
        );
        for bad in [
            "ftp://x/",
            "crm.example.com/hook",
            "https://user:pw@x/",
            "https:///x",
            "",
        ] {
            assert!(
                matches!(Destination::parse(bad), Err(DestinationError::BadUrl(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn internal_addresses_are_refused_unless_their_network_is_allowed() {
        let none = AllowList::default();
        let refused = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ];
        for ip in refused {
            assert!(none.refusal(ip.parse().unwrap()).is_some(), "{ip} allowed");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1:248:1893:25c8:1946",
            "8.8.8.8",
        ] {
            assert_eq!(none.refusal(ip.parse().unwrap()), None, "{ip} refused");
        }
        let allow = AllowList::parse("127.0.0.0/8, fd00::/8,10.1.2.3").unwrap();
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "::ffff:127.0.0.1",
            "fd12::1",
            "10.1.2.3",
        ] {
            assert_eq!(allow.refusal(ip.parse().unwrap()), None, "{ip} refused");
        }
        for ip in ["10.1.2.4", "::1", "192.168.0.1"] {
            assert!(allow.refusal(ip.parse().unwrap()).is_some(), "{ip} allowed");
        }
        for bad in ["10.0.0.0/33", "localhost", "::1/129", "10.0.0/8"] {
            assert!(AllowList::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn resolved_names_are_checked_too() {
        let d = Destination::parse("http://localhost:9/").unwrap();
        let err = AllowList::default().check_all(&d).await.unwrap_err();
        assert!(
            matches!(
                err,
                DestinationError::Refused {
                    kind: "loopback",
                    ..
                }
            ),
            "{err}"
        );
        let allow = AllowList::parse("127.0.0.0/8,::1").unwrap();
        assert!(!allow.allowed(&d).await.unwrap().is_empty());
    }
}
