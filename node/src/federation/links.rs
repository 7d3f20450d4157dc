//! Invite links that work from any node (spec/federation.md §10):
//!
//! ```text
//! together://invite/<code>?server=<community id>&peer=<multiaddr>[&peer=<multiaddr>…]
//! ```
//!
//! Each `peer` is a percent-encoded multiaddr of the node that made the
//! invite, ending in `/p2p/<peer id>`. A user pastes the link into their
//! own node, which dials the first reachable address and asks that node to
//! admit them (`POST /api/federation/join` with `{"link": …}`).

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use uuid::Uuid;

/// The scheme and path prefix of an invite link.
pub const LINK_PREFIX: &str = "together://invite/";
/// Most peer addresses a link may carry (and a node puts in one).
pub const MAX_LINK_PEERS: usize = 8;
/// Longest link accepted.
pub const MAX_LINK_CHARS: usize = 4096;

/// A parsed invite link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteLink {
    pub code: String,
    pub server: Option<Uuid>,
    pub peers: Vec<Multiaddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("an invite link starts with together://invite/")]
    Scheme,
    #[error("the invite code in the link is missing or malformed")]
    Code,
    #[error("the link's {0} parameter is malformed")]
    Param(&'static str),
    #[error("the link names no peer address ending in /p2p/<peer id>")]
    NoPeer,
    #[error("the link is too long")]
    TooLong,
}

/// Builds the link of an invite.
pub fn build(code: &str, server: Uuid, peers: &[String]) -> String {
    let mut link = format!("{LINK_PREFIX}{}?server={server}", encode(code));
    for peer in peers.iter().take(MAX_LINK_PEERS) {
        link.push_str("&peer=");
        link.push_str(&encode(peer));
    }
    link
}

/// Parses an invite link; unknown parameters are ignored, peers without a
/// `/p2p/<peer id>` are left out.
pub fn parse(link: &str) -> Result<InviteLink, LinkError> {
    let link = link.trim();
    if link.len() > MAX_LINK_CHARS {
        return Err(LinkError::TooLong);
    }
    let rest = link.strip_prefix(LINK_PREFIX).ok_or(LinkError::Scheme)?;
    let (code, query) = rest.split_once('?').unwrap_or((rest, ""));
    let code = decode(code).ok_or(LinkError::Code)?;
    if code.is_empty() || code.len() > 32 || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(LinkError::Code);
    }
    let mut server = None;
    let mut peers = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "server" => {
                let value = decode(value).ok_or(LinkError::Param("server"))?;
                server = Some(value.parse().map_err(|_| LinkError::Param("server"))?);
            }
            "peer" if peers.len() < MAX_LINK_PEERS => {
                let value = decode(value).ok_or(LinkError::Param("peer"))?;
                let addr: Multiaddr = value.parse().map_err(|_| LinkError::Param("peer"))?;
                if addr.iter().any(|p| matches!(p, Protocol::P2p(_))) {
                    peers.push(addr);
                }
            }
            _ => {}
        }
    }
    if peers.is_empty() {
        return Err(LinkError::NoPeer);
    }
    Ok(InviteLink { code, server, peers })
}

/// Addresses worth putting in an invite: dialable ones, loopback last.
pub fn invite_addrs(listen_addrs: &[String]) -> Vec<String> {
    let mut addrs: Vec<(bool, String)> = listen_addrs
        .iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok().map(|m| (m, a)))
        .filter(|(m, _)| super::store::dialable(m))
        .map(|(m, a)| {
            let loopback = m.iter().any(|p| match p {
                Protocol::Ip4(ip) => ip.is_loopback(),
                Protocol::Ip6(ip) => ip.is_loopback(),
                _ => false,
            });
            (loopback, a.clone())
        })
        .collect();
    addrs.sort_by_key(|(loopback, _)| *loopback);
    addrs.into_iter().map(|(_, a)| a).take(MAX_LINK_PEERS).collect()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 2);
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = value.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: &str = "/ip4/127.0.0.1/udp/4001/quic-v1/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp";

    #[test]
    fn links_round_trip() {
        let server = Uuid::now_v7();
        let link = build("aBc123", server, &[ADDR.to_string()]);
        assert!(link.starts_with("together://invite/aBc123?server="));
        let Ok(parsed) = parse(&link) else {
            panic!("a valid link: {link}");
        };
        assert_eq!(parsed.code, "aBc123");
        assert_eq!(parsed.server, Some(server));
        assert_eq!(parsed.peers.len(), 1);
        assert_eq!(parsed.peers[0].to_string(), ADDR);
    }

    #[test]
    fn bad_links_are_refused() {
        assert_eq!(parse("https://example.com/invite/x"), Err(LinkError::Scheme));
        assert_eq!(parse("together://invite/?peer=x"), Err(LinkError::Code));
        assert_eq!(parse("together://invite/abc"), Err(LinkError::NoPeer));
        assert_eq!(parse("together://invite/abc?peer=%2Fip4%2F1.2.3.4%2Ftcp%2F1"), Err(LinkError::NoPeer));
        assert_eq!(parse("together://invite/abc?peer=%zz"), Err(LinkError::Param("peer")));
        assert_eq!(parse("together://invite/abc?server=nope&peer=x"), Err(LinkError::Param("server")));
        assert_eq!(parse("together://invite/a%2Fb?peer=x"), Err(LinkError::Code));
    }

    #[test]
    fn invites_prefer_public_addresses() {
        let addrs = vec![
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp".to_string(),
            "/ip4/0.0.0.0/tcp/1/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp".to_string(),
            "/ip4/192.0.2.7/tcp/1/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp".to_string(),
        ];
        let picked = invite_addrs(&addrs);
        assert_eq!(picked.len(), 2);
        assert!(picked[0].starts_with("/ip4/192.0.2.7"));
    }
}
