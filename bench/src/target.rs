//! Which addresses the benchmark may aim at: loopback only, unless `--allow-remote`.
//!
//! A load generator pointed at the wrong host is an outage; the default makes that impossible.

use std::net::SocketAddr;

use crate::BenchError;

/// Resolves `addr` (`host:port`, optionally prefixed with `http://`) and refuses it unless every
/// address it resolves to is loopback or `allow_remote` is set.
pub async fn resolve(addr: &str, allow_remote: bool) -> Result<SocketAddr, BenchError> {
    let host_port = addr.strip_prefix("http://").unwrap_or(addr);
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host(host_port)
        .await
        .map_err(|e| BenchError::Address {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?
        .collect();
    let first = *resolved.first().ok_or_else(|| BenchError::Address {
        addr: addr.to_owned(),
        reason: "resolves to no address".into(),
    })?;
    if !allow_remote && !resolved.iter().all(|a| a.ip().is_loopback()) {
        return Err(BenchError::Remote(addr.to_owned()));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_is_accepted_in_any_spelling() {
        for a in [
            "127.0.0.1:50051",
            "http://127.0.0.1:8080",
            "[::1]:9",
            "localhost:1",
        ] {
            let got = resolve(a, false).await.unwrap();
            assert!(got.ip().is_loopback(), "{a}");
        }
    }

    #[tokio::test]
    async fn other_hosts_need_allow_remote() {
        for a in ["10.0.0.1:50051", "0.0.0.0:1", "192.168.1.2:80"] {
            assert!(matches!(
                resolve(a, false).await,
                Err(BenchError::Remote(_))
            ));
            assert!(resolve(a, true).await.is_ok());
        }
    }

    #[tokio::test]
    async fn garbage_is_an_address_error() {
        assert!(matches!(
            resolve("no-port", true).await,
            Err(BenchError::Address { .. })
        ));
    }
}
