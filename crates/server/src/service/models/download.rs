//! Guarded model downloads (models.md §4): every hop of a download (the first request and
//! each redirect, which are followed here rather than by the HTTP client) has its scheme and
//! host checked, its host resolved once and every resolved address judged, and the connection
//! pinned to those addresses; the peer of the connection actually made is checked again, so a
//! DNS answer that changes between the check and the connect cannot sneak through.
//!
//! Ambient proxy variables are ignored while guarding (a proxy would resolve names itself);
//! `download_proxy` is always used when set, and the start-up warning says the proxy must then
//! enforce the address policy.

use super::guard::{check_url, is_public, GuardError};
use reqwest::header::{AUTHORIZATION, CONTENT_DISPOSITION, LOCATION};
use reqwest::{Response, Url};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

const MAX_REDIRECTS: usize = 10;

/// How downloads may reach the network (from the config).
#[derive(Debug, Clone, Default)]
pub struct DownloadPolicy {
    pub allow_private: bool,
    pub proxy: Option<String>,
}

impl DownloadPolicy {
    pub fn from_config(config: &crate::config::Config) -> Self {
        use serde_json::Value;
        Self {
            allow_private: config
                .get("allow_private_download_urls")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            proxy: config
                .get("download_proxy")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
        }
    }
}

/// Why a download failed. `kind` is the class name reported as `error_type`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DownloadError {
    pub kind: &'static str,
    pub message: String,
}

impl DownloadError {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn cancelled() -> Self {
        Self::new("CancelledError", "Download cancelled")
    }

    pub fn is_cancelled(&self) -> bool {
        self.kind == "CancelledError"
    }
}

impl From<GuardError> for DownloadError {
    fn from(err: GuardError) -> Self {
        let kind = match err {
            GuardError::Scheme(_) | GuardError::Invalid(_) => "ValueError",
            GuardError::Private(_) => "UnsafeDownloadURLError",
            GuardError::Resolve(..) => "ConnectionError",
        };
        Self::new(kind, err.to_string())
    }
}

/// Progress of one download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub bytes: u64,
    pub total: Option<u64>,
}

/// A finished download.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub path: PathBuf,
    pub bytes: u64,
    pub final_url: String,
}

fn client(
    policy: &DownloadPolicy,
    pin: Option<(&str, &[SocketAddr])>,
) -> Result<reqwest::Client, DownloadError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("atelier/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(std::time::Duration::from_secs(30));
    if let Some(proxy) = &policy.proxy {
        let proxy = reqwest::Proxy::all(proxy).map_err(|e| {
            DownloadError::new("ValueError", format!("Invalid download_proxy: {e}"))
        })?;
        builder = builder.proxy(proxy);
    } else if !policy.allow_private {
        builder = builder.no_proxy();
    }
    if let Some((host, addrs)) = pin {
        builder = builder.resolve_to_addrs(host, addrs);
    }
    builder
        .build()
        .map_err(|e| DownloadError::new("ConnectionError", e.to_string()))
}

/// Resolves `host` and refuses it unless every address is public.
async fn resolve_public(url: &Url, host: &str) -> Result<Vec<SocketAddr>, GuardError> {
    let port = url.port_or_known_default().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| GuardError::Resolve(host.to_owned(), e.to_string()))?
        .collect();
    if addrs.is_empty() || addrs.iter().any(|a| !is_public(a.ip())) {
        return Err(GuardError::Private(host.to_owned()));
    }
    Ok(addrs)
}

/// Sends a GET for `url`, following redirects itself and checking every hop. Returns the
/// final (non-redirect) response.
pub async fn open(
    policy: &DownloadPolicy,
    url: &str,
    access_token: Option<&str>,
    range_from: u64,
) -> Result<Response, DownloadError> {
    let (mut current, mut host) = check_url(url)?;
    let first_host = host.clone();
    for _ in 0..=MAX_REDIRECTS {
        let guarded = !policy.allow_private && policy.proxy.is_none();
        let pinned = if guarded {
            Some(resolve_public(&current, &host).await?)
        } else if !policy.allow_private {
            // Behind download_proxy the proxy resolves names; the literal host is still judged.
            if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
                if !is_public(ip) {
                    return Err(GuardError::Private(host.clone()).into());
                }
            }
            None
        } else {
            None
        };
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let client = client(policy, pinned.as_deref().map(|a| (bare.as_str(), a)))?;
        let mut request = client.get(current.clone());
        // Credentials go to the host they were given for, never to a redirect target.
        if let Some(token) = access_token.filter(|_| host == first_host) {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if range_from > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={range_from}-"));
        }
        let response = request
            .send()
            .await
            .map_err(|e| DownloadError::new("ConnectionError", e.to_string()))?;
        if guarded {
            // The connected peer, not just the DNS answer (defeats rebinding).
            match response.remote_addr() {
                Some(peer) if is_public(peer.ip()) => {}
                _ => return Err(GuardError::Private(host.clone()).into()),
            }
        }
        if response.status().is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| DownloadError::new("HTTPError", "Redirect without a Location"))?;
            let next = current
                .join(location)
                .map_err(|_| GuardError::Invalid(location.to_owned()))?;
            (current, host) = check_url(next.as_str())?;
            continue;
        }
        if !response.status().is_success() {
            return Err(DownloadError::new(
                "HTTPError",
                format!("{} {}", response.status(), current),
            ));
        }
        return Ok(response);
    }
    Err(DownloadError::new("HTTPError", "Too many redirects"))
}

