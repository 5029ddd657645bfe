//! TLS for `amqps://`: the system's CAs plus the PEM file the user names; broker names are
//! always checked.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why TLS could not be set up.
#[derive(Debug)]
pub enum TlsError {
    /// The CA file cannot be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file is not PEM.
    NotPem {
        /// The file.
        path: PathBuf,
        /// The parser's reason.
        source: native_tls::Error,
    },
    /// The CA file holds no certificate.
    Empty(PathBuf),
    /// The TLS library refused the configuration.
    Setup(native_tls::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, source } => {
                write!(f, "cannot read CA file {}: {source}", path.display())
            }
            TlsError::NotPem { path, source } => write!(
                f,
                "CA file {} is not a PEM certificate file: {source}",
                path.display()
            ),
            TlsError::Empty(path) => write!(f, "CA file {} holds no certificate", path.display()),
            TlsError::Setup(source) => write!(f, "cannot set up TLS: {source}"),
        }
    }
}

/// The source's text is part of the message, so it is not repeated as a `source()`.
impl std::error::Error for TlsError {}

/// Reads every certificate of a PEM file (a CA bundle may hold several).
pub(crate) fn load_ca(path: &Path) -> Result<Vec<native_tls::Certificate>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certificates =
        native_tls::Certificate::stack_from_pem(&pem).map_err(|source| TlsError::NotPem {
            path: path.to_path_buf(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Empty(path.to_path_buf()));
    }
    Ok(certificates)
}

/// A connector trusting the system's CAs plus every certificate in `extra_ca`.
pub(super) fn connector(extra_ca: Option<&Path>) -> Result<native_tls::TlsConnector, TlsError> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(path) = extra_ca {
        for certificate in load_ca(path)? {
            builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(TlsError::Setup)
}
