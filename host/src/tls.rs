//! TLS settings of the admin API, server and client side, on rustls with the
//! aws-lc-rs provider the AWS SDK already uses.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certificates(file: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading PEM certificates from {}", file.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no PEM certificate", file.display());
    Ok(certs)
}

/// A server configuration from a PEM certificate chain and its PEM private key.
///
/// # Errors
/// A file is unreadable, holds no certificate or key, or they do not match.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading a PEM private key from {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .with_context(|| format!("{} and its key do not make a usable certificate", cert.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration trusting the system's roots and, if given, the
/// certificates in `extra_roots` (a private CA, or a self-signed admin API).
///
/// # Errors
/// `extra_roots` is unreadable or holds no certificate.
pub fn client_config(extra_roots: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system roots are not fatal: --admin-ca may be all that is needed.
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(file) = extra_roots {
        for cert in certificates(file)? {
            roots.add(cert).with_context(|| format!("{} is not a usable CA certificate", file.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
