//! `upstream.tls.cert_file` and `key_file`: the client certificate for upstreams that
//! require mTLS (SPEC §7.8), read and checked at load.
//!
//! Checked here rather than when the first request connects: an unreadable file, a key
//! that is not PEM, or a key that does not belong to the certificate would otherwise show
//! up only as handshake failures on live traffic.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::ConfigError;

const CERT: &str = "upstream.tls.cert_file";
const KEY: &str = "upstream.tls.key_file";

/// A certificate chain (leaf first) and its private key.
pub struct ClientCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ClientCert {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// Both files or neither; paths relative to the config file's directory.
pub fn load(
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    dir: &Path,
) -> Result<Option<Arc<ClientCert>>, ConfigError> {
    let (cert_file, key_file) = match (cert_file, key_file) {
        (None, None) => return Ok(None),
        (Some(_), None) => return Err(ConfigError::new(KEY, "is required with cert_file")),
        (None, Some(_)) => return Err(ConfigError::new(CERT, "is required with key_file")),
        (Some(c), Some(k)) => (dir.join(c), dir.join(k)),
    };
    let pem = read(&cert_file, CERT)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| not_pem(&cert_file, CERT, &e))?;
    if chain.is_empty() {
        let message = format!("{} holds no certificate", cert_file.display());
        return Err(ConfigError::new(CERT, message));
    }
    let pem = read(&key_file, KEY)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| not_pem(&key_file, KEY, &e))?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
        |e| {
            let message = format!(
                "{} does not fit the certificate in {}: {e}",
                key_file.display(),
                cert_file.display()
            );
            ConfigError::new(KEY, message)
        },
    )?;
    Ok(Some(Arc::new(ClientCert { chain, key })))
}

fn read(path: &Path, field: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::new(field, format!("cannot read {}: {e}", path.display())))
}

fn not_pem(path: &Path, field: &str, e: &dyn fmt::Display) -> ConfigError {
    ConfigError::new(
        field,
        format!("{} is not a PEM certificate or key: {e}", path.display()),
    )
}
