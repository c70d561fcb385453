//! HTTPS/WSS for `[http]` when `tls_cert`/`tls_key` are set (browsers need a secure page
//! for the microphone anywhere but localhost).
//!
//! The acceptor is built here; [`super::serve`] runs each handshake in the connection's own
//! task with a timeout, so a slow or silent client never holds up the accept loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or has no PEM certificate.
    #[error("[http] tls_cert {}: {message}", path.display())]
    Cert {
        /// Configured path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key file is missing, unreadable or has no PEM private key.
    #[error("[http] tls_key {}: {message}", path.display())]
    Key {
        /// Configured path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (e.g. key does not match the certificate).
    #[error("[http] tls_cert/tls_key: {0}")]
    Config(#[from] rustls::Error),
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::Cert {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".to_string()));
    }
    Ok(certs)
}

/// Loads the certificate chain and key; every failure names the file.
pub fn acceptor(config: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certs(&config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| TlsError::Key {
        path: config.key.clone(),
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // HTTP/1.1 only: browsers run WebSocket over it.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let config = TlsConfig {
            cert: dir.path().join("nope.pem"),
            key: empty.clone(),
        };
        let err = acceptor(&config).err().unwrap().to_string();
        assert!(
            err.contains("tls_cert") && err.contains("nope.pem"),
            "{err}"
        );
        let config = TlsConfig {
            cert: empty.clone(),
            key: empty,
        };
        let err = acceptor(&config).err().unwrap().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
