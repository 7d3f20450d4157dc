//! Facts the SFU reads from SDP text: whether a client's answer can answer the
//! outstanding offer (checked before the media stack sees it, because the stack changes
//! state before it has checked everything), the ICE username fragment and the
//! audio-level extension id.

use rtc::sdp::SessionDescription;

use crate::media::AUDIO_LEVEL_URI;

/// Checks that `answer` can answer `offer` (JSEP §5.3): the same media sections in
/// the same order, ICE credentials of its own, a DTLS fingerprint, and a DTLS role
/// that is not `actpass`.
pub(crate) fn validate_answer(offer: &SessionDescription, answer: &SessionDescription) -> Result<(), String> {
    if answer.media_descriptions.len() != offer.media_descriptions.len() {
        return Err(format!(
            "the answer has {} media sections, the offer {}",
            answer.media_descriptions.len(),
            offer.media_descriptions.len()
        ));
    }
    for (i, (ours, theirs)) in offer.media_descriptions.iter().zip(&answer.media_descriptions).enumerate() {
        if ours.media_name.media != theirs.media_name.media {
            return Err(format!("media section {i} is {:?}, not {:?}", theirs.media_name.media, ours.media_name.media));
        }
        let (our_mid, their_mid) = (ours.attribute("mid").flatten(), theirs.attribute("mid").flatten());
        if their_mid != our_mid {
            return Err(format!("media section {i} has mid {their_mid:?}, expected {our_mid:?}"));
        }
    }
    let attribute = |desc: &SessionDescription, key: &str| -> Option<String> {
        desc.attribute(key).cloned().or_else(|| {
            desc.media_descriptions
                .iter()
                .find_map(|m| m.attribute(key).flatten().map(str::to_owned))
        })
    };
    let (Some(ufrag), Some(_pwd)) = (attribute(answer, "ice-ufrag"), attribute(answer, "ice-pwd")) else {
        return Err("the answer has no ICE credentials".to_owned());
    };
    if attribute(offer, "ice-ufrag").as_ref() == Some(&ufrag) {
        return Err("the answer repeats the offer's ICE credentials".to_owned());
    }
    if attribute(answer, "fingerprint").is_none() {
        return Err("the answer has no DTLS fingerprint".to_owned());
    }
    match attribute(answer, "setup").as_deref() {
        None | Some("active" | "passive") => Ok(()),
        Some(other) => Err(format!("a=setup:{other} is not allowed in an answer")),
    }
}

/// The id the answer gives the audio-level extension, from its
/// `a=extmap:<id>[/<direction>] urn:ietf:params:rtp-hdrext:ssrc-audio-level` line.
pub(crate) fn audio_level_id(sdp: &str) -> Option<u8> {
    sdp.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("a=extmap:")?;
        let (id, uri) = rest.split_once(' ')?;
        if uri.split_whitespace().next()? != AUDIO_LEVEL_URI {
            return None;
        }
        let id: u8 = id.split('/').next()?.parse().ok()?;
        (1..=14).contains(&id).then_some(id)
    })
}

/// The first `a=ice-ufrag` of a description.
pub(crate) fn ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|line| line.trim().strip_prefix("a=ice-ufrag:"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ice_ufrag() {
        assert_eq!(ice_ufrag("v=0\r\na=ice-ufrag:abcd\r\n").as_deref(), Some("abcd"));
        assert_eq!(ice_ufrag("v=0\r\n"), None);
    }

    #[test]
    fn finds_the_audio_level_extension_id() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid\r\na=extmap:1/sendonly urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n";
        assert_eq!(audio_level_id(sdp), Some(1));
        assert_eq!(audio_level_id("v=0\r\na=extmap:99 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n"), None);
        assert_eq!(audio_level_id(""), None);
    }
}
