//! TLS for `http.tls_listen`, `mqtt.tls_listen` and `mqtt.wss_listen`: rustls (with ring, as
//! reqwest and lettre already use it), one certificate chain and key (`[tls]`), TLS 1.2 and
//! 1.3. The handshake runs in each connection's own task under that listener's first deadline
//! (`http.header_timeout_secs`, `mqtt.connect_timeout_secs`), so a slow one holds up no one.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
pub use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// The acceptor for `settings`' certificate; errors name the key and the file, on one line.
pub fn acceptor(settings: &TlsSettings) -> anyhow::Result<TlsAcceptor> {
    let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
        anyhow::bail!("tls.cert and tls.key must both be set");
    };
    let chain = certificates(cert).with_context(|| format!("tls.cert: {}", cert.display()))?;
    let key = private_key(key).with_context(|| format!("tls.key: {}", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("tls: the protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("tls.key: does not match tls.cert, or is not a key rustls can use")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("cannot read it: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("not PEM certificates: {e}"))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in it");
    Ok(chain)
}

fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| anyhow::anyhow!("no PEM private key read: {e}"))
}
