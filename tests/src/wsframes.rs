//! A lean WebSocket client for the load tools: the HTTP upgrade by hand,
//! and server frames found by walking their headers in whatever chunks
//! the socket gives, without assembling messages.
//!
//! `together-load` counts millions of frames per second on one core with
//! it: the socket is read in large chunks into one buffer per thread, and
//! each complete frame is handed to the caller as a slice of that buffer.
//! Only a frame cut by the end of a chunk is copied (into a per-connection
//! carry buffer, completed from the next chunk). Server frames must be
//! final (the servers measured never fragment) and unmasked, as RFC 6455
//! requires of a server.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opcode of a text frame.
pub const TEXT: u8 = 0x1;
/// Opcode of a close frame.
pub const CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const PING: u8 = 0x9;

/// Largest server frame accepted (READY of a big account is far below).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// A carry buffer larger than this is released once its frame is handled,
/// so one large READY does not stay with the connection.
const CARRY_KEEP: usize = 16 * 1024;

/// Why the server's byte stream is not a valid sequence of frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// A frame without FIN (fragmented message).
    Fragmented,
    /// A masked server frame.
    Masked,
    /// Longer than [`MAX_FRAME`].
    TooLarge,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameError::Fragmented => "fragmented server frame",
            FrameError::Masked => "masked server frame",
            FrameError::TooLarge => "server frame too large",
        })
    }
}

impl std::error::Error for FrameError {}

/// Header and payload length of the frame at the start of `buf`, or
/// `None` while the header is incomplete.
pub fn frame_len(buf: &[u8]) -> Result<Option<(usize, usize)>, FrameError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x80 == 0 {
        return Err(FrameError::Fragmented);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let (header, len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (4, usize::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                (10, usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX))
            }
            None => return Ok(None),
        },
        n => (2, usize::from(n)),
    };
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge);
    }
    Ok(Some((header, len)))
}

/// Splits a stream of server bytes into frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// The start of a frame the last chunk ended inside.
    carry: Vec<u8>,
}

impl FrameReader {
    /// Feeds the next chunk of the stream; `on(opcode, payload)` runs for
    /// every frame completed by it, in order.
    pub fn feed(&mut self, mut data: &[u8], mut on: impl FnMut(u8, &[u8])) -> Result<(), FrameError> {
        while !self.carry.is_empty() {
            match frame_len(&self.carry)? {
                Some((header, len)) => {
                    let need = header + len - self.carry.len();
                    if data.len() < need {
                        self.carry.extend_from_slice(data);
                        return Ok(());
                    }
                    self.carry.extend_from_slice(&data[..need]);
                    data = &data[need..];
                    on(self.carry[0] & 0x0f, &self.carry[header..]);
                    self.carry.clear();
                    if self.carry.capacity() > CARRY_KEEP {
                        self.carry = Vec::new();
                    }
                }
                None => {
                    // The header itself was cut (rare): complete it a byte
                    // at a time so no byte of the next frame is taken.
                    let Some((&byte, rest)) = data.split_first() else {
                        return Ok(());
                    };
                    self.carry.push(byte);
                    data = rest;
                }
            }
        }
        while !data.is_empty() {
            match frame_len(data)? {
                Some((header, len)) if data.len() >= header + len => {
                    on(data[0] & 0x0f, &data[header..header + len]);
                    data = &data[header + len..];
                }
                _ => {
                    self.carry.extend_from_slice(data);
                    break;
                }
            }
        }
        Ok(())
    }

    /// Bytes held for an incomplete frame.
    pub fn carried(&self) -> usize {
        self.carry.len()
    }
}

