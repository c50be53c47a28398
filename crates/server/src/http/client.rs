//! The client behind a request: its address and whether it used HTTPS, honouring
//! `X-Forwarded-For`/`X-Forwarded-Proto` only from trusted proxies (config.md §5.1:
//! `forwarded_allow_ips` when `base_url` is set, otherwise only 127.0.0.1).

use crate::config::Config;
use crate::state::AppState;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    pub addr: Option<IpAddr>,
    pub https: bool,
}

fn trusted(config: &Config, ip: IpAddr) -> bool {
    let list = if config.base_url().is_some() {
        config.forwarded_allow_ips()
    } else {
        "127.0.0.1"
    };
    list.split(',')
        .map(str::trim)
        .any(|entry| entry == "*" || entry.parse::<IpAddr>().is_ok_and(|allowed| allowed == ip))
}

/// Resolves the client from the peer address and, for a trusted peer, the proxy headers: the
/// right-most forwarded address that is not itself a trusted proxy.
pub fn client_info(config: &Config, peer: Option<IpAddr>, headers: &HeaderMap) -> ClientInfo {
    let Some(peer) = peer else {
        return ClientInfo {
            addr: None,
            https: false,
        };
    };
    if !trusted(config, peer) {
        return ClientInfo {
            addr: Some(peer),
            https: false,
        };
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    let addr = forwarded
        .iter()
        .rev()
        .find(|ip| !trusted(config, **ip))
        .or(forwarded.first())
        .copied()
        .unwrap_or(peer);
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    ClientInfo {
        addr: Some(addr),
        https,
    }
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Infallible> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        Ok(client_info(&state.config, peer, &parts.headers))
    }
}
