//! Artifact signatures: ed25519 over the artifact's sha256 hex string, checked against keys
//! the device trusts (its own configuration, never the CR that carries the signature, so a
//! forged CR cannot bring its own key). Checked before download and again before loading a
//! stored artifact at start-up; the downloaded bytes are then bound to it by the digest.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use edgefleet_protocol::Artifact;
use ring::signature::{ED25519, UnparsedPublicKey};

/// DER prefix of an ed25519 SubjectPublicKeyInfo (`openssl pkey -pubout`); the raw key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The public keys this device accepts artifacts from; empty means signatures are not
/// required (sha256 integrity still is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedKeys(Vec<[u8; 32]>);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("artifact is unsigned but this device only accepts signed artifacts")]
    Missing,
    #[error("signature is not base64 of 64 bytes")]
    Malformed,
    #[error("signature does not verify against any trusted key")]
    Untrusted,
}

impl TrustedKeys {
    /// Parses PEM `PUBLIC KEY` blocks (ed25519 SPKI) and/or lines of base64 raw 32-byte keys.
    pub fn parse(text: &str) -> Result<TrustedKeys, String> {
        let mut keys = Vec::new();
        let mut pem_body: Option<String> = None;
        for (number, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            match (&mut pem_body, line) {
                (None, "") => {}
                (None, l) if l.starts_with('#') => {}
                (None, "-----BEGIN PUBLIC KEY-----") => pem_body = Some(String::new()),
                (None, l) => keys.push(raw_key(l).map_err(|e| format!("line {number}: {e}"))?),
                (Some(body), "-----END PUBLIC KEY-----") => {
                    keys.push(spki_key(body).map_err(|e| format!("line {number}: {e}"))?);
                    pem_body = None;
                }
                (Some(body), l) => body.push_str(l),
            }
        }
        if pem_body.is_some() {
            return Err("unterminated PEM block".into());
        }
        if keys.is_empty() {
            return Err("no public key in it".into());
        }
        Ok(TrustedKeys(keys))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok when no keys are configured or the artifact's signature verifies under one of them.
    pub fn verify(&self, artifact: &Artifact) -> Result<(), SignatureError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let signature = artifact
            .signature
            .as_deref()
            .ok_or(SignatureError::Missing)?;
        let signature = STANDARD
            .decode(signature)
            .ok()
            .filter(|s| s.len() == 64)
            .ok_or(SignatureError::Malformed)?;
        let message = artifact.sha256.as_bytes();
        self.0
            .iter()
            .any(|key| {
                UnparsedPublicKey::new(&ED25519, key)
                    .verify(message, &signature)
                    .is_ok()
            })
            .then_some(())
            .ok_or(SignatureError::Untrusted)
    }
}

fn raw_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text)
        .map_err(|_| "not base64".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "a raw ed25519 public key is 32 bytes".to_string())
}

fn spki_key(body: &str) -> Result<[u8; 32], String> {
    let der = STANDARD
        .decode(body)
        .map_err(|_| "PEM body is not base64".to_string())?;
    der.strip_prefix(&ED25519_SPKI_PREFIX)
        .and_then(|raw| <[u8; 32]>::try_from(raw).ok())
        .ok_or_else(|| "not an ed25519 public key".to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key_pair(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
    }

    fn artifact(sha: &str, signature: Option<String>) -> Artifact {
        Artifact {
            uri: "http://x/m.onnx".into(),
            sha256: sha.into(),
            size_bytes: 1,
            signature,
        }
    }

    fn sign(pair: &Ed25519KeyPair, sha: &str) -> String {
        STANDARD.encode(pair.sign(sha.as_bytes()).as_ref())
    }

    fn pem(pair: &Ed25519KeyPair) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(pair.public_key().as_ref());
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(der)
        )
    }

    #[test]
    fn a_signature_by_a_trusted_key_over_the_digest_verifies() {
        let (trusted, other) = (key_pair(1), key_pair(2));
        let keys = TrustedKeys::parse(&format!(
            "# rotation: old and new key\n{}{}",
            pem(&other),
            STANDARD.encode(trusted.public_key().as_ref())
        ))
        .unwrap();
        let sha = "ab".repeat(32);
        assert_eq!(
            keys.verify(&artifact(&sha, Some(sign(&trusted, &sha)))),
            Ok(())
        );
        assert_eq!(
            keys.verify(&artifact(&sha, Some(sign(&other, &sha)))),
            Ok(())
        );
    }

    #[test]
    fn unsigned_forged_and_replayed_signatures_are_refused() {
        let trusted = key_pair(1);
        let attacker = key_pair(9);
        let keys = TrustedKeys::parse(&pem(&trusted)).unwrap();
        let sha = "ab".repeat(32);
        let other_sha = "cd".repeat(32);
        assert_eq!(
            keys.verify(&artifact(&sha, None)),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            keys.verify(&artifact(&sha, Some(sign(&attacker, &sha)))),
            Err(SignatureError::Untrusted)
        );
        // a genuine signature for another artifact does not carry over
        assert_eq!(
            keys.verify(&artifact(&sha, Some(sign(&trusted, &other_sha)))),
            Err(SignatureError::Untrusted)
        );
        assert_eq!(
            keys.verify(&artifact(&sha, Some("bm90IGEgc2lnbmF0dXJl".into()))),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn without_keys_nothing_is_required() {
        let keys = TrustedKeys::default();
        assert!(keys.is_empty());
        assert_eq!(keys.verify(&artifact(&"ab".repeat(32), None)), Ok(()));
    }

    #[test]
    fn bad_key_files_say_what_is_wrong() {
        assert!(
            TrustedKeys::parse("")
                .unwrap_err()
                .contains("no public key")
        );
        assert!(TrustedKeys::parse("%%%").unwrap_err().contains("line 1"));
        assert!(TrustedKeys::parse("AAAA").unwrap_err().contains("32 bytes"));
        let rsa_like = "-----BEGIN PUBLIC KEY-----\nMAo=\n-----END PUBLIC KEY-----";
        assert!(
            TrustedKeys::parse(rsa_like)
                .unwrap_err()
                .contains("ed25519")
        );
        assert!(
            TrustedKeys::parse("-----BEGIN PUBLIC KEY-----\nAAAA")
                .unwrap_err()
                .contains("unterminated")
        );
    }
}
