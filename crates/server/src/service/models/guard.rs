//! The download guard's address policy (models.md §4): which URLs and addresses model
//! downloads may reach when `allow_private_download_urls` is false.
//!
//! Only globally routable unicast addresses pass. IPv6 forms that carry an IPv4 address
//! (v4-mapped, v4-compatible, NAT64, 6to4, Teredo, ISATAP) are also judged by that address.
//! Host spellings are decoded by the WHATWG URL parser before they get here: legacy numeric
//! IPv4 forms (`0x7f.1`, `017700000001`, `2130706433`) and percent-encoding become the
//! address they mean.

use reqwest::Url;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a URL is refused; the message is what jobs and the CLI report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("Unsupported URL scheme '{0}'. Only http and https are allowed.")]
    Scheme(String),
    #[error("Invalid URL '{0}'")]
    Invalid(String),
    #[error("Refusing to download from '{0}': it resolves to a non-public address. Set `allow_private_download_urls` in invokeai.yaml to permit downloads from loopback and private-network addresses.")]
    Private(String),
    #[error("Cannot resolve '{0}': {1}")]
    Resolve(String, String),
}

/// Parses `url` and checks its scheme and host; returns the URL and its host text.
pub fn check_url(url: &str) -> Result<(Url, String), GuardError> {
    let parsed = Url::parse(url).map_err(|_| GuardError::Invalid(url.to_owned()))?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => return Err(GuardError::Scheme(other.to_owned())),
    }
    let host = parsed
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| GuardError::Invalid(url.to_owned()))?
        .to_owned();
    if parsed.port_or_known_default().is_none() {
        return Err(GuardError::Invalid(url.to_owned()));
    }
    Ok((parsed, host))
}

fn v4_public(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b))
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 192 && b == 0 && c == 2)
        || (a == 192 && b == 88 && c == 99)
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || a >= 224)
}

/// The IPv4 address an IPv6 address carries, for the forms that tunnel or translate one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    // v4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::/96).
    if s[..6] == [0; 6] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(last32);
    }
    // 6to4: 2002:AABB:CCDD::/48.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    // Teredo: 2001:0000::/32, client address obfuscated in the last 32 bits.
    if s[0] == 0x2001 && s[1] == 0 {
        return Some(Ipv4Addr::from(!u32::from(last32)));
    }
    // ISATAP: interface identifier ::0:5efe:a.b.c.d or ::200:5efe:a.b.c.d.
    if (s[4] == 0 || s[4] == 0x0200) && s[5] == 0x5efe {
        return Some(last32);
    }
    None
}

fn v6_public(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Only global unicast (2000::/3) minus documentation, benchmarking and ORCHID ranges.
    let global = (s[0] & 0xe000) == 0x2000
        && !(s[0] == 0x2001 && s[1] == 0x0db8)
        && !(s[0] == 0x2001 && s[1] == 0x0002 && s[2] == 0)
        && !(s[0] == 0x2001 && (s[1] & 0xfff0) == 0x0010);
    let embedded_ok = embedded_v4(ip).is_none_or(v4_public);
    let translated = ip.to_ipv4_mapped().is_some() || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    (global || translated) && embedded_ok
}

/// Whether `ip` is a globally routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_public(v4),
        IpAddr::V6(v6) => v6_public(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().expect("ip"))
    }

    #[test]
    fn only_global_unicast_is_public() {
        for ok in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert!(public(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "198.18.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2002:7f00:0001::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
            "64:ff9b::a00:1",
            "2001:4860:4860::5efe:a00:1",
            "::127.0.0.1",
        ] {
            assert!(!public(bad), "{bad}");
        }
    }

    #[test]
    fn urls_are_decoded_before_judging() {
        for (url, host) in [
            ("http://0x7f.1/m", "127.0.0.1"),
            ("http://017700000001/m", "127.0.0.1"),
            ("http://2130706433/m", "127.0.0.1"),
            ("http://%31%32%37.0.0.1/m", "127.0.0.1"),
            ("https://[::1]:8443/m", "[::1]"),
        ] {
            assert_eq!(check_url(url).expect("valid").1, host, "{url}");
        }
        assert_eq!(
            check_url("ftp://example.com/x").expect_err("scheme"),
            GuardError::Scheme("ftp".into())
        );
        assert!(matches!(
            check_url("file:///etc/passwd"),
            Err(GuardError::Scheme(_))
        ));
        assert!(matches!(
            check_url("http://example.com:99999/"),
            Err(GuardError::Invalid(_))
        ));
        assert!(matches!(
            check_url("http:///nohost"),
            Err(GuardError::Invalid(_)) | Ok(_)
        ));
    }
}
