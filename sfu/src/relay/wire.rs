//! The relay's wire format, free of IO: control messages on the bidirectional
//! control stream and the framing of media datagrams (`spec/voice.md`, "Node-to-node
//! relay").
//!
//! Control frame: `length (u16, big-endian) || type (u8) || body`, where `length`
//! counts the type byte and the body. Every field is fixed-size and big-endian, UUIDs
//! are their 16 bytes. A frame whose length or body does not match its type is an
//! error; the connection that sent it is closed.
//!
//! Media datagram: `flow (u32, big-endian) || RTP packet`.

use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::state::{PeerId, VoiceFlags};

/// The largest control frame body (type byte included) either side accepts.
pub const MAX_FRAME: usize = 256;
/// The shortest RTP packet (a fixed header).
pub const MIN_RTP: usize = 12;
/// The largest media datagram accepted (flow id included).
pub const MAX_DATAGRAM: usize = 1500;

/// The version of the control protocol this code speaks.
pub const VERSION: u8 = 1;

const HELLO: u8 = 0;
const PUBLISH: u8 = 1;
const UNPUBLISH: u8 = 2;
const SUBSCRIBE: u8 = 3;
const UNSUBSCRIBE: u8 = 4;
const FLAGS: u8 = 5;

/// A control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The first frame in each direction of the control stream.
    Hello {
        /// [`VERSION`].
        version: u8,
    },
    /// The sender has a local participant's track for `room`, numbered `flow`.
    Publish {
        /// Unique per connection and direction, chosen by the publisher.
        flow: u32,
        /// The voice channel.
        room: Uuid,
        /// The participant (user and gateway session).
        peer: PeerId,
        /// Its mute and deafen switches.
        flags: VoiceFlags,
    },
    /// The track `flow` is gone.
    Unpublish {
        /// The flow.
        flow: u32,
    },
    /// Send me `flow`: I have a listener.
    Subscribe {
        /// The flow.
        flow: u32,
    },
    /// Stop sending `flow`.
    Unsubscribe {
        /// The flow.
        flow: u32,
    },
    /// The participant of `flow` muted, unmuted, deafened or undeafened.
    Flags {
        /// The flow.
        flow: u32,
        /// The new switches.
        flags: VoiceFlags,
    },
}

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length prefix is 0 or larger than [`MAX_FRAME`].
    #[error("bad frame length {0}")]
    BadLength(usize),
    /// The type byte is not one of the messages.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// The body's size does not match its type.
    #[error("message type {kind} with a {len}-byte body")]
    BadBody {
        /// The type byte.
        kind: u8,
        /// The body's size.
        len: usize,
    },
    /// Flag bits outside the four switches are set.
    #[error("unknown flag bits {0:#04x}")]
    BadFlags(u8),
    /// A datagram shorter than a flow id and an RTP header, or longer than allowed.
    #[error("bad datagram size {0}")]
    BadDatagram(usize),
}

fn flags_byte(flags: VoiceFlags) -> u8 {
    u8::from(flags.self_mute)
        | u8::from(flags.self_deaf) << 1
        | u8::from(flags.server_mute) << 2
        | u8::from(flags.server_deaf) << 3
}

fn parse_flags(byte: u8) -> Result<VoiceFlags, WireError> {
    if byte & 0xF0 != 0 {
        return Err(WireError::BadFlags(byte));
    }
    Ok(VoiceFlags {
        self_mute: byte & 1 != 0,
        self_deaf: byte & 2 != 0,
        server_mute: byte & 4 != 0,
        server_deaf: byte & 8 != 0,
    })
}

impl Control {
    /// The whole frame, length prefix included.
    pub fn encode(&self) -> Bytes {
        let mut body = BytesMut::with_capacity(64);
        match *self {
            Control::Hello { version } => {
                body.put_u8(HELLO);
                body.put_u8(version);
            }
            Control::Publish { flow, room, peer, flags } => {
                body.put_u8(PUBLISH);
                body.put_u32(flow);
                body.put_slice(room.as_bytes());
                body.put_slice(peer.user.as_bytes());
                body.put_slice(peer.session.as_bytes());
                body.put_u8(flags_byte(flags));
            }
            Control::Unpublish { flow } => {
                body.put_u8(UNPUBLISH);
                body.put_u32(flow);
            }
            Control::Subscribe { flow } => {
                body.put_u8(SUBSCRIBE);
                body.put_u32(flow);
            }
            Control::Unsubscribe { flow } => {
                body.put_u8(UNSUBSCRIBE);
                body.put_u32(flow);
            }
            Control::Flags { flow, flags } => {
                body.put_u8(FLAGS);
                body.put_u32(flow);
                body.put_u8(flags_byte(flags));
            }
        }
        let mut frame = BytesMut::with_capacity(body.len() + 2);
        // Bodies are at most 54 bytes.
        frame.put_u16(u16::try_from(body.len()).unwrap_or(u16::MAX));
        frame.put_slice(&body);
        frame.freeze()
    }

    /// Checks a frame's length prefix before its body is read.
    pub fn check_length(length: u16) -> Result<usize, WireError> {
        let length = usize::from(length);
        if length == 0 || length > MAX_FRAME {
            return Err(WireError::BadLength(length));
        }
        Ok(length)
    }

