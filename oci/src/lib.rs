//! OCI registries as an artifact source, over the ORAS project's `oci-client`: the controller
//! resolves `oci://` references (a tag to a manifest digest, the manifest to its one layer)
//! and agents stream that layer into their resumable, digest-verified store. Credentials come
//! from a docker `config.json` ([`Credentials`]); plain HTTP only for registries named
//! insecure.

mod credentials;

use std::io;

use edgefleet_protocol::oci::OciReference;
use futures_util::stream::BoxStream;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::{Client, Reference};

pub use credentials::Credentials;

/// A reference resolved: the manifest digest it pins, and the model file (the manifest's one
/// layer) that devices download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub pinned: OciReference,
    pub layer_sha256: String,
    pub size_bytes: u64,
    pub media_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry} refused the credentials for {reference}: {detail}")]
    Unauthorized {
        registry: String,
        reference: String,
        detail: String,
    },
    #[error("{reference}: not found in the registry ({detail})")]
    NotFound { reference: String, detail: String },
    #[error("registry {registry} unreachable: {detail}")]
    Unreachable { registry: String, detail: String },
    #[error("registry answered HTTP {code} for {reference}: {detail}")]
    Http {
        code: u16,
        reference: String,
        detail: String,
    },
    #[error("{reference}: {detail}")]
    Manifest { reference: String, detail: String },
}

impl RegistryError {
    /// Bounded label for metrics and status reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::Unauthorized { .. } => "unauthorized",
            RegistryError::NotFound { .. } => "not_found",
            RegistryError::Unreachable { .. } => "unreachable",
            RegistryError::Http { .. } => "http",
            RegistryError::Manifest { .. } => "manifest",
        }
    }

    /// A registry that is down or overloaded may answer later; wrong credentials, a missing
    /// blob or a malformed manifest will not fix themselves.
    pub fn retryable(&self) -> bool {
        match self {
            RegistryError::Unreachable { .. } => true,
            RegistryError::Http { code, .. } => *code == 408 || *code == 429 || *code >= 500,
            _ => false,
        }
    }
}

/// A blob response: the bytes from the offset asked for (`partial`) or from the start.
pub struct Blob {
    pub partial: bool,
    pub content_length: Option<u64>,
    pub stream: BoxStream<'static, Result<bytes::Bytes, io::Error>>,
}

pub struct Registry {
    client: Client,
    credentials: Credentials,
}

impl Registry {
    /// `insecure`: `host:port`s reached over plain HTTP (a registry on a lab network or in a
    /// test); every other registry over HTTPS.
    pub fn new(insecure: &[String], credentials: Credentials) -> Self {
        let protocol = if insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(insecure.to_vec())
        };
        let client = Client::new(ClientConfig {
            protocol,
            ..ClientConfig::default()
        });
        Self {
            client,
            credentials,
        }
    }

    fn oci_reference(reference: &OciReference) -> Result<Reference, RegistryError> {
        reference
            .without_scheme()
            .parse()
            .map_err(|e| RegistryError::Manifest {
                reference: reference.to_string(),
                detail: format!("not a reference oci-client accepts: {e}"),
            })
    }

    /// The manifest `reference` names (a tag is looked up now), and its one layer.
    pub async fn resolve(&self, reference: &OciReference) -> Result<Resolved, RegistryError> {
        let image = Self::oci_reference(reference)?;
        let auth = self.credentials.for_registry(&reference.registry);
        let (manifest, digest) = self
            .client
            .pull_image_manifest(&image, &auth)
            .await
            .map_err(|e| classify(e, reference))?;
        let manifest_error = |detail: String| RegistryError::Manifest {
            reference: reference.to_string(),
            detail,
        };
        let manifest_hex = sha256_hex(&digest)
            .ok_or_else(|| manifest_error(format!("manifest digest {digest:?} is not sha256")))?;
        let [layer] = manifest.layers.as_slice() else {
            return Err(manifest_error(format!(
                "the manifest has {} layers; EdgeFleet expects one, the model file (as `oras push` makes it)",
                manifest.layers.len()
            )));
        };
        let layer_sha256 = sha256_hex(&layer.digest).ok_or_else(|| {
            manifest_error(format!("layer digest {:?} is not sha256", layer.digest))
        })?;
        let size_bytes = u64::try_from(layer.size)
            .ok()
            .filter(|size| *size > 0)
            .ok_or_else(|| manifest_error(format!("layer size {} is not positive", layer.size)))?;
        Ok(Resolved {
            pinned: reference.pinned(manifest_hex),
            layer_sha256: layer_sha256.to_string(),
            size_bytes,
            media_type: layer.media_type.clone(),
        })
    }

    /// Streams blob `sha256` of `reference`'s repository from byte `offset`.
    pub async fn open_blob(
        &self,
        reference: &OciReference,
        sha256: &str,
        offset: u64,
    ) -> Result<Blob, RegistryError> {
        let image = Self::oci_reference(reference)?;
        let auth = self.credentials.for_registry(&reference.registry);
        let digest = format!("sha256:{sha256}");
        let classify_blob = |e| classify(e, reference);
        self.client
            .auth(&image, &auth, oci_client::RegistryOperation::Pull)
            .await
            .map_err(classify_blob)?;
        let response = self
            .client
            .pull_blob_stream_partial(&image, digest.as_str(), offset, None)
            .await
            .map_err(classify_blob)?;
        Ok(match response {
            BlobResponse::Full(sized) => Blob {
                partial: false,
                content_length: sized.content_length,
                stream: sized.stream,
            },
            BlobResponse::Partial(sized) => Blob {
                partial: true,
                content_length: sized.content_length,
                stream: sized.stream,
            },
        })
    }
}

fn sha256_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// oci-client's error, as what the user has to do about it.
fn classify(error: OciDistributionError, reference: &OciReference) -> RegistryError {
    let registry = reference.registry.clone();
    let reference_text = reference.to_string();
    let unauthorized = |detail: String| RegistryError::Unauthorized {
        registry: registry.clone(),
        reference: reference_text.clone(),
        detail,
    };
    let not_found = |detail: String| RegistryError::NotFound {
        reference: reference_text.clone(),
        detail,
    };
    match error {
        OciDistributionError::AuthenticationFailure(detail) => unauthorized(detail),
        OciDistributionError::UnauthorizedError { url } => {
            unauthorized(format!("HTTP 401 from {url}"))
        }
        OciDistributionError::ImageManifestNotFoundError(detail) => not_found(detail),
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let detail = format!("{envelope} ({url})");
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                unauthorized(detail)
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::BlobUnknown
                        | OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                not_found(detail)
            } else {
                RegistryError::Manifest {
                    reference: reference_text,
                    detail,
                }
            }
        }
        OciDistributionError::ServerError { code, url, message } => match code {
            401 | 403 => unauthorized(format!("HTTP {code} from {url}")),
            404 => not_found(format!("HTTP 404 from {url}")),
            _ => RegistryError::Http {
                code,
                reference: reference_text,
                detail: truncate(&message, 200),
            },
        },
        OciDistributionError::RequestError(e) => RegistryError::Unreachable {
            registry,
            detail: e.to_string(),
        },
        OciDistributionError::IoError(e) => RegistryError::Unreachable {
            registry,
            detail: e.to_string(),
        },
        other => RegistryError::Manifest {
            reference: reference_text,
            detail: other.to_string(),
        },
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}
