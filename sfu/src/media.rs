//! The media profile every peer connection uses — Opus only, as browsers offer it —
//! and how connections are built: the SFU's as sans-IO `rtc` cores its engine drives,
//! the test client's with the async `webrtc` builder and the settings measured to work
//! on loopback: explicit bind addresses, mDNS off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rtc::ice::mdns::MulticastDnsMode;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCBundlePolicy,
    RTCConfigurationBuilder, RTCIceCandidateType, RTCRtcpMuxPolicy, Registry, SettingEngineBuilder,
    configure_rtcp_reports,
};
use webrtc::rtp_transceiver::RTCRtpTransceiverDirection;

/// Opus's payload type, as Chromium and Firefox offer it.
pub const OPUS_PAYLOAD_TYPE: u8 = 111;
/// Opus's RTP clock rate.
pub const OPUS_CLOCK_RATE: u32 = 48_000;
/// RTP timestamp ticks in one 20 ms Opus frame.
pub const OPUS_FRAME_TICKS: u32 = OPUS_CLOCK_RATE / 50;
/// RFC 6464 client-to-mixer audio level.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// Opus as Chromium offers it: 48 kHz, two channels, in-band FEC.
pub fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: "audio/opus".to_owned(),
        clock_rate: OPUS_CLOCK_RATE,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

/// A media engine that knows only Opus, and the audio-level extension in the
/// direction `audio_level` (the SFU receives it; a client sends it).
pub(crate) fn media_engine(
    audio_level: RTCRtpTransceiverDirection,
) -> webrtc::error::Result<MediaEngine> {
    let mut engine = MediaEngine::default();
    engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: OPUS_PAYLOAD_TYPE,
        },
        RtpCodecKind::Audio,
    )?;
    engine.register_header_extension(
        RTCRtpHeaderExtensionCapability {
            uri: AUDIO_LEVEL_URI.to_owned(),
        },
        RtpCodecKind::Audio,
        Some(audio_level),
    )?;
    Ok(engine)
}

/// What differs between the SFU's peer connections and a test client's.
pub(crate) struct PeerSettings {
    /// Exact socket addresses to bind (port 0 for ephemeral).
    pub udp_addrs: Vec<SocketAddr>,
    /// Addresses announced instead of the bound ones.
    pub public_ips: Vec<String>,
    /// ICE servers this peer gathers through.
    pub ice_servers: Vec<webrtc::peer_connection::RTCIceServer>,
    /// Direction the audio-level extension is registered for.
    pub audio_level: RTCRtpTransceiverDirection,
    /// `(disconnected, failed, keepalive)`.
    pub ice_timeouts: (Duration, Duration, Duration),
    /// Generate RTCP sender and receiver reports.
    pub rtcp_reports: bool,
}

/// Builds a peer connection with Opus, SR/RR reports (if asked), max-bundle and mDNS
/// off.
pub(crate) async fn build_peer_connection(
    settings: PeerSettings,
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> webrtc::error::Result<Arc<dyn PeerConnection>> {
    let media_engine = media_engine(settings.audio_level)?;
    let registry = if settings.rtcp_reports {
        configure_rtcp_reports(Registry::new())
    } else {
        Registry::new()
    };
    let (disconnected, failed, keepalive) = settings.ice_timeouts;
    let mut setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_ice_timeouts(Some(disconnected), Some(failed), Some(keepalive));
    if !settings.public_ips.is_empty() {
        setting_engine = setting_engine.with_nat_1to1_ips(settings.public_ips, RTCIceCandidateType::Host);
    }
    let configuration = RTCConfigurationBuilder::new()
        .with_ice_servers(settings.ice_servers)
        .with_bundle_policy(RTCBundlePolicy::MaxBundle)
        .with_rtcp_mux_policy(RTCRtcpMuxPolicy::Require)
        .build();
    let pc = PeerConnectionBuilder::new()
        .with_configuration(configuration)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(setting_engine.build())
        .with_handler(handler)
        .with_udp_addrs(settings.udp_addrs)
        .build()
        .await?;
    Ok(Arc::new(pc))
}

/// What the SFU's connections need.
pub(crate) struct CoreSettings {
    /// Addresses announced instead of the bound ones.
    pub public_ips: Vec<String>,
    /// `(disconnected, failed, keepalive)`.
    pub ice_timeouts: (Duration, Duration, Duration),
    /// Generate RTCP sender and receiver reports.
    pub rtcp_reports: bool,
}

/// Builds one of the SFU's connections: a sans-IO core (no sockets, no tasks) that
/// the engine feeds datagrams and polls. It receives the audio-level extension.
pub(crate) fn build_core(settings: &CoreSettings) -> webrtc::error::Result<RTCPeerConnection> {
    let media_engine = media_engine(RTCRtpTransceiverDirection::Recvonly)?;
    let registry = if settings.rtcp_reports {
        configure_rtcp_reports(Registry::new())
    } else {
        Registry::new()
    };
    let (disconnected, failed, keepalive) = settings.ice_timeouts;
    let mut setting_engine = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_ice_timeouts(Some(disconnected), Some(failed), Some(keepalive));
    if !settings.public_ips.is_empty() {
        setting_engine = setting_engine.with_nat_1to1_ips(settings.public_ips.clone(), RTCIceCandidateType::Host);
    }
    let configuration = RTCConfigurationBuilder::new()
        .with_bundle_policy(RTCBundlePolicy::MaxBundle)
        .with_rtcp_mux_policy(RTCRtcpMuxPolicy::Require)
        .build();
    RTCPeerConnectionBuilder::new()
        .with_configuration(configuration)
        .with_media_engine(media_engine)
        .with_interceptor_registry(registry)
        .with_setting_engine(setting_engine.build())
        .build(std::time::Instant::now())
}

/// The audio level (0 = loudest, 127 = silence, in -dBov) carried by an RFC 6464
/// extension element.
pub(crate) fn audio_level(payload: &[u8]) -> Option<u8> {
    payload.first().map(|b| b & 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_level_ignores_the_voice_bit() {
        assert_eq!(audio_level(&[0x80 | 30]), Some(30));
        assert_eq!(audio_level(&[127]), Some(127));
        assert_eq!(audio_level(&[]), None);
    }
}
