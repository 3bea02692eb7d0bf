//! The client's address behind load balancers: `X-Forwarded-For` from
//! `gateway.trusted_proxies` and the PROXY protocol (v1 text, v2 binary).
//!
//! Owns: which hop of a forwarded chain is the client, and reading a PROXY
//! header off a fresh connection. Per-IP handshake limits, the auth webhook's
//! `ip` and the session's log span all use the address decided here.
//!
//! `X-Forwarded-For` is honoured only when the TCP peer is a trusted proxy, and
//! then read from the right: each proxy appends the address it saw, so the
//! rightmost entry that is not itself a trusted proxy is the client, and
//! anything left of it was written by the client and may be forged. An entry
//! that is not an address ends the walk at the last trusted hop.
//!
//! A PROXY header is read only from trusted proxies, and only when
//! `gateway.proxy_protocol` is on; such a connection without a valid header
//! within [`PROXY_HEADER_TIMEOUT`] is closed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::http::HeaderMap;
use ppp::{HeaderResult, PartialResult, v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::pattern::{Cidr, Pattern};

/// Time a trusted proxy has to send its PROXY header.
pub(crate) const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest PROXY header read: v1 is at most 107 bytes; v2 carries a 16-byte
/// preamble, the addresses and TLVs, which load balancers keep well under this.
const MAX_PROXY_HEADER: usize = 1024;

/// Whether `ip` is one of `trusted`.
pub(crate) fn is_trusted(ip: IpAddr, trusted: &[Pattern<Cidr>]) -> bool {
    trusted
        .iter()
        .filter_map(Pattern::get)
        .any(|cidr| cidr.contains(ip))
}

/// The client address of a request that arrived from `peer`.
pub(crate) fn client_addr(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[Pattern<Cidr>],
) -> SocketAddr {
    if trusted.is_empty() || !is_trusted(peer.ip(), trusted) {
        return peer;
    }
    // Every X-Forwarded-For header in order, then each list left to right:
    // walked from the right end.
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    let mut client = None;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = Some(ip);
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    // A forwarded address has no port we could know.
    client.map_or(peer, |ip| SocketAddr::new(ip, 0))
}

/// One `X-Forwarded-For` entry: an address, with or without a port
/// (`203.0.113.7`, `203.0.113.7:4711`, `2001:db8::1`, `[2001:db8::1]:4711`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// Why a PROXY header was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ProxyHeaderError {
    /// Not a PROXY header, or one over [`MAX_PROXY_HEADER`] bytes.
    Invalid,
    /// The connection ended first.
    Closed,
    /// Not complete within [`PROXY_HEADER_TIMEOUT`].
    Timeout,
}

/// Reads the PROXY header at the start of `stream` and returns the client
/// address it names; a `LOCAL` / `UNKNOWN` header (a health check by the proxy
/// itself) names the proxy: `peer`. Only the header's bytes are consumed.
///
/// # Errors
/// [`ProxyHeaderError`]; the caller closes the connection.
pub(crate) async fn read_proxy_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, ProxyHeaderError> {
    tokio::time::timeout(PROXY_HEADER_TIMEOUT, read_header(stream, peer))
        .await
        .map_err(|_| ProxyHeaderError::Timeout)?
}

