//! `oci://registry/repository(:tag|@sha256:digest)` references to model artifacts kept in an
//! OCI registry. Parsing only: the controller resolves tags and the agent pulls blobs with
//! `oci-client`; this is what the spec check, the wire check and both of them agree on.

use std::fmt;

pub const SCHEME: &str = "oci://";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciReference {
    /// `host[:port]`.
    pub registry: String,
    /// `name/space/repo`, lower case.
    pub repository: String,
    pub pin: Pin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pin {
    Tag(String),
    /// Lower-case hex sha256 of the manifest.
    Digest(String),
}

impl OciReference {
    /// Whether `uri` names an OCI artifact at all (it may still be malformed).
    pub fn is_oci(uri: &str) -> bool {
        uri.starts_with(SCHEME)
    }

    pub fn parse(uri: &str) -> Result<Self, String> {
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| format!("{uri:?} does not start with {SCHEME}"))?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("{uri:?} has no repository after the registry"))?;
        if registry.is_empty()
            || !registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
        {
            return Err(format!("{uri:?}: registry {registry:?} is not host[:port]"));
        }
        let (repository, pin) = if let Some((repo, digest)) = path.split_once('@') {
            let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
                format!("{uri:?}: only sha256 digests are supported, got {digest:?}")
            })?;
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!(
                    "{uri:?}: digest is not 64 lower-case hex characters"
                ));
            }
            (repo, Pin::Digest(hex.to_string()))
        } else {
            // a colon after the last slash separates the tag
            let last_slash = path.rfind('/').map_or(0, |i| i + 1);
            match path[last_slash..].find(':') {
                Some(i) => {
                    let (repo, tag) = path.split_at(last_slash + i);
                    (repo, Pin::Tag(tag[1..].to_string()))
                }
                None => {
                    return Err(format!(
                        "{uri:?} names neither a :tag nor an @sha256: digest"
                    ));
                }
            }
        };
        let repository_ok = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !repository_ok {
            return Err(format!(
                "{uri:?}: repository {repository:?} must be lower-case path components"
            ));
        }
        if let Pin::Tag(tag) = &pin {
            let tag_ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !tag_ok {
                return Err(format!("{uri:?}: tag {tag:?} is not a valid OCI tag"));
            }
        }
        Ok(Self {
            registry: registry.to_string(),
            repository: repository.to_string(),
            pin,
        })
    }

    /// The same repository pinned to a manifest digest.
    pub fn pinned(&self, manifest_sha256: &str) -> Self {
        Self {
            pin: Pin::Digest(manifest_sha256.to_string()),
            ..self.clone()
        }
    }

    /// `registry/repository:tag` or `registry/repository@sha256:…`, as OCI clients write it.
    pub fn without_scheme(&self) -> String {
        match &self.pin {
            Pin::Tag(tag) => format!("{}/{}:{tag}", self.registry, self.repository),
            Pin::Digest(hex) => format!("{}/{}@sha256:{hex}", self.registry, self.repository),
        }
    }
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.without_scheme())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed step should panic with its location
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn tags_and_digests_parse_and_print_back() {
        let tagged = OciReference::parse("oci://127.0.0.1:5000/models/minilm:v1").unwrap();
        assert_eq!(tagged.registry, "127.0.0.1:5000");
        assert_eq!(tagged.repository, "models/minilm");
        assert_eq!(tagged.pin, Pin::Tag("v1".into()));
        assert_eq!(tagged.to_string(), "oci://127.0.0.1:5000/models/minilm:v1");
        let pinned = tagged.pinned(HEX);
        assert_eq!(
            pinned.without_scheme(),
            format!("127.0.0.1:5000/models/minilm@sha256:{HEX}")
        );
        assert_eq!(OciReference::parse(&pinned.to_string()).unwrap(), pinned);
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        for (uri, says) in [
            ("https://x/y", "does not start with"),
            ("oci://registry", "no repository"),
            ("oci://reg/models/minilm", "neither a :tag"),
            ("oci://reg/Models/minilm:v1", "lower-case"),
            ("oci://reg/models/minilm@sha512:abc", "only sha256"),
            ("oci://reg/models/minilm@sha256:abc", "64 lower-case hex"),
            ("oci://reg/models/minilm:bad tag", "not a valid OCI tag"),
            ("oci://reg//minilm:v1", "lower-case path components"),
            ("oci://re g/m:v1", "host[:port]"),
        ] {
            let err = OciReference::parse(uri).unwrap_err();
            assert!(err.contains(says), "{uri}: {err}");
        }
    }
}