/// Appends a final, masked client text frame (clients must mask).
pub fn encode_client_text(out: &mut Vec<u8>, text: &[u8], mask: [u8; 4]) {
    out.push(0x80 | TEXT);
    let len = text.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// Appends a masked client close frame with status 1000.
pub fn encode_client_close(out: &mut Vec<u8>, mask: [u8; 4]) {
    out.extend_from_slice(&[0x80 | CLOSE, 0x80 | 2]);
    out.extend_from_slice(&mask);
    out.extend(1000u16.to_be_bytes().iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// Sends one masked text frame.
pub async fn send_text(stream: &mut TcpStream, text: &[u8], mask: [u8; 4]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(text.len() + 14);
    encode_client_text(&mut frame, text, mask);
    stream.write_all(&frame).await
}

/// A client connection during its handshakes: frames are read one at a
/// time into owned buffers (not the hot path).
#[derive(Debug, Default)]
pub struct Handshaking {
    pub reader: FrameReader,
    /// Frames already read but not yet asked for, in order.
    pub queued: std::collections::VecDeque<(u8, Vec<u8>)>,
}

impl Handshaking {
    /// The next frame: opcode and payload.
    pub async fn next(&mut self, stream: &mut TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(frame) = self.queued.pop_front() {
                return Ok(frame);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                anyhow::bail!("connection closed");
            }
            let queued = &mut self.queued;
            self.reader.feed(&chunk[..n], |op, payload| queued.push_back((op, payload.to_vec())))?;
        }
    }
}

/// The WebSocket upgrade (RFC 6455 §4) on a connected stream.
pub async fn handshake(stream: &mut TcpStream, host: &str, path: &str) -> anyhow::Result<Handshaking> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            anyhow::bail!("connection closed during the WebSocket upgrade");
        }
        response.extend_from_slice(&chunk[..n]);
        if let Some(i) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if response.len() > 16 * 1024 {
            anyhow::bail!("WebSocket upgrade response too long");
        }
    };
    let head = String::from_utf8_lossy(&response[..end]);
    if !head.starts_with("HTTP/1.1 101") {
        anyhow::bail!("WebSocket upgrade refused: {}", head.lines().next().unwrap_or_default());
    }
    // The accept key of the fixed request key (RFC 6455's own example).
    if !head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=") {
        anyhow::bail!("wrong Sec-WebSocket-Accept in the upgrade response");
    }
    let mut conn = Handshaking::default();
    let queued = &mut conn.queued;
    conn.reader.feed(&response[end..], |op, payload| queued.push_back((op, payload.to_vec())))?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | op];
        if payload.len() < 126 {
            out.push(payload.len() as u8);
        } else if payload.len() <= 65535 {
            out.push(126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn frames_come_out_whole_however_the_stream_is_cut() {
        let payloads: Vec<Vec<u8>> = vec![
            b"{}".to_vec(),
            vec![b'a'; 125],
            vec![b'b'; 126],
            vec![b'c'; 400],
            vec![b'd'; 70_000],
            Vec::new(),
            vec![b'e'; 3],
        ];
        let mut stream = Vec::new();
        for p in &payloads {
            stream.extend_from_slice(&server_frame(TEXT, p));
        }
        stream.extend_from_slice(&server_frame(CLOSE, &1000u16.to_be_bytes()));
        for chunk in [1, 2, 3, 7, 64, 127, 1000, stream.len()] {
            let mut reader = FrameReader::default();
            let mut got = Vec::new();
            for part in stream.chunks(chunk) {
                reader
                    .feed(part, |op, payload| got.push((op, payload.to_vec())))
                    .unwrap_or_else(|e| panic!("chunk {chunk}: {e}"));
            }
            assert_eq!(reader.carried(), 0, "chunk {chunk}");
            assert_eq!(got.len(), payloads.len() + 1, "chunk {chunk}");
            for (p, (op, payload)) in payloads.iter().zip(&got) {
                assert_eq!(*op, TEXT);
                assert_eq!(payload, p, "chunk {chunk}");
            }
            assert_eq!(got.last().map(|f| f.0), Some(CLOSE));
        }
    }

    #[test]
    fn invalid_server_frames_are_refused() {
        let mut reader = FrameReader::default();
        assert_eq!(reader.feed(&[0x01, 0x01, b'x'], |_, _| {}), Err(FrameError::Fragmented));
        let mut reader = FrameReader::default();
        assert_eq!(reader.feed(&[0x81, 0x81, 0, 0, 0, 0, b'x'], |_, _| {}), Err(FrameError::Masked));
        let mut reader = FrameReader::default();
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(MAX_FRAME as u64 + 1).to_be_bytes());
        assert_eq!(reader.feed(&huge, |_, _| {}), Err(FrameError::TooLarge));
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        encode_client_text(&mut out, b"{\"op\":1,\"d\":7}", [1, 2, 3, 4]);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 14);
        let unmasked: Vec<u8> = out[6..].iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]).collect();
        assert_eq!(unmasked, b"{\"op\":1,\"d\":7}");
    }
}
