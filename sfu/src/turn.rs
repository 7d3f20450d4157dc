//! ICE servers as clients receive them, and coturn's time-limited credentials.
//!
//! coturn's REST API scheme (`use-auth-secret` + `static-auth-secret` in
//! `turnserver.conf`, draft-uberti-behave-turn-rest): the username is
//! `<unix expiry>:<user id>` and the password is
//! `base64(HMAC-SHA1(shared secret, username))`. coturn recomputes the HMAC and
//! refuses the allocation after the expiry, so a leaked credential is useful for
//! `rest_ttl_secs` at most and the node never stores per-user TURN accounts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;

use crate::config::IceServerConfig;

/// An ICE server as a client's `RTCPeerConnection` configuration takes it
/// (`{urls, username?, credential?}`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`/`turn:` URLs.
    pub urls: Vec<String>,
    /// TURN username, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl std::fmt::Debug for IceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("credential", &self.credential.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Mints coturn REST-API credentials for `user`, valid until `now + ttl`.
///
/// Returns `(username, credential)`.
pub fn rest_credentials(secret: &str, user: &str, ttl: Duration, now: SystemTime) -> (String, String) {
    let expiry = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(ttl)
        .as_secs();
    let username = format!("{expiry}:{user}");
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let credential = match Hmac::<Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(username.as_bytes());
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    (username, credential)
}

/// The ICE servers for one user at `now`: static entries are copied, REST-secret
/// entries get fresh credentials.
pub(crate) fn ice_servers_for(config: &[IceServerConfig], user: &str, now: SystemTime) -> Vec<IceServer> {
    config
        .iter()
        .map(|server| match &server.rest_secret {
            Some(secret) if !secret.is_empty() => {
                let (username, credential) =
                    rest_credentials(secret, user, Duration::from_secs(server.rest_ttl_secs), now);
                IceServer {
                    urls: server.urls.clone(),
                    username: Some(username),
                    credential: Some(credential),
                }
            }
            _ => IceServer {
                urls: server.urls.clone(),
                username: server.username.clone(),
                credential: server.credential.clone(),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test vector, computed independently with Python's `hmac` module:
    /// `base64(hmac.new(b"north-wind", b"1700003600:<user>", sha1).digest())`.
    #[test]
    fn rest_credentials_match_coturn_scheme() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (username, credential) = rest_credentials(
            "north-wind",
            "0190a3c4-1d2e-7f00-8000-000000000001",
            Duration::from_secs(3600),
            now,
        );
        assert_eq!(username, "1700003600:0190a3c4-1d2e-7f00-8000-000000000001");
        assert_eq!(credential, "a0Nj+UX4cRu2C8Vk53j1yN6n9+Y=");
    }

    #[test]
    fn static_servers_pass_through() {
        let config = vec![
            IceServerConfig {
                urls: vec!["stun:stun.example.org:3478".into()],
                ..Default::default()
            },
            IceServerConfig {
                urls: vec!["turn:turn.example.org:3478?transport=udp".into()],
                rest_secret: Some("north-wind".into()),
                rest_ttl_secs: 600,
                ..Default::default()
            },
        ];
        let servers = ice_servers_for(&config, "alice", UNIX_EPOCH + Duration::from_secs(100));
        assert_eq!(servers[0].username, None);
        assert_eq!(servers[1].username.as_deref(), Some("700:alice"));
        assert!(servers[1].credential.is_some());
        assert!(!format!("{:?}", servers[1]).contains(servers[1].credential.as_deref().unwrap_or("x")));
    }
}
