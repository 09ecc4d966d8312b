//! Checks the wire payloads share: digests, URLs, artifact references; and how a bad value
//! is quoted back (truncated).

/// An assignment's artifact: http(s), or an OCI reference pinned to a manifest digest (the
/// controller resolves tags before anything reaches a device).
pub(crate) fn check_artifact_uri(uri: &str) -> Result<(), String> {
    if crate::oci::OciReference::is_oci(uri) {
        let reference = crate::oci::OciReference::parse(uri)?;
        return match reference.pin {
            crate::oci::Pin::Digest(_) => Ok(()),
            crate::oci::Pin::Tag(_) => Err(format!(
                "artifact uri {:?} is a tag, not a digest",
                truncate(uri, 80)
            )),
        };
    }
    check_http_url("artifact uri", uri)
}

pub(crate) fn check_http_url(what: &str, url: &str) -> Result<(), String> {
    if (url.starts_with("http://") || url.starts_with("https://")) && url.len() <= 2048 {
        Ok(())
    } else {
        Err(format!(
            "{what} {:?} is not an http(s) URL",
            truncate(url, 80)
        ))
    }
}

pub(crate) fn check_sha256(digest: &str) -> Result<(), String> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "sha256 {:?} is not 64 lower-case hex characters",
            truncate(digest, 80)
        ))
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((index, _)) => &s[..index],
        None => s,
    }
}
