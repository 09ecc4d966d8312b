//! Broker URLs: `mqtt://host[:port]` (or `tcp://`, port 1883 by default) and
//! `mqtts://host[:port]` (TLS, 8883), with IPv6 hosts in brackets.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or IP address; an IPv6 address without its brackets.
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS to the broker.
    pub tls: bool,
}

impl BrokerUrl {
    /// Parses a broker URL; the error says what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (rest, tls, default_port) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (rest, true, 8883)
        } else if let Some(rest) = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
        {
            (rest, false, 1883)
        } else {
            return Err(format!(
                "broker URL {url:?} must start with mqtt:// or mqtts://"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let invalid_port =
            |port: &str| format!("broker URL {url:?} has an invalid port {port:?} (1-65535)");
        // `[::1]:8883` and `[::1]`: an IPv6 host is bracketed, its colons are not a port
        let (host, port) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
            Some((host, "")) => (host, default_port),
            Some((host, after)) => {
                let port = after.strip_prefix(':').unwrap_or(after);
                (host, port.parse::<u16>().map_err(|_| invalid_port(port))?)
            }
            None => match rest.rsplit_once(':') {
                Some((host, port)) => (host, port.parse::<u16>().map_err(|_| invalid_port(port))?),
                None => (rest, default_port),
            },
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!("broker URL {url:?} has no valid host"));
        }
        if port == 0 {
            return Err(format!(
                "broker URL {url:?} has an invalid port 0 (1-65535)"
            ));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parsed(url: &str) -> (String, u16, bool) {
        let b = BrokerUrl::parse(url).unwrap();
        (b.host, b.port, b.tls)
    }

    #[test]
    fn schemes_default_ports_and_hosts() {
        assert_eq!(
            parsed("mqtt://127.0.0.1"),
            ("127.0.0.1".into(), 1883, false)
        );
        assert_eq!(parsed("tcp://broker:1884/"), ("broker".into(), 1884, false));
        assert_eq!(parsed("mqtts://broker"), ("broker".into(), 8883, true));
        assert_eq!(parsed("mqtts://[::1]:8884"), ("::1".into(), 8884, true));
        assert_eq!(parsed("mqtt://[::1]"), ("::1".into(), 1883, false));
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, why) in [
            ("http://x", "must start with"),
            ("mqtt://:1883", "no valid host"),
            ("mqtt://h:99999", "invalid port"),
            ("mqtt://h:x", "invalid port"),
            ("mqtt://h:0", "invalid port 0"),
            ("mqtt://a/b:1", "no valid host"),
            ("mqtt://[::1]x", "invalid port"),
        ] {
            let err = BrokerUrl::parse(url).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn display_round_trips() {
        for url in ["mqtt://h:1883", "mqtts://[::1]:8883"] {
            assert_eq!(BrokerUrl::parse(url).unwrap().to_string(), url);
        }
    }
}
