//! Which network addresses roster may talk to (the SSRF guard).
//!
//! roster calls URLs that API users register. Without a guard, an `apps:write` key could point
//! an app at the cloud metadata service or an internal admin port and read the answers through
//! `test-connection` or the provisioning log. Every address is checked twice: when `base_url` is
//! registered (literal IPs and what the name resolves to then) and when a connection is made
//! (the SCIM client's resolver), because DNS can change after registration.
//!
//! Pure: no IO. The one exception, [`check_url`], resolves the host name.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is refused; `None` from [`forbidden_reason`] means it is a public address.
#[must_use]
pub fn forbidden_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(100, 100, 100, 200) {
        return Some("a cloud metadata address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if ip.is_private() {
        return Some("a private address");
    }
    if ip.is_link_local() {
        return Some("a link-local address");
    }
    if ip.is_unspecified() || a == 0 {
        return Some("an unspecified address");
    }
    if a == 100 && (64..=127).contains(&b) {
        return Some("a shared (carrier-grade NAT) address");
    }
    if a == 192 && b == 0 && c == 0 {
        return Some("an IETF protocol assignment address");
    }
    if (a == 198 && (18..=19).contains(&b))
        || ip.is_documentation()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a >= 240
    {
        return Some("a reserved address");
    }
    None
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_reason(v4).map(|_| "an IPv4-mapped address of a forbidden range");
    }
    let seg = ip.segments();
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        return Some("a cloud metadata address");
    }
    if (seg[0] & 0xfe00) == 0xfc00 {
        return Some("a private (unique local) address");
    }
    if (seg[0] & 0xffc0) == 0xfe80 {
        return Some("a link-local address");
    }
    if ip.is_multicast() {
        return Some("a multicast address");
    }
    // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16) embed an IPv4
    // address that the network may route to; judge the embedded one.
    let low_v4 = || {
        Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        )
    };
    let is_v4_compatible = seg[0..6] == [0, 0, 0, 0, 0, 0];
    let is_nat64 = seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0];
    let embedded = if is_v4_compatible || is_nat64 {
        Some(low_v4())
    } else if seg[0] == 0x2002 {
        Some(Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        ))
    } else {
        None
    };
    if let Some(v4) = embedded {
        return v4_reason(v4).map(|_| "an IPv6 address embedding a forbidden IPv4 address");
    }
    if seg[0] == 0x2001 && seg[1] == 0x0db8 {
        return Some("a documentation address");
    }
    None
}

/// Whether private targets are allowed (`ROSTER_ALLOW_PRIVATE_TARGETS`). A type, not a `bool`,
/// so that call sites read as a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetPolicy {
    PublicOnly,
    AllowPrivate,
}

impl TargetPolicy {
    #[must_use]
    pub fn from_allow_private(allow: bool) -> Self {
        if allow {
            Self::AllowPrivate
        } else {
            Self::PublicOnly
        }
    }

    /// `Err(reason)` when the policy refuses `ip`.
    pub fn check_ip(self, ip: IpAddr) -> Result<(), String> {
        match (self, forbidden_reason(ip)) {
            (Self::PublicOnly, Some(reason)) => Err(format!("{ip} is {reason}")),
            _ => Ok(()),
        }
    }
}

/// Whether plain `http://` may carry an app's credentials to a public host
/// (`ROSTER_ALLOW_INSECURE_HTTP`). Loopback and private hosts are a separate matter: plain http
/// to them is allowed whenever [`TargetPolicy::AllowPrivate`] allows the host at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainHttp {
    /// The default: public hosts only over `https://`.
    Refused,
    /// The operator set `ROSTER_ALLOW_INSECURE_HTTP=true`.
    Allowed,
}

impl PlainHttp {
    #[must_use]
    pub fn from_allow_insecure(allow: bool) -> Self {
        if allow { Self::Allowed } else { Self::Refused }
    }
}

/// Both transport decisions about a URL roster calls: which addresses, and whether plain http.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportPolicy {
    pub targets: TargetPolicy,
    pub plain_http: PlainHttp,
}

/// The reason given when plain http is refused; names the variable that would allow it.
pub const PLAIN_HTTP_REFUSED: &str = "plain http:// would send the app's credentials and \
     people's data unencrypted to a public host: use https://, or set \
     ROSTER_ALLOW_INSECURE_HTTP=true to accept that risk (plain http is allowed without it only \
     to loopback and private hosts, and only with ROSTER_ALLOW_PRIVATE_TARGETS=true)";

/// Whether `host` is one that only [`TargetPolicy::AllowPrivate`] allows: a loopback or
/// private IP literal, `localhost`, or a name whose addresses are all in such ranges. A name
/// that does not resolve now counts as public.
async fn is_private_host(host: &url::Host<&str>, port: u16) -> bool {
    match host {
        url::Host::Ipv4(ip) => forbidden_reason(IpAddr::V4(*ip)).is_some(),
        url::Host::Ipv6(ip) => forbidden_reason(IpAddr::V6(*ip)).is_some(),
        url::Host::Domain(name) => {
            let lower = name.to_ascii_lowercase();
            if lower == "localhost" || lower.ends_with(".localhost") {
                return true;
            }
            let lookup = tokio::time::timeout(
                std::time::Duration::from_secs(3),
                tokio::net::lookup_host((*name, port)),
            )
            .await;
            match lookup {
                Ok(Ok(addrs)) => {
                    let addrs: Vec<_> = addrs.collect();
                    !addrs.is_empty() && addrs.iter().all(|a| forbidden_reason(a.ip()).is_some())
                }
                _ => false,
            }
        }
    }
}

