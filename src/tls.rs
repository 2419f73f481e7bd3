//! TLS for the broker connection: builds the rustls configuration from PEM files (CA
//! bundle, client certificate chain and key) and ALPN protocols, and says clearly what is
//! wrong with them before any connection is tried.
//!
//! Without a CA file the platform's trusted roots are used. rustls is built with ring as
//! its only crypto provider; it is installed for the process on first use.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a TLS connection is configured with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the certificate authorities to trust; `None`: the platform's roots.
    pub ca_certs: Option<PathBuf>,
    /// PEM files of the client certificate (chain) and its private key, for mutual TLS.
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// ALPN protocols to offer, for example `x-amzn-mqtt-ca` for AWS IoT Core on port 443.
    pub alpn_protocols: Vec<String>,
}

/// Why the TLS settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetupError(pub String);

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsSetupError {}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path)
        .map_err(|e| TlsSetupError(format!("cannot read the {what} {}: {e}", path.display())))
}

fn certificates(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsSetupError(format!(
                "the {what} {} is not valid PEM: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError(format!(
            "the {what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = read("private key file", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        TlsSetupError(format!(
            "the key file {} holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            path.display()
        ))
    })
}

fn install_crypto_provider() {
    // Fails only when a provider is already installed (by us or the application): fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the rustls client configuration, or says which file or setting is wrong.
pub fn client_config(options: &TlsOptions) -> Result<Arc<ClientConfig>, TlsSetupError> {
    install_crypto_provider();
    let mut roots = RootCertStore::empty();
    match &options.ca_certs {
        Some(path) => {
            let (added, _) = roots.add_parsable_certificates(certificates("CA file", path)?);
            if added == 0 {
                return Err(TlsSetupError(format!(
                    "the CA file {} holds no usable CA certificate",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(TlsSetupError(
                    "no trusted CA certificates found on this system: give ca_certs".into(),
                ));
            }
        }
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match (&options.certfile, &options.keyfile) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(certificates("certificate file", cert)?, private_key(key)?)
            .map_err(|e| {
                TlsSetupError(format!(
                    "the client certificate {} and key {} cannot be used together: {e}",
                    cert.display(),
                    key.display()
                ))
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsSetupError(
                "mutual TLS needs both certfile and keyfile".into(),
            ))
        }
    };
    config.alpn_protocols = options
        .alpn_protocols
        .iter()
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mqtt-rpc-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_missing_ca_file_is_named_in_the_error() {
        let options = TlsOptions {
            ca_certs: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        };
        let error = client_config(&options).unwrap_err();
        assert!(
            error
                .0
                .contains("cannot read the CA file /nonexistent/ca.pem"),
            "{error}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let path = temp_file("empty.pem", b"not a certificate\n");
        let options = TlsOptions {
            ca_certs: Some(path.clone()),
            ..TlsOptions::default()
        };
        let error = client_config(&options).unwrap_err();
        assert!(error.0.contains("holds no PEM certificate"), "{error}");
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let options = TlsOptions {
            certfile: Some("/some/cert.pem".into()),
            ..TlsOptions::default()
        };
        let error = client_config(&options).unwrap_err();
        assert!(error.0.contains("both certfile and keyfile"), "{error}");
    }
}
