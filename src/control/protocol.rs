//! The wire format shared by the control socket and recordings: frames of an 8-byte header
//! (magic `FL`, version, payload length, all big-endian) and a JSON payload, optionally
//! deflated. One malformed frame ends that stream with a precise error; nothing else.

use std::io::{self, Read, Write};

use flate2::Compression;
use flate2::read::DeflateDecoder;
use flate2::write::DeflateEncoder;
use serde::{Deserialize, Serialize};

use crate::contract::Action;
use crate::contract::Snapshot;

pub const MAGIC: [u8; 2] = *b"FL";
/// Bumped on any change a peer could misread.
pub const VERSION: u8 = 1;
/// A frame larger than this is refused before it is read (a 64-vCPU snapshot is ~100 KB).
pub const MAX_FRAME: u32 = 8 << 20;
const HEADER: usize = 8;
/// Flag bit in the header: the payload is deflated JSON.
const DEFLATED: u8 = 1;

/// What travels in a frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "type", content = "body")]
pub enum Message {
    /// First frame each way: who speaks and which version.
    Hello {
        version: u8,
        peer: String,
    },
    Snapshot(Box<Snapshot>),
    Command(Action),
    /// Why the sender is about to close the connection, or why a command was refused.
    Error {
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("not a faultline frame (bad magic {0:02x?})")]
    BadMagic([u8; 2]),
    #[error("protocol version {0} is not spoken here (this is version {VERSION})")]
    WrongVersion(u8),
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(u32),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("the stream ends in the middle of a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Writes one frame; `deflate` trades CPU for size (recordings use it).
pub fn write_frame(w: &mut impl Write, m: &Message, deflate: bool) -> Result<(), ProtocolError> {
    let json = serde_json::to_vec(m).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let payload = if deflate {
        let mut enc = DeflateEncoder::new(Vec::with_capacity(json.len() / 4), Compression::fast());
        enc.write_all(&json)?;
        enc.finish()?
    } else {
        json
    };
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l <= MAX_FRAME)
        .ok_or(ProtocolError::TooLarge(u32::MAX))?;
    let mut header = [0u8; HEADER];
    header[..2].copy_from_slice(&MAGIC);
    header[2] = VERSION;
    header[3] = if deflate { DEFLATED } else { 0 };
    header[4..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&header)?;
    w.write_all(&payload)?;
    w.flush()?;
    Ok(())
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` if the stream ended before the first byte.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, ProtocolError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(ProtocolError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Reads the next frame; `Ok(None)` at a clean end of stream (between frames).
pub fn read_frame(r: &mut impl Read) -> Result<Option<Message>, ProtocolError> {
    let mut header = [0u8; HEADER];
    if !read_full(r, &mut header)? {
        return Ok(None);
    }
    let magic = [header[0], header[1]];
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    if header[2] != VERSION {
        return Err(ProtocolError::WrongVersion(header[2]));
    }
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge(len));
    }
    let mut payload = vec![0u8; len as usize];
    if !read_full(r, &mut payload)? && len > 0 {
        return Err(ProtocolError::Truncated);
    }
    let json = if header[3] & DEFLATED != 0 {
        let mut out = Vec::with_capacity(payload.len() * 4);
        DeflateDecoder::new(&payload[..])
            .take(u64::from(MAX_FRAME) * 8)
            .read_to_end(&mut out)
            .map_err(|e| ProtocolError::Malformed(format!("bad deflate stream: {e}")))?;
        out
    } else {
        payload
    };
    serde_json::from_slice(&json)
        .map(Some)
        .map_err(|e| ProtocolError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Rate;

    fn roundtrip(m: &Message, deflate: bool) -> Message {
        let mut buf = Vec::new();
        write_frame(&mut buf, m, deflate).unwrap();
        read_frame(&mut &buf[..]).unwrap().unwrap()
    }

    #[test]
    fn messages_survive_the_wire_plain_and_deflated() {
        let snap = crate::tui::fixture::snapshot(8, 1 << 30, 20);
        for deflate in [false, true] {
            let m = Message::Snapshot(Box::new(snap.clone()));
            assert_eq!(roundtrip(&m, deflate), m);
            let c = Message::Command(Action::Throttle(Rate::BytesPerSec(1 << 20)));
            assert_eq!(roundtrip(&c, deflate), c);
            for up in [false, true] {
                let l = Message::Command(Action::Link(up));
                assert_eq!(roundtrip(&l, deflate), l);
            }
            let mut down = snap.clone();
            down.link_up = Some(false);
            let m = Message::Snapshot(Box::new(down));
            assert_eq!(roundtrip(&m, deflate), m);
        }
        let (mut plain, mut packed) = (Vec::new(), Vec::new());
        let m = Message::Snapshot(Box::new(snap));
        write_frame(&mut plain, &m, false).unwrap();
        write_frame(&mut packed, &m, true).unwrap();
        assert!(
            packed.len() * 3 < plain.len(),
            "{} vs {}",
            packed.len(),
            plain.len()
        );
    }

    #[test]
    fn each_kind_of_bad_frame_is_named() {
        let mut good = Vec::new();
        write_frame(&mut good, &Message::Command(Action::Remigrate), false).unwrap();

        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(ProtocolError::BadMagic(_))
        ));

        let mut bad = good.clone();
        bad[2] = 9;
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(ProtocolError::WrongVersion(9))
        ));

        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&(MAX_FRAME + 1).to_be_bytes());
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(ProtocolError::TooLarge(_))
        ));

        let cut = &good[..good.len() - 3];
        assert!(matches!(
            read_frame(&mut &cut[..]),
            Err(ProtocolError::Truncated)
        ));
        let cut = &good[..5];
        assert!(matches!(
            read_frame(&mut &cut[..]),
            Err(ProtocolError::Truncated)
        ));

        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 2] = b'#';
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(ProtocolError::Malformed(_))
        ));

        assert!(
            read_frame(&mut &[][..]).unwrap().is_none(),
            "a clean end is not an error"
        );
    }
}
