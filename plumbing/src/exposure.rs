//! A warning when a listener is reachable from other hosts without the protection that makes that
//! safe: TLS (else envelopes and bearer tokens cross the network in cleartext) and, on the public
//! endpoints, authorization (else anyone who can connect reads every app's logs).
//!
//! Loopback, the embedded default, never warns. The `/metrics` listeners are left out on purpose:
//! Prometheus scrapes them from other hosts in every deployment, and they carry counters only.

use std::net::SocketAddr;

/// What a listener has that makes it safe off loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protection {
    pub tls: bool,
    /// `None` for internal hops, where mutual TLS is the authentication.
    pub auth: Option<bool>,
}

/// The warning for `what` listening on `addr` with `protection`; `None` when there is nothing to say.
pub fn exposure_warning(what: &str, addr: SocketAddr, protection: Protection) -> Option<String> {
    if addr.ip().is_loopback() {
        return None;
    }
    let missing = match (protection.tls, protection.auth) {
        (false, Some(false)) => "without TLS or auth: anyone who can connect reads every app's logs, in cleartext",
        (false, _) => "without TLS: envelopes (and any bearer token) cross the network in cleartext",
        (true, Some(false)) => "without auth: anyone who can connect reads every app's logs",
        (true, _) => return None,
    };
    Some(format!("{what} listens on {addr}, off loopback, {missing}"))
}

/// Logs [`exposure_warning`] at `warn` level, once, when there is one.
pub fn warn_if_exposed(what: &str, addr: SocketAddr, protection: Protection) {
    if let Some(warning) = exposure_warning(what, addr, protection) {
        tracing::warn!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS_AND_AUTH: Protection = Protection { tls: true, auth: Some(true) };

    #[test]
    fn loopback_never_warns() {
        for addr in ["127.0.0.1:8082", "127.3.2.1:1", "[::1]:8080"] {
            let addr = addr.parse().unwrap();
            assert_eq!(exposure_warning("x", addr, Protection { tls: false, auth: Some(false) }), None);
        }
    }

    #[test]
    fn off_loopback_each_missing_protection_is_named() {
        let addr: SocketAddr = "0.0.0.0:8088".parse().unwrap();
        assert_eq!(exposure_warning("RLP gateway", addr, TLS_AND_AUTH), None);
        assert_eq!(exposure_warning("Doppler gRPC", addr, Protection { tls: true, auth: None }), None);
        let plain = exposure_warning("Doppler gRPC", addr, Protection { tls: false, auth: None }).unwrap();
        assert!(plain.starts_with("Doppler gRPC listens on 0.0.0.0:8088, off loopback, without TLS"), "{plain}");
        let open = exposure_warning("RLP gateway", addr, Protection { tls: true, auth: Some(false) }).unwrap();
        assert!(open.contains("without auth"), "{open}");
        let both =
            exposure_warning("RLP gateway", "[::]:8088".parse().unwrap(), Protection { tls: false, auth: Some(false) });
        assert!(both.unwrap().contains("without TLS or auth"));
    }
}