/// The file name a response should be saved under: `Content-Disposition`, else the last path
/// segment of the final URL; never anything that could leave the destination folder.
pub fn file_name_for(response: &Response) -> String {
    let from_header = response
        .headers()
        .get(CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(';').find_map(|part| {
                let part = part.trim();
                part.strip_prefix("filename=")
                    .map(|n| n.trim_matches('"').to_owned())
            })
        });
    let from_url = response
        .url()
        .path_segments()
        .and_then(|mut s| s.next_back().map(str::to_owned))
        .map(|s| percent_decode(&s));
    let name = from_header
        .or(from_url)
        .unwrap_or_default()
        .replace(['/', '\\', '\0'], "_");
    let name = name.trim().trim_start_matches('.').to_owned();
    if name.is_empty() {
        "model.safetensors".to_owned()
    } else {
        name
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let pair = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = pair.and_then(|p| u8::from_str_radix(p, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Downloads `url` into `dest_dir` (file name from the response), reporting progress and
/// stopping when `cancel` turns true.
pub async fn download(
    policy: &DownloadPolicy,
    url: &str,
    access_token: Option<&str>,
    dest_dir: &Path,
    progress: &mut (dyn FnMut(Progress) + Send),
    cancel: &mut watch::Receiver<bool>,
) -> Result<Downloaded, DownloadError> {
    let io = |e: std::io::Error| DownloadError::new("OSError", e.to_string());
    let mut response = tokio::select! {
        r = open(policy, url, access_token, 0) => r?,
        _ = cancel.wait_for(|c| *c) => return Err(DownloadError::cancelled()),
    };
    let total = response.content_length();
    let final_url = response.url().to_string();
    let path = dest_dir.join(file_name_for(&response));
    tokio::fs::create_dir_all(dest_dir).await.map_err(io)?;
    let mut file = tokio::fs::File::create(&path).await.map_err(io)?;
    let mut bytes = 0u64;
    progress(Progress { bytes, total });
    loop {
        let chunk = tokio::select! {
            c = response.chunk() => c.map_err(|e| DownloadError::new("ConnectionError", e.to_string()))?,
            _ = cancel.wait_for(|c| *c) => return Err(DownloadError::cancelled()),
        };
        let Some(chunk) = chunk else { break };
        file.write_all(&chunk).await.map_err(io)?;
        bytes += chunk.len() as u64;
        progress(Progress { bytes, total });
    }
    file.flush().await.map_err(io)?;
    if let Some(total) = total {
        if bytes != total {
            return Err(DownloadError::new(
                "ContentLengthError",
                format!("Download ended after {bytes} of {total} bytes"),
            ));
        }
    }
    Ok(Downloaded {
        path,
        bytes,
        final_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_hosts_are_refused_before_connecting() {
        let policy = DownloadPolicy::default();
        for url in [
            "http://127.0.0.1:9/x.safetensors",
            "http://10.0.0.1/x.safetensors",
            "http://169.254.169.254/latest/meta-data",
            "http://0x7f.1/x",
            "http://[::1]/x",
            "http://localhost:9/x",
        ] {
            let err = open(&policy, url, None, 0).await.expect_err(url);
            assert_eq!(err.kind, "UnsafeDownloadURLError", "{url}: {err}");
            assert!(
                err.message.starts_with("Refusing to download from '"),
                "{err}"
            );
        }
        let err = open(&policy, "ftp://example.com/x", None, 0)
            .await
            .expect_err("ftp");
        assert_eq!(
            err.message,
            "Unsupported URL scheme 'ftp'. Only http and https are allowed."
        );
        // A proxy resolves names itself, but literal private addresses are still refused.
        let proxied = DownloadPolicy {
            allow_private: false,
            proxy: Some("http://proxy.invalid:3128".into()),
        };
        let err = open(&proxied, "http://192.168.1.1/x", None, 0)
            .await
            .expect_err("proxied");
        assert_eq!(err.kind, "UnsafeDownloadURLError");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("my%20model.safetensors"),
            "my model.safetensors"
        );
        assert_eq!(percent_decode("bad%2"), "bad%2");
        assert_eq!(percent_decode("x%zz"), "x%zz");
    }
}
