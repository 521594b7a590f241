//! The page protocol's frames: fixed 16-byte little-endian headers, so the fault path
//! parses with no allocation and a malformed peer is caught at the first bad field.
//!
//! A connection opens with the client's hello and the server's welcome (which carries the
//! image size); then each request gets exactly one response, in order:
//! - fetch `len` bytes at `gpa`: the data, then one CRC32 per page computed at the source;
//! - put back `len` bytes at `gpa` (the request carries the data): an empty response.
//!
//! A source in another process (`faultline source`) also answers the migration's control
//! requests, which carry no range (`gpa` and `len` zero):
//! - describe: the guest on offer, as JSON;
//! - switch over: the source pauses its guest and answers with the handover (its id, the
//!   vCPU states, the live boot pages);
//! - commit (the handover's id in `gpa`): the destination has the handover whole and will
//!   run the guest; only now does the source give it up. Unconfirmed, the source takes it
//!   back after a wait, so the guest runs in one place, never none or two. A commit may be
//!   repeated, on any connection, until one is answered;
//! - finish: the destination has every page and needs the source no more.
//!
//! A control answer may outgrow a frame (a switchover of many vCPUs and much memory), so it
//! goes as a run of ok frames, each of at most [`MAX_PAYLOAD`] bytes, whose `detail` counts
//! the answer's bytes still to come after it: the last frame's is zero.
//!
//! An error response carries a UTF-8 reason as its payload.

use crate::vmm::layout::PAGE_SIZE;

pub const MAGIC: [u8; 4] = *b"FLPG";
/// 2: control answers in parts, finish refused before a switchover. 3: the handover is
/// committed by the destination.
pub const VERSION: u16 = 3;
pub const HEADER_LEN: usize = 16;
/// The largest payload of one frame; bigger transfers are split (a push batch is 256 KiB).
pub const MAX_PAYLOAD: u32 = 1 << 20;
/// The longest control answer, over all its frames (a switchover of 64 vCPUs and the
/// largest guest is about 1.5 MiB).
pub const MAX_CONTROL_ANSWER: u64 = 16 << 20;
/// The longest error reason a response carries.
pub const MAX_REASON: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a faultline page stream (magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("protocol version {0} is not supported (this build speaks {VERSION})")]
    Version(u16),
    #[error("unknown request {0}")]
    UnknownOp(u8),
    #[error("unknown response status {0}")]
    UnknownStatus(u8),
    #[error("reserved bytes are not zero")]
    Reserved,
    #[error("{len} bytes in one frame: at most {MAX_PAYLOAD}")]
    TooLong { len: u32 },
    #[error("{len:#x} bytes at {gpa:#x} are not whole pages")]
    Unaligned { gpa: u64, len: u32 },
    #[error("a control request carries no range ({len:#x} bytes at {gpa:#x} given)")]
    ControlRange { gpa: u64, len: u32 },
}