async fn read_header(
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Result<SocketAddr, ProxyHeaderError> {
    let mut buf = vec![0u8; MAX_PROXY_HEADER];
    loop {
        // Peek so the bytes behind the header stay in the socket for HTTP.
        let n = stream
            .peek(&mut buf)
            .await
            .map_err(|_| ProxyHeaderError::Closed)?;
        if n == 0 {
            return Err(ProxyHeaderError::Closed);
        }
        let parsed = HeaderResult::parse(&buf[..n]);
        if parsed.is_incomplete() {
            if n == MAX_PROXY_HEADER {
                return Err(ProxyHeaderError::Invalid);
            }
            // Peek returns at once while any bytes are queued: poll for more.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let (len, client) = match parsed {
            HeaderResult::V1(Ok(h)) => (h.header.len(), v1_source(&h.addresses)),
            HeaderResult::V2(Ok(h)) => (h.len(), v2_source(&h)),
            HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => {
                return Err(ProxyHeaderError::Invalid);
            }
        };
        let mut consumed = vec![0u8; len];
        stream
            .read_exact(&mut consumed)
            .await
            .map_err(|_| ProxyHeaderError::Closed)?;
        return Ok(client.unwrap_or(peer));
    }
}

fn v1_source(a: &v1::Addresses) -> Option<SocketAddr> {
    match a {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    }
}

fn v2_source(h: &v2::Header<'_>) -> Option<SocketAddr> {
    if h.command == v2::Command::Local {
        return None;
    }
    match h.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> Vec<Pattern<Cidr>> {
        list.iter().map(|s| Pattern::from(*s)).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().expect("header value"));
        }
        h
    }

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().expect("ip"), 40000)
    }

    #[test]
    fn forwarded_for_is_read_from_trusted_peers_only() {
        let t = trusted(&["10.0.0.0/8", "192.0.2.1"]);
        let h = xff(&["198.51.100.7"]);
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_addr(peer("203.0.113.9"), &h, &t),
            peer("203.0.113.9")
        );
        // Without trusted proxies nothing is read.
        assert_eq!(client_addr(peer("10.1.1.1"), &h, &[]), peer("10.1.1.1"));
        assert_eq!(
            client_addr(peer("10.1.1.1"), &h, &t).ip(),
            "198.51.100.7".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let t = trusted(&["10.0.0.0/8"]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // The client forged the left entry; the proxy chain appended the rest.
        let h = xff(&["1.2.3.4, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(
            client_addr(peer("10.0.0.3"), &h, &t).ip(),
            ip("198.51.100.7")
        );
        // Ports and brackets are accepted.
        let h = xff(&["[2001:db8::5]:4711, 10.0.0.9:80"]);
        assert_eq!(
            client_addr(peer("10.0.0.3"), &h, &t).ip(),
            ip("2001:db8::5")
        );
        // Garbage stops the walk at the last trusted hop.
        let h = xff(&["198.51.100.7, not-an-ip, 10.0.0.9"]);
        assert_eq!(client_addr(peer("10.0.0.3"), &h, &t).ip(), ip("10.0.0.9"));
        // All hops trusted: the leftmost.
        let h = xff(&["10.0.0.8, 10.0.0.9"]);
        assert_eq!(client_addr(peer("10.0.0.3"), &h, &t).ip(), ip("10.0.0.8"));
        // No header: the peer.
        assert_eq!(
            client_addr(peer("10.0.0.3"), &HeaderMap::new(), &t),
            peer("10.0.0.3")
        );
    }

    async fn pair(bytes: &[u8]) -> (TcpStream, SocketAddr) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        client.write_all(bytes).await.expect("write");
        // Keep the client open for the test's duration.
        tokio::spawn(async move {
            let mut sink = [0u8; 64];
            let _ = client.read(&mut sink).await;
        });
        (server, peer)
    }

    #[tokio::test]
    async fn proxy_headers_v1_and_v2_name_the_client_and_leave_the_rest() {
        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 198, 51, 100, 7, 10, 0, 0, 1, 0x12, 0x67, 0, 80,
        ]);
        for (header, want) in [
            (
                b"PROXY TCP4 198.51.100.7 10.0.0.1 4711 80\r\n".to_vec(),
                "198.51.100.7:4711",
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 4711 80\r\n".to_vec(),
                "[2001:db8::7]:4711",
            ),
            (v2, "198.51.100.7:4711"),
        ] {
            let mut bytes = header.clone();
            bytes.extend_from_slice(b"GET /");
            let (mut s, peer) = pair(&bytes).await;
            let got = read_proxy_header(&mut s, peer).await.expect("header");
            assert_eq!(got, want.parse::<SocketAddr>().expect("addr"));
            let mut rest = [0u8; 5];
            s.read_exact(&mut rest).await.expect("rest");
            assert_eq!(&rest, b"GET /");
        }
        // UNKNOWN names the proxy itself.
        let (mut s, peer) = pair(b"PROXY UNKNOWN\r\nGET /").await;
        assert_eq!(read_proxy_header(&mut s, peer).await, Ok(peer));
        // Not a PROXY header.
        let (mut s, peer) = pair(b"GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(
            read_proxy_header(&mut s, peer).await,
            Err(ProxyHeaderError::Invalid)
        );
    }
}
