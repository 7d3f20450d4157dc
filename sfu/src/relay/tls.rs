//! Mutual authentication of relay connections with the nodes' ed25519 identity keys.
//!
//! Both sides present a raw public key (RFC 7250) instead of a certificate: the
//! ed25519 `SubjectPublicKeyInfo` of their node key, and prove possession with the
//! TLS 1.3 handshake signature. There are no certificate authorities, names or
//! expiry dates: the dialing side accepts exactly the key it dialed, and the
//! accepting side accepts exactly the keys the node told it about. Anything else
//! fails the handshake.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use quinn::rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature_with_raw_key};
use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use quinn::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use quinn::rustls::sign::CertifiedKey;
use quinn::rustls::{
    self, CertificateError, DigitallySignedStruct, DistinguishedName, Error as TlsError, PeerIncompatible, SignatureScheme,
};

use super::NodeKey;

/// The ALPN protocol of the relay; a new wire format gets a new name.
pub const ALPN: &[u8] = b"together-relay/1";

/// DER prefix of an ed25519 `SubjectPublicKeyInfo` (RFC 8410), followed by the key.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
/// DER prefix of an ed25519 PKCS #8 v1 private key, followed by the 32-byte seed.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The ed25519 `SubjectPublicKeyInfo` of a node key.
pub fn spki(key: &NodeKey) -> Vec<u8> {
    let mut out = SPKI_PREFIX.to_vec();
    out.extend_from_slice(&key.0);
    out
}

/// The node key in an ed25519 `SubjectPublicKeyInfo`, if it is one.
pub fn key_of_spki(der: &[u8]) -> Option<NodeKey> {
    let key = der.strip_prefix(&SPKI_PREFIX[..])?;
    Some(NodeKey(key.try_into().ok()?))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// This node's key, loaded for signing.
pub struct Identity {
    pub key: NodeKey,
    certified: Arc<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

impl Identity {
    /// Loads the ed25519 secret key `seed` (32 bytes, as ed25519-dalek stores it).
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, TlsError> {
        let provider = provider();
        let mut pkcs8 = PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(seed);
        let signing = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)))?;
        let public = signing
            .public_key()
            .and_then(|spki| key_of_spki(spki.as_ref()))
            .ok_or_else(|| TlsError::General("not an ed25519 key".to_owned()))?;
        let certified = Arc::new(CertifiedKey::new(vec![CertificateDer::from(spki(&public))], signing));
        Ok(Self { key: public, certified, provider })
    }

    /// The QUIC client configuration for dialing the node with key `expected`.
    pub fn client_config(&self, expected: NodeKey) -> Result<QuicClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ExpectKey {
                expected,
                algorithms: self.provider.signature_verification_algorithms,
            }))
            .with_client_cert_resolver(Arc::new(rustls::client::AlwaysResolvesClientRawPublicKeys::new(
                Arc::clone(&self.certified),
            )));
        config.alpn_protocols = vec![ALPN.to_vec()];
        QuicClientConfig::try_from(config).map_err(|e| TlsError::General(e.to_string()))
    }

    /// The QUIC server configuration: clients must present one of `allowed`.
    pub fn server_config(&self, allowed: Arc<RwLock<HashSet<NodeKey>>>) -> Result<QuicServerConfig, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(AllowedKeys {
                allowed,
                algorithms: self.provider.signature_verification_algorithms,
            }))
            .with_cert_resolver(Arc::new(rustls::server::AlwaysResolvesServerRawPublicKeys::new(Arc::clone(
                &self.certified,
            ))));
        config.alpn_protocols = vec![ALPN.to_vec()];
        QuicServerConfig::try_from(config).map_err(|e| TlsError::General(e.to_string()))
    }
}

/// The node key a finished handshake authenticated.
pub fn peer_key(connection: &quinn::Connection) -> Option<NodeKey> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    key_of_spki(certs.first()?.as_ref())
}

fn check_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, TlsError> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(PeerIncompatible::NoSignatureSchemesInCommon.into());
    }
    verify_tls13_signature_with_raw_key(message, &SubjectPublicKeyInfoDer::from(cert.as_ref()), dss, algorithms)
}

/// The dialing side: the server must be the node dialed.
#[derive(Debug)]
struct ExpectKey {
    expected: NodeKey,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ExpectKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match key_of_spki(end_entity.as_ref()) {
            Some(key) if key == self.expected && intermediates.is_empty() => Ok(ServerCertVerified::assertion()),
            _ => Err(TlsError::InvalidCertificate(CertificateError::ApplicationVerificationFailure)),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(PeerIncompatible::Tls13RequiredForQuic.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        check_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The accepting side: the client must be a node this one expects.
#[derive(Debug)]
struct AllowedKeys {
    allowed: Arc<RwLock<HashSet<NodeKey>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AllowedKeys {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let known = key_of_spki(end_entity.as_ref()).is_some_and(|key| {
            self.allowed
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&key)
        });
        if known && intermediates.is_empty() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(TlsError::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        Err(PeerIncompatible::Tls13RequiredForQuic.into())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        check_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_public_key_round_trips_through_its_spki() {
        let identity = Identity::from_seed(&[7; 32]).expect("ed25519 seed");
        assert_eq!(key_of_spki(&spki(&identity.key)), Some(identity.key));
        assert_eq!(key_of_spki(&[0x30, 0x2a]), None);
        let mut long = spki(&identity.key);
        long.push(0);
        assert_eq!(key_of_spki(&long), None);
        // A different seed is a different key.
        assert_ne!(Identity::from_seed(&[8; 32]).expect("seed").key, identity.key);
    }
}