fn u16_at(b: &[u8; HEADER_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// The client's first frame, with the server's token: only the destination the server
/// was made for knows it, so no other local process reads or writes the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub token: u64,
}

impl Hello {
    pub fn encode(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.token.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Hello, WireError> {
        check_magic(b)?;
        let version = u16_at(b, 4);
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        if b[6..8].iter().any(|&x| x != 0) {
            return Err(WireError::Reserved);
        }
        Ok(Hello {
            token: u64_at(b, 8),
        })
    }
}

/// The server's answer to a hello: the size of the image it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    pub image_size: u64,
}

impl Welcome {
    pub fn encode(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.image_size.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Welcome, WireError> {
        check_magic(b)?;
        let version = u16_at(b, 4);
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        Ok(Welcome {
            image_size: u64_at(b, 8),
        })
    }
}

fn check_magic(b: &[u8; HEADER_LEN]) -> Result<(), WireError> {
    let magic = [b[0], b[1], b[2], b[3]];
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Fetch,
    PutBack,
    Describe,
    Switchover,
    Finish,
    Commit,
}

impl Op {
    fn code(self) -> u8 {
        match self {
            Op::Fetch => 1,
            Op::PutBack => 2,
            Op::Describe => 3,
            Op::Switchover => 4,
            Op::Finish => 5,
            Op::Commit => 6,
        }
    }

    /// A migration control request rather than a page transfer.
    pub fn is_control(self) -> bool {
        matches!(
            self,
            Op::Describe | Op::Switchover | Op::Finish | Op::Commit
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    pub gpa: u64,
    pub len: u32,
}

impl Request {
    /// A control request: no range.
    pub fn control(op: Op) -> Request {
        Request { op, gpa: 0, len: 0 }
    }

    /// The commit of the handover `id`.
    pub fn commit(id: u64) -> Request {
        Request {
            op: Op::Commit,
            gpa: id,
            len: 0,
        }
    }

    pub fn encode(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.op.code();
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.gpa.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Request, WireError> {
        let op = match b[0] {
            1 => Op::Fetch,
            2 => Op::PutBack,
            3 => Op::Describe,
            4 => Op::Switchover,
            5 => Op::Finish,
            6 => Op::Commit,
            other => return Err(WireError::UnknownOp(other)),
        };
        if b[1..4].iter().any(|&x| x != 0) {
            return Err(WireError::Reserved);
        }
        let (len, gpa) = (u32_at(b, 4), u64_at(b, 8));
        if op.is_control() {
            // A commit's `gpa` is the handover's id.
            if len != 0 || (gpa != 0 && op != Op::Commit) {
                return Err(WireError::ControlRange { gpa, len });
            }
            return Ok(Request { op, gpa, len });
        }
        if len > MAX_PAYLOAD {
            return Err(WireError::TooLong { len });
        }
        if len == 0 || !u64::from(len).is_multiple_of(PAGE_SIZE) || !gpa.is_multiple_of(PAGE_SIZE) {
            return Err(WireError::Unaligned { gpa, len });
        }
        Ok(Request { op, gpa, len })
    }

    /// Bytes of data that follow the header.
    pub fn payload(&self) -> usize {
        match self.op {
            Op::PutBack => self.len as usize,
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// The range is outside the image; `detail` is the image size.
    OutOfRange,
    /// The request was not understood; the server closes the connection after this.
    Malformed,
    /// The source could not serve a well-formed request.
    Failed,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::OutOfRange => 1,
            Status::Malformed => 2,
            Status::Failed => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    /// Data bytes (a fetch: its checksums follow, one u32 per page) or the reason's bytes.
    pub len: u32,
    pub detail: u64,
}

impl Response {
    pub fn ok(len: u32) -> Response {
        Response {
            status: Status::Ok,
            len,
            detail: 0,
        }
    }

    /// One frame of a control answer, with `to_come` bytes of it after this one.
    pub fn answer_part(len: u32, to_come: u64) -> Response {
        Response {
            status: Status::Ok,
            len,
            detail: to_come,
        }
    }

    pub fn encode(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.status.code();
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..16].copy_from_slice(&self.detail.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Response, WireError> {
        let status = match b[0] {
            0 => Status::Ok,
            1 => Status::OutOfRange,
            2 => Status::Malformed,
            3 => Status::Failed,
            other => return Err(WireError::UnknownStatus(other)),
        };
        if b[1..4].iter().any(|&x| x != 0) {
            return Err(WireError::Reserved);
        }
        let len = u32_at(b, 4);
        let limit = match status {
            Status::Ok => MAX_PAYLOAD,
            _ => MAX_REASON as u32,
        };
        if len > limit {
            return Err(WireError::TooLong { len });
        }
        Ok(Response {
            status,
            len,
            detail: u64_at(b, 8),
        })
    }
}

/// Bytes of checksums after `len` bytes of fetched data.
pub fn checksum_bytes(len: u32) -> usize {
    (u64::from(len) / PAGE_SIZE) as usize * 4
}

/// An error reason cut to what a response may carry, on a character boundary.
pub fn reason(text: &str) -> &str {
    if text.len() <= MAX_REASON {
        return text;
    }
    let mut end = MAX_REASON;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let hello = Hello { token: 0xfeed_f00d };
        assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        let w = Welcome {
            image_size: 1 << 30,
        };
        assert_eq!(Welcome::decode(&w.encode()), Ok(w));
        let r = Request {
            op: Op::PutBack,
            gpa: 0x20_3000,
            len: 0x2000,
        };
        assert_eq!(Request::decode(&r.encode()), Ok(r));
        assert_eq!(r.payload(), 0x2000);
        for op in [Op::Describe, Op::Switchover, Op::Finish, Op::Commit] {
            let c = Request::control(op);
            assert_eq!(Request::decode(&c.encode()), Ok(c));
            assert_eq!(c.payload(), 0);
        }
        let commit = Request::commit(u64::MAX - 7);
        assert_eq!(Request::decode(&commit.encode()), Ok(commit));
        let s = Response {
            status: Status::OutOfRange,
            len: 12,
            detail: 1 << 30,
        };
        assert_eq!(Response::decode(&s.encode()), Ok(s));
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        let hello = Hello { token: 1 };
        let mut b = hello.encode();
        b[0] = b'X';
        assert_eq!(Hello::decode(&b), Err(WireError::BadMagic(*b"XLPG")));
        let mut b = hello.encode();
        b[4] = 9;
        assert_eq!(Hello::decode(&b), Err(WireError::Version(9)));
        let fetch = |gpa, len| Request {
            op: Op::Fetch,
            gpa,
            len,
        };
        let mut b = fetch(0x1000, 0x1000).encode();
        b[0] = 7;
        assert_eq!(Request::decode(&b), Err(WireError::UnknownOp(7)));
        let mut b = fetch(0x1000, 0x1000).encode();
        b[2] = 1;
        assert_eq!(Request::decode(&b), Err(WireError::Reserved));
        assert_eq!(
            Request::decode(&fetch(0x1000, MAX_PAYLOAD + 0x1000).encode()),
            Err(WireError::TooLong {
                len: MAX_PAYLOAD + 0x1000
            })
        );
        assert_eq!(
            Request::decode(&fetch(0x1234, 0x1000).encode()),
            Err(WireError::Unaligned {
                gpa: 0x1234,
                len: 0x1000
            })
        );
        assert_eq!(
            Request::decode(&fetch(0x1000, 0).encode()),
            Err(WireError::Unaligned {
                gpa: 0x1000,
                len: 0
            })
        );
        let mut b = Request::control(Op::Switchover).encode();
        b[8] = 0x10;
        assert_eq!(
            Request::decode(&b),
            Err(WireError::ControlRange { gpa: 0x10, len: 0 })
        );
        let mut b = Response::ok(0).encode();
        b[0] = 9;
        assert_eq!(Response::decode(&b), Err(WireError::UnknownStatus(9)));
        let long = Response {
            status: Status::Failed,
            len: MAX_REASON as u32 + 1,
            detail: 0,
        };
        assert_eq!(
            Response::decode(&long.encode()),
            Err(WireError::TooLong {
                len: MAX_REASON as u32 + 1
            })
        );
    }

    #[test]
    fn reasons_are_cut_on_a_character_boundary() {
        let text = "é".repeat(MAX_REASON);
        let cut = reason(&text);
        assert!(cut.len() <= MAX_REASON && cut.len() >= MAX_REASON - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(reason("short"), "short");
        assert_eq!(checksum_bytes(0x3000), 12);
    }
}
