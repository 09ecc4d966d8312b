//! Where artifacts come from besides plain URLs: registry credentials (a docker
//! `config.json`, read here and never sent anywhere), registries reached over plain HTTP, and
//! whether this device is its site's cache.

use std::net::SocketAddr;
use std::path::PathBuf;

use edgefleet_oci::Credentials;
use serde::Deserialize;

use super::{Args, ConfigError, err};

/// The `[distribution]` table of the file.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributionFile {
    pub registry_auth_file: Option<PathBuf>,
    pub insecure_registries: Vec<String>,
    pub site_cache_listen: Option<String>,
    pub site_cache_url: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Distribution {
    pub credentials: Credentials,
    /// `host:port`s pulled over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub site_cache: Option<SiteCacheConfig>,
}

/// This device serves verified artifacts to its site.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteCacheConfig {
    pub listen: SocketAddr,
    /// What the site's devices connect to (announced in the hello).
    pub url: String,
}

impl DistributionFile {
    pub fn resolve(self, args: &Args) -> Result<Distribution, ConfigError> {
        let credentials = match args.registry_auth_file.clone().or(self.registry_auth_file) {
            Some(path) => {
                let bytes = std::fs::read(&path).map_err(|e| {
                    err(
                        "registry_auth_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Credentials::from_docker_config(&bytes)
                    .map_err(|e| err("registry_auth_file", format!("{}: {e}", path.display())))?
            }
            None => Credentials::default(),
        };
        let insecure_registries = match &args.insecure_registries {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            None => self.insecure_registries,
        };
        let listen = args.site_cache_listen.clone().or(self.site_cache_listen);
        let url = args.site_cache_url.clone().or(self.site_cache_url);
        let site_cache = match (listen, url) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(err(
                    "site_cache_url",
                    "needs site_cache_listen (the address the cache serves on)",
                ));
            }
            (Some(listen), url) => {
                let listen: SocketAddr = listen.parse().map_err(|e| {
                    err(
                        "site_cache_listen",
                        format!("{listen:?} is not host:port ({e})"),
                    )
                })?;
                let url = match url {
                    Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                        url.trim_end_matches('/').to_string()
                    }
                    Some(url) => {
                        return Err(err(
                            "site_cache_url",
                            format!("{url:?} is not an http(s) URL"),
                        ));
                    }
                    None if listen.ip().is_unspecified() => {
                        return Err(err(
                            "site_cache_url",
                            format!(
                                "is required when site_cache_listen is {listen} (which address do the site's devices use?)"
                            ),
                        ));
                    }
                    None => format!("http://{listen}"),
                };
                Some(SiteCacheConfig { listen, url })
            }
        };
        Ok(Distribution {
            credentials,
            insecure_registries,
            site_cache,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed step should panic with its location
mod tests {
    use super::*;

    fn args(listen: Option<&str>, url: Option<&str>) -> Args {
        Args {
            site_cache_listen: listen.map(String::from),
            site_cache_url: url.map(String::from),
            ..Args::default()
        }
    }

    #[test]
    fn a_site_cache_needs_an_address_devices_can_reach() {
        let resolve = |a: Args| DistributionFile::default().resolve(&a);
        assert_eq!(resolve(args(None, None)).unwrap().site_cache, None);
        let cache = resolve(args(Some("10.0.0.5:9090"), None))
            .unwrap()
            .site_cache
            .unwrap();
        assert_eq!(cache.url, "http://10.0.0.5:9090");
        let e = resolve(args(Some("0.0.0.0:9090"), None)).unwrap_err();
        assert!(e.to_string().contains("site_cache_url"), "{e}");
        let cache = resolve(args(Some("0.0.0.0:9090"), Some("http://gw.site-a:9090/")))
            .unwrap()
            .site_cache
            .unwrap();
        assert_eq!(cache.url, "http://gw.site-a:9090");
        assert!(resolve(args(None, Some("http://x"))).is_err());
        assert!(resolve(args(Some("nope"), None)).is_err());
        assert!(resolve(args(Some("1.2.3.4:1"), Some("ftp://x"))).is_err());
    }

    #[test]
    fn registry_credentials_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("ef-dist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, b"{\"auths\": {\"r:5001\": {\"auth\": \"???\"}}}").unwrap();
        let a = Args {
            registry_auth_file: Some(path.clone()),
            insecure_registries: Some("127.0.0.1:5000, r:5001".into()),
            ..Args::default()
        };
        let e = DistributionFile::default()
            .resolve(&a)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("registry_auth_file") && e.contains("config.json"),
            "{e}"
        );
        std::fs::write(
            &path,
            b"{\"auths\": {\"r:5001\": {\"username\": \"u\", \"password\": \"p\"}}}",
        )
        .unwrap();
        let d = DistributionFile::default().resolve(&a).unwrap();
        assert_eq!(d.insecure_registries, ["127.0.0.1:5000", "r:5001"]);
        assert!(!d.credentials.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
