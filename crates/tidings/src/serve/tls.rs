//! [`TlsConfig`]: a certificate chain and key, loaded from PEM, with ALPN
//! offering `h2` then `http/1.1`.

use std::{fmt, io, path::Path, path::PathBuf, sync::Arc, time::Duration};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, server::TlsStream};

/// TLS settings for [`Serve::tls`](crate::Serve::tls): a certificate chain
/// and its private key. Cheap to clone.
///
/// ALPN offers `h2` and `http/1.1`; TLS 1.2 and 1.3 are accepted, with
/// rustls' safe defaults.
#[derive(Clone)]
pub struct TlsConfig {
    acceptor: TlsAcceptor,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key must never reach a log.
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

/// Why a [`TlsConfig`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The certificate PEM holds no `CERTIFICATE` block, or one is malformed.
    #[error("no valid certificate in the certificate PEM")]
    Certificate,
    /// The key PEM holds no private key (PKCS#8, PKCS#1 or SEC1), or it is
    /// malformed.
    #[error("no valid private key in the key PEM")]
    PrivateKey,
    /// rustls refused the pair (for example, the key does not match the
    /// certificate, or its algorithm is not supported).
    #[error("invalid certificate or key: {0}")]
    Invalid(String),
}

impl TlsConfig {
    /// From a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_pem(cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_slice_iter(cert_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| TlsError::Certificate)?;
        if certs.is_empty() {
            return Err(TlsError::Certificate);
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| TlsError::PrivateKey)?;
        // An explicit provider: the process may link other rustls backends.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsConfig {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// From PEM files: the certificate chain and the private key.
    pub fn from_pem_files(
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let cert_chain = read(cert_chain.as_ref())?;
        let key = read(key.as_ref())?;
        TlsConfig::from_pem(&cert_chain, &key)
    }

    /// The TLS handshake of one accepted connection, bounded in time so a
    /// silent client cannot hold a connection slot.
    pub(super) async fn accept(
        &self,
        stream: TcpStream,
        timeout: Duration,
    ) -> io::Result<TlsStream<TcpStream>> {
        tokio::time::timeout(timeout, self.acceptor.accept(stream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }
}
