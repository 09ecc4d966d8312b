//! Site caches: a device that announces a site-cache URL serves verified artifacts to the
//! devices sharing its value of the site label, so a rollout crosses the site's uplink once.
//! Which cache a device uses is decided here from the inventory; devices fall back to the
//! origin on their own when the cache fails, and the controller stops naming a cache that
//! went offline.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};

use crate::device::DeviceFacts;

/// Per device id, the site cache it should download through.
pub type SiteCaches = HashMap<String, String>;

/// For every device with a value of `site_label`, the cache of its site: an online device of
/// the same site that announced a cache URL (the lowest id, so the choice is stable when a
/// site has two). A cache downloads from the origin itself, so it gets none.
pub fn site_caches(devices: &[impl Borrow<DeviceFacts>], site_label: &str) -> SiteCaches {
    let devices = || devices.iter().map(Borrow::borrow);
    let mut cache_of_site: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
    for device in devices().filter(|d: &&DeviceFacts| d.online) {
        if let (Some(site), Some(url)) = (device.labels.get(site_label), &device.site_cache_url) {
            let id = device.id.as_str();
            let entry = cache_of_site.entry(site).or_insert((id, url));
            if id < entry.0 {
                *entry = (id, url);
            }
        }
    }
    devices()
        .filter_map(|device: &DeviceFacts| {
            let site = device.labels.get(site_label)?;
            let (cache_id, url) = cache_of_site.get(site.as_str())?;
            (*cache_id != device.id.as_str()).then(|| (device.id.to_string(), url.to_string()))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed step should panic with its location
mod tests {
    use super::*;
    use crate::testutil::device;
    use std::sync::Arc;

    fn at(name: &str, site: Option<&str>, cache: Option<&str>) -> DeviceFacts {
        let mut d = device(name);
        if let Some(site) = site {
            Arc::make_mut(&mut d.labels).insert("site".into(), site.into());
        }
        d.site_cache_url = cache.map(String::from);
        d
    }

    #[test]
    fn devices_use_the_cache_of_their_own_site_and_the_cache_uses_the_origin() {
        let devices = vec![
            at("a-cache", Some("a"), Some("http://10.0.0.1:9090")),
            at("a-1", Some("a"), None),
            at("a-2", Some("a"), None),
            at("b-1", Some("b"), None),
            at("nowhere", None, None),
        ];
        let caches = site_caches(&devices, "site");
        assert_eq!(
            caches.get("a-1").map(String::as_str),
            Some("http://10.0.0.1:9090")
        );
        assert_eq!(
            caches.get("a-2").map(String::as_str),
            Some("http://10.0.0.1:9090")
        );
        assert_eq!(
            caches.get("a-cache"),
            None,
            "the cache fetches from the origin"
        );
        assert_eq!(caches.get("b-1"), None, "site b has no cache");
        assert_eq!(caches.get("nowhere"), None);
        assert!(
            site_caches(&devices, "zone").is_empty(),
            "another label names no sites"
        );
    }

    #[test]
    fn an_offline_cache_is_not_named_and_two_caches_resolve_to_the_lowest_id() {
        let mut devices = vec![
            at("z-cache", Some("a"), Some("http://z:1")),
            at("c-cache", Some("a"), Some("http://c:1")),
            at("a-1", Some("a"), None),
        ];
        let caches = site_caches(&devices, "site");
        assert_eq!(caches.get("a-1").map(String::as_str), Some("http://c:1"));
        assert_eq!(
            caches.get("z-cache").map(String::as_str),
            Some("http://c:1"),
            "the second cache is a device of the site like any other"
        );
        devices[1].online = false;
        let caches = site_caches(&devices, "site");
        assert_eq!(caches.get("a-1").map(String::as_str), Some("http://z:1"));
        devices[0].online = false;
        assert!(site_caches(&devices, "site").is_empty());
    }
}
