//! MQTT-over-TLS client configuration: both sides speak to a TLS broker (optionally with a
//! client certificate, which Mosquitto's `use_identity_as_username` turns into the ACL
//! identity) in exactly the same way, and name their own setting when a file is bad.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Which of the configured files an error is about, so callers can name their own flag or
/// config field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsField {
    CaFile,
    CertFile,
    KeyFile,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {reason}")]
    File {
        field: TlsField,
        path: PathBuf,
        reason: String,
    },
    #[error("{reason}")]
    Rejected { field: TlsField, reason: String },
}

impl TlsError {
    pub fn field(&self) -> TlsField {
        match self {
            TlsError::File { field, .. } | TlsError::Rejected { field, .. } => *field,
        }
    }

    /// The error prefixed with the caller's name for the setting at fault (a flag, a config
    /// field), so a user knows what to fix.
    pub fn for_setting(&self, names: &TlsSettingNames) -> String {
        let name = match self.field() {
            TlsField::CaFile => names.ca_file,
            TlsField::CertFile => names.cert_file,
            TlsField::KeyFile => names.key_file,
        };
        format!("{name}: {self}")
    }
}

/// How a binary names its three TLS settings in errors.
#[derive(Clone, Copy, Debug)]
pub struct TlsSettingNames {
    pub ca_file: &'static str,
    pub cert_file: &'static str,
    pub key_file: &'static str,
}

/// The rumqttc transport for a TLS client configuration (the same for MQTT 3.1.1 and 5).
pub fn transport(config: Arc<rustls::ClientConfig>) -> rumqttc::Transport {
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config))
}

/// Files describing a TLS client: the CA that signed the broker's certificate (platform roots
/// when absent) and an optional client identity (certificate chain + private key, PEM).
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsFiles<'a> {
    pub ca_file: Option<&'a Path>,
    pub identity: Option<(&'a Path, &'a Path)>,
}

/// Builds a rustls client configuration (ring provider, TLS 1.2+).
pub fn client_config(files: TlsFiles<'_>) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match files.ca_file {
        Some(ca) => {
            let certs = read_certs(ca, TlsField::CaFile)?;
            if certs.is_empty() {
                return Err(file_error(TlsField::CaFile, ca, "no PEM certificate in it"));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| TlsError::Rejected {
                    field: TlsField::CaFile,
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            // A broken platform certificate never blocks the others.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rejected {
            field: TlsField::CaFile,
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    match files.identity {
        Some((cert, key)) => {
            let certs = read_certs(cert, TlsField::CertFile)?;
            if certs.is_empty() {
                return Err(file_error(
                    TlsField::CertFile,
                    cert,
                    "no PEM certificate in it",
                ));
            }
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_error(TlsField::KeyFile, key, &e.to_string()))?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|e| TlsError::Rejected {
                    field: TlsField::KeyFile,
                    reason: format!("does not match the certificate: {e}"),
                })
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

fn read_certs(path: &Path, field: TlsField) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(field, path, &e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(field, path, &format!("bad certificate: {e}")))
}

fn file_error(field: TlsField, path: &Path, reason: &str) -> TlsError {
    TlsError::File {
        field,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_ca_and_a_matching_identity_make_a_client() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let client = rcgen::generate_simple_self_signed(vec!["device-a".into()]).unwrap();
        let ca_file = write(dir.path(), "ca.pem", &ca.cert.pem());
        let cert = write(dir.path(), "c.pem", &client.cert.pem());
        let key = write(dir.path(), "c.key", &client.signing_key.serialize_pem());
        let config = client_config(TlsFiles {
            ca_file: Some(&ca_file),
            identity: Some((&cert, &key)),
        })
        .unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn each_bad_file_is_reported_against_its_own_field() {
        let dir = tempfile::tempdir().unwrap();
        let good = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["y".into()]).unwrap();
        let ca = write(dir.path(), "ca.pem", &good.cert.pem());
        let cert = write(dir.path(), "c.pem", &good.cert.pem());
        let other_key = write(dir.path(), "o.key", &other.signing_key.serialize_pem());
        let garbage = write(dir.path(), "garbage", "not pem");
        let missing = dir.path().join("missing.pem");

        let err = client_config(TlsFiles {
            ca_file: Some(&missing),
            identity: None,
        })
        .unwrap_err();
        assert_eq!(err.field(), TlsField::CaFile);
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let err = client_config(TlsFiles {
            ca_file: Some(&garbage),
            identity: None,
        })
        .unwrap_err();
        assert_eq!(err.field(), TlsField::CaFile);

        let err = client_config(TlsFiles {
            ca_file: Some(&ca),
            identity: Some((&garbage, &other_key)),
        })
        .unwrap_err();
        assert_eq!(err.field(), TlsField::CertFile);

        let err = client_config(TlsFiles {
            ca_file: Some(&ca),
            identity: Some((&cert, &garbage)),
        })
        .unwrap_err();
        assert_eq!(err.field(), TlsField::KeyFile);

        let err = client_config(TlsFiles {
            ca_file: Some(&ca),
            identity: Some((&cert, &other_key)),
        })
        .unwrap_err();
        assert_eq!(err.field(), TlsField::KeyFile);
        assert!(err.to_string().contains("does not match"), "{err}");
        let names = TlsSettingNames {
            ca_file: "--ca",
            cert_file: "--cert",
            key_file: "--key",
        };
        assert!(err.for_setting(&names).starts_with("--key: "), "{err}");
    }
}