/// `Some(reason)` when `url` is plain http that `policy` refuses: http to a public host
/// without [`PlainHttp::Allowed`]. `https://` and other schemes are not this check's business.
pub async fn plain_http_refusal(url: &url::Url, policy: TransportPolicy) -> Option<&'static str> {
    if url.scheme() != "http" || policy.plain_http == PlainHttp::Allowed {
        return None;
    }
    let Some(host) = url.host() else {
        return Some(PLAIN_HTTP_REFUSED);
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let private_allowed =
        policy.targets == TargetPolicy::AllowPrivate && is_private_host(&host, port).await;
    (!private_allowed).then_some(PLAIN_HTTP_REFUSED)
}

/// [`check_url`], then the transport rule: `https://`, or plain http only where `policy`
/// allows it ([`plain_http_refusal`]).
pub async fn check_target_url(raw: &str, policy: TransportPolicy) -> Result<url::Url, String> {
    let url = check_url(raw, policy.targets).await?;
    match plain_http_refusal(&url, policy).await {
        Some(reason) => Err(reason.to_owned()),
        None => Ok(url),
    }
}

/// Checks a URL someone wants roster to call: http(s), no credentials in it, and a host that is
/// (or resolves only to) allowed addresses. A name that does not resolve now is accepted: the
/// connect-time check still applies when roster calls it.
pub async fn check_url(raw: &str, policy: TargetPolicy) -> Result<url::Url, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` is not http or https", url.scheme()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials must not be part of the URL; use `auth`".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a SCIM base URL has no query or fragment".into());
    }
    let host = url.host().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().unwrap_or(443);
    match host {
        url::Host::Ipv4(ip) => policy.check_ip(IpAddr::V4(ip))?,
        url::Host::Ipv6(ip) => policy.check_ip(IpAddr::V6(ip))?,
        url::Host::Domain(name) => {
            if policy == TargetPolicy::PublicOnly {
                let lower = name.to_ascii_lowercase();
                if lower == "localhost" || lower.ends_with(".localhost") {
                    return Err(format!("{name} is a loopback name"));
                }
                let lookup = tokio::time::timeout(
                    std::time::Duration::from_secs(3),
                    tokio::net::lookup_host((name, port)),
                )
                .await;
                if let Ok(Ok(addrs)) = lookup {
                    for addr in addrs {
                        // The kind of address only: the caller learns nothing of what an
                        // internal name resolves to (no mapping of the network by 422s).
                        if let Some(reason) = forbidden_reason(addr.ip()) {
                            return Err(format!("{name} resolves to {reason}"));
                        }
                    }
                }
            }
        }
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_ranges_are_refused_and_public_ones_allowed() {
        let refused = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "224.0.0.1",
            "255.255.255.255",
        ];
        for ip in refused {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(forbidden_reason(ip).is_some(), "{ip} should be refused");
            assert!(TargetPolicy::PublicOnly.check_ip(ip).is_err());
            assert!(TargetPolicy::AllowPrivate.check_ip(ip).is_ok());
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(forbidden_reason(ip), None, "{ip} should be allowed");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_for_scheme_credentials_and_host() {
        let p = TargetPolicy::PublicOnly;
        assert!(check_url("http://169.254.169.254/latest", p).await.is_err());
        assert!(check_url("http://[::ffff:a9fe:a9fe]/", p).await.is_err());
        assert!(check_url("http://localhost:8080/scim", p).await.is_err());
        assert!(check_url("ftp://example.com/", p).await.is_err());
        assert!(check_url("https://u:p@example.com/", p).await.is_err());
        assert!(check_url("https://93.184.215.14/scim/v2", p).await.is_ok());
        assert!(
            check_url("http://127.0.0.1:9/v2", TargetPolicy::AllowPrivate)
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn plain_http_goes_only_to_private_hosts_unless_the_operator_allows_it() {
        let policy = |targets, plain_http| TransportPolicy {
            targets,
            plain_http,
        };
        let strict = policy(TargetPolicy::PublicOnly, PlainHttp::Refused);
        let dev = policy(TargetPolicy::AllowPrivate, PlainHttp::Refused);
        let insecure = policy(TargetPolicy::PublicOnly, PlainHttp::Allowed);
        // A public host: https always, http only with ROSTER_ALLOW_INSECURE_HTTP.
        assert!(
            check_target_url("https://93.184.215.14/v2", strict)
                .await
                .is_ok()
        );
        for p in [strict, dev] {
            let err = check_target_url("http://93.184.215.14/v2", p)
                .await
                .unwrap_err();
            assert!(err.contains("ROSTER_ALLOW_INSECURE_HTTP"), "{err}");
        }
        assert!(
            check_target_url("http://93.184.215.14/v2", insecure)
                .await
                .is_ok()
        );
        // Loopback and private hosts: plain http wherever they are allowed at all.
        for url in [
            "http://127.0.0.1:9/v2",
            "http://localhost:9/v2",
            "http://10.1.2.3/v2",
        ] {
            assert!(check_target_url(url, dev).await.is_ok(), "{url}");
            assert!(check_target_url(url, strict).await.is_err(), "{url}");
        }
        // A private IP literal over https is still the SSRF guard's refusal.
        let err = check_target_url("https://10.1.2.3/v2", strict)
            .await
            .unwrap_err();
        assert!(err.contains("private"), "{err}");
    }
}
