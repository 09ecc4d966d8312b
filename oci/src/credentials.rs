//! Registry credentials in the docker `config.json` format (`{"auths": {"host": {"auth":
//! base64("user:password")}}}`), which `docker login`, `oras login` and Kubernetes'
//! `kubernetes.io/dockerconfigjson` Secrets all write. Held by the controller and by each
//! agent for its own registries; never part of a message.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// registry host[:port] → (username, password)
    by_registry: BTreeMap<String, (String, String)>,
}

impl fmt::Debug for Credentials {
    /// Registries only: a log line must never carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("registries", &self.by_registry.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl Credentials {
    /// Parses a docker `config.json`; errors name the registry entry that is wrong.
    pub fn from_docker_config(json: &[u8]) -> Result<Self, String> {
        let config: DockerConfig = serde_json::from_slice(json)
            .map_err(|e| format!("not a docker config.json ({{\"auths\": …}}): {e}"))?;
        let mut by_registry = BTreeMap::new();
        for (key, entry) in config.auths {
            let pair = match (entry.username, entry.password, entry.auth) {
                (Some(user), Some(password), _) => (user, password),
                (_, _, Some(auth)) => {
                    decode_auth(&auth).map_err(|why| format!("auths[{key:?}].auth: {why}"))?
                }
                _ => {
                    return Err(format!(
                        "auths[{key:?}]: needs \"auth\" or \"username\" and \"password\""
                    ));
                }
            };
            by_registry.insert(registry_host(&key).to_string(), pair);
        }
        Ok(Self { by_registry })
    }

    pub fn is_empty(&self) -> bool {
        self.by_registry.is_empty()
    }

    /// What to present to `registry` (host[:port]): basic credentials if configured,
    /// otherwise anonymous.
    pub fn for_registry(&self, registry: &str) -> RegistryAuth {
        match self.by_registry.get(registry) {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }
}

fn decode_auth(auth: &str) -> Result<(String, String), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| "not \"username:password\"".to_string())?;
    Ok((user.to_string(), password.to_string()))
}

/// `https://host:port/v1/` (older docker configs) → `host:port`.
fn registry_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed step should panic with its location
mod tests {
    use super::*;

    #[test]
    fn docker_configs_give_basic_auth_per_registry() {
        let json = br#"{"auths": {
            "127.0.0.1:5001": {"auth": "ZWRnZWZsZWV0OnNlY3JldA=="},
            "https://registry.example/v1/": {"username": "u", "password": "p"}
        }}"#;
        let credentials = Credentials::from_docker_config(json).unwrap();
        assert_eq!(
            credentials.for_registry("127.0.0.1:5001"),
            RegistryAuth::Basic("edgefleet".into(), "secret".into())
        );
        assert_eq!(
            credentials.for_registry("registry.example"),
            RegistryAuth::Basic("u".into(), "p".into())
        );
        assert_eq!(
            credentials.for_registry("other:5000"),
            RegistryAuth::Anonymous
        );
        let shown = format!("{credentials:?}");
        assert!(
            shown.contains("127.0.0.1:5001") && !shown.contains("secret"),
            "{shown}"
        );
    }

    #[test]
    fn malformed_configs_name_the_entry() {
        for (json, says) in [
            (&b"[1]"[..], "not a docker config.json"),
            (
                br#"{"auths": {"r": {"auth": "%%%"}}}"#,
                "auths[\"r\"].auth: not base64",
            ),
            (
                br#"{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}"#,
                "username:password",
            ),
            (br#"{"auths": {"r": {}}}"#, "needs \"auth\""),
        ] {
            let err = Credentials::from_docker_config(json).unwrap_err();
            assert!(err.contains(says), "{err}");
        }
    }
}