    /// Decodes a frame body (type byte and fields, without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Control, WireError> {
        let (&kind, rest) = body.split_first().ok_or(WireError::BadLength(0))?;
        let bad = || WireError::BadBody { kind, len: rest.len() };
        let flow = |rest: &[u8]| -> Option<u32> { Some(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)) };
        let uuid = |at: usize| -> Option<Uuid> { Some(Uuid::from_bytes(rest.get(at..at + 16)?.try_into().ok()?)) };
        match kind {
            HELLO => match rest {
                [version] => Ok(Control::Hello { version: *version }),
                _ => Err(bad()),
            },
            PUBLISH => {
                if rest.len() != 4 + 16 * 3 + 1 {
                    return Err(bad());
                }
                let flow = flow(rest).ok_or_else(bad)?;
                let room = uuid(4).ok_or_else(bad)?;
                let user = uuid(20).ok_or_else(bad)?;
                let session = uuid(36).ok_or_else(bad)?;
                let flags = parse_flags(rest[52])?;
                Ok(Control::Publish { flow, room, peer: PeerId::new(user, session), flags })
            }
            UNPUBLISH | SUBSCRIBE | UNSUBSCRIBE => {
                if rest.len() != 4 {
                    return Err(bad());
                }
                let flow = flow(rest).ok_or_else(bad)?;
                Ok(match kind {
                    UNPUBLISH => Control::Unpublish { flow },
                    SUBSCRIBE => Control::Subscribe { flow },
                    _ => Control::Unsubscribe { flow },
                })
            }
            FLAGS => {
                if rest.len() != 5 {
                    return Err(bad());
                }
                let flow = flow(rest).ok_or_else(bad)?;
                Ok(Control::Flags { flow, flags: parse_flags(rest[4])? })
            }
            other => Err(WireError::UnknownType(other)),
        }
    }
}

/// Frames an RTP packet for `flow`.
pub fn datagram(flow: u32, rtp: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + rtp.len());
    out.put_u32(flow);
    out.put_slice(rtp);
    out.freeze()
}

/// Splits a media datagram into its flow and RTP packet.
pub fn parse_datagram(data: &[u8]) -> Result<(u32, &[u8]), WireError> {
    if data.len() < 4 + MIN_RTP || data.len() > MAX_DATAGRAM {
        return Err(WireError::BadDatagram(data.len()));
    }
    let (flow, rtp) = data.split_at(4);
    let flow = u32::from_be_bytes([flow[0], flow[1], flow[2], flow[3]]);
    Ok((flow, rtp))
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn roundtrip(message: Control) -> Bytes {
        let frame = message.encode();
        let length = Control::check_length(u16::from_be_bytes([frame[0], frame[1]])).expect("length");
        assert_eq!(length, frame.len() - 2);
        assert_eq!(Control::decode(&frame[2..]), Ok(message));
        frame
    }

    #[test]
    fn messages_roundtrip_with_the_documented_bytes() {
        let room = Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
        let peer = PeerId::new(Uuid::from_u128(1), Uuid::from_u128(2));
        let flags = VoiceFlags { self_mute: true, server_deaf: true, ..Default::default() };
        let frame = roundtrip(Control::Publish { flow: 7, room, peer, flags });
        // The test vector in spec/voice.md.
        let mut expected = vec![0x00, 0x36, 0x01, 0, 0, 0, 7];
        expected.extend_from_slice(room.as_bytes());
        expected.extend_from_slice(&[0; 15]);
        expected.push(1);
        expected.extend_from_slice(&[0; 15]);
        expected.push(2);
        expected.push(0x09);
        assert_eq!(&frame[..], &expected[..]);

        assert_eq!(&roundtrip(Control::Subscribe { flow: 0x0102_0304 })[..], &[0, 5, 3, 1, 2, 3, 4]);
        assert_eq!(&roundtrip(Control::Hello { version: VERSION })[..], &[0, 2, 0, 1]);
        roundtrip(Control::Unpublish { flow: 1 });
        roundtrip(Control::Unsubscribe { flow: u32::MAX });
        roundtrip(Control::Flags { flow: 9, flags: VoiceFlags { self_deaf: true, ..Default::default() } });
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert_eq!(Control::check_length(0), Err(WireError::BadLength(0)));
        assert!(Control::check_length(u16::MAX).is_err());
        assert_eq!(Control::decode(&[]), Err(WireError::BadLength(0)));
        assert_eq!(Control::decode(&[0x42, 0, 0, 0, 1]), Err(WireError::UnknownType(0x42)));
        assert!(matches!(Control::decode(&[SUBSCRIBE, 0, 0, 1]), Err(WireError::BadBody { .. })));
        assert!(matches!(Control::decode(&[PUBLISH, 0, 0, 0, 1]), Err(WireError::BadBody { .. })));
        assert_eq!(Control::decode(&[FLAGS, 0, 0, 0, 1, 0x10]), Err(WireError::BadFlags(0x10)));
        // Every prefix of a valid frame is refused without a panic.
        let frame = Control::Publish {
            flow: 1,
            room: Uuid::nil(),
            peer: PeerId::new(Uuid::nil(), Uuid::nil()),
            flags: VoiceFlags::default(),
        }
        .encode();
        for end in 2..frame.len() {
            assert!(Control::decode(&frame[2..end]).is_err());
        }
    }

    #[test]
    fn datagrams_carry_a_flow_and_an_rtp_packet() {
        let rtp = [0x80u8; 20];
        let framed = datagram(0xdead_beef, &rtp);
        assert_eq!(parse_datagram(&framed), Ok((0xdead_beef, &rtp[..])));
        assert_eq!(parse_datagram(&framed[..15]), Err(WireError::BadDatagram(15)));
        assert!(parse_datagram(&[0; MAX_DATAGRAM + 1]).is_err());
    }
}
