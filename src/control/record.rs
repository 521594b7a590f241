//! Recordings: the snapshot stream written as deflated frames as it happens, flushed frame
//! by frame, so an interrupted recording reads back up to its last complete frame.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::sync::Arc;

use super::ControlError;
use super::protocol::{self, Message, ProtocolError, VERSION};
use crate::contract::Snapshot;

/// The peer name in a recording's first frame.
const RECORDING: &str = "faultline recording";

pub struct Recorder {
    out: BufWriter<File>,
    last_seq: Option<(u32, u64)>,
}

impl Recorder {
    pub fn create(path: &Path) -> Result<Recorder, ControlError> {
        let err = |source| ControlError::Recording {
            path: path.to_path_buf(),
            source,
        };
        let mut out = BufWriter::new(File::create(path).map_err(err)?);
        protocol::write_frame(
            &mut out,
            &Message::Hello {
                version: VERSION,
                peer: RECORDING.into(),
            },
            false,
        )?;
        Ok(Recorder {
            out,
            last_seq: None,
        })
    }

    /// Appends `s` unless it is the one written last (observers may see one twice).
    pub fn write(&mut self, s: &Snapshot) -> Result<(), ControlError> {
        let key = (s.migration, s.seq);
        if self.last_seq == Some(key) {
            return Ok(());
        }
        protocol::write_frame(&mut self.out, &Message::Snapshot(Box::new(s.clone())), true)?;
        self.last_seq = Some(key);
        Ok(())
    }
}

/// What a recording holds: its snapshots, and why reading stopped early if it did.
pub struct Recording {
    pub snapshots: Vec<Arc<Snapshot>>,
    /// Set when the file ends in the middle of a frame or a frame is damaged.
    pub cut: Option<String>,
}

/// Reads every complete frame of the recording at `path`.
pub fn read(path: &Path) -> Result<Recording, ControlError> {
    let file = File::open(path).map_err(|source| ControlError::Recording {
        path: path.to_path_buf(),
        source,
    })?;
    read_from(BufReader::new(file), path)
}

/// Reads a recording from any byte stream; `path` names it in errors.
pub fn read_from(mut r: impl std::io::Read, path: &Path) -> Result<Recording, ControlError> {
    let err = |source| ControlError::Recording {
        path: path.to_path_buf(),
        source,
    };
    match protocol::read_frame(&mut r) {
        Ok(Some(Message::Hello { peer, .. })) if peer == RECORDING => {}
        Ok(_) => {
            return Err(ControlError::NotARecording {
                path: path.to_path_buf(),
                why: "no recording header".into(),
            });
        }
        Err(e) => {
            return Err(ControlError::NotARecording {
                path: path.to_path_buf(),
                why: e.to_string(),
            });
        }
    }
    let mut snapshots = Vec::new();
    let cut = loop {
        match protocol::read_frame(&mut r) {
            Ok(None) => break None,
            Ok(Some(Message::Snapshot(s))) => snapshots.push(Arc::new(*s)),
            Ok(Some(_)) => {}
            Err(ProtocolError::Io(e)) => return Err(err(e)),
            Err(e) => break Some(e.to_string()),
        }
    };
    Ok(Recording { snapshots, cut })
}
