//! Native TLS on the public listener (`gateway.tls`) and the stream type both
//! plain and TLS connections are served as.
//!
//! Owns: reading the PEM certificate chain and key into a rustls acceptor
//! ([`load`], called by every config apply, so a reload re-reads the files and
//! a renewed certificate serves new connections while old ones keep theirs),
//! and [`ClientStream`], which the listener hands to hyper and the WebSocket
//! upgrade takes back. TLS 1.2 and 1.3 with rustls' safe defaults, ALPN
//! `http/1.1`.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::server::TlsStream;

use crate::config::{ConfigError, ConfigIssue, TlsConfig};

/// The server setup for `tls`, or `None` when TLS is off. Relative paths resolve
/// against `base_dir` (the config file's directory).
///
/// # Errors
/// A [`ConfigError`] naming `gateway.tls.cert_file` / `key_file` when a file
/// cannot be read, holds no certificate or key, or the key does not match.
pub(crate) fn load(
    tls: &TlsConfig,
    base_dir: &Path,
) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let issue = |path: &str, message: String| ConfigError {
        issues: vec![ConfigIssue {
            path: path.to_owned(),
            message,
        }],
    };
    let cert_path = base_dir.join(cert_file);
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| {
            issue(
                "gateway.tls.cert_file",
                format!(
                    "cannot read a PEM certificate chain from {}: {e}",
                    cert_path.display()
                ),
            )
        })?;
    if chain.is_empty() {
        return Err(issue(
            "gateway.tls.cert_file",
            format!("{} holds no CERTIFICATE block", cert_path.display()),
        ));
    }
    let key_path = base_dir.join(key_file);
    // The error never quotes the file: it is a secret.
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|_| {
        issue(
            "gateway.tls.key_file",
            format!(
                "cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1) from {}",
                key_path.display()
            ),
        )
    })?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| issue("gateway.tls", format!("TLS setup failed: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| {
            issue(
                "gateway.tls.key_file",
                format!("the key does not fit the certificate chain: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// A client connection as served: plain TCP or TLS over it.
#[derive(Debug)]
pub(crate) enum ClientStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The TCP connection underneath.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(cert: &str, key: &str) -> TlsConfig {
        TlsConfig {
            cert_file: Some(cert.to_owned()),
            key_file: Some(key.to_owned()),
        }
    }

    #[test]
    fn tls_files_are_checked_and_errors_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let write =
            |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
        write("a.crt", &a.cert.pem());
        write("a.key", &a.key_pair.serialize_pem());
        write("b.key", &b.key_pair.serialize_pem());
        write("junk", "not pem");
        assert!(
            load(&TlsConfig::default(), dir.path())
                .expect("off")
                .is_none()
        );
        assert!(
            load(&cfg("a.crt", "a.key"), dir.path())
                .expect("ok")
                .is_some()
        );
        let field = |c: TlsConfig| match load(&c, dir.path()) {
            Err(e) => e.issues[0].path.clone(),
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(field(cfg("missing.crt", "a.key")), "gateway.tls.cert_file");
        assert_eq!(field(cfg("junk", "a.key")), "gateway.tls.cert_file");
        assert_eq!(field(cfg("a.crt", "junk")), "gateway.tls.key_file");
        // A key of another certificate.
        assert_eq!(field(cfg("a.crt", "b.key")), "gateway.tls.key_file");
    }
}
