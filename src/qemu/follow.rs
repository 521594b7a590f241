//! Follows a file another process appends to (a trace log, a debug console): each call
//! returns what was added since the last one, in whole lines or raw bytes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// A line longer than this is not a trace line: it is cut and counted as garbage.
pub const MAX_LINE: usize = 64 << 10;
/// The most read in one call, so one call never holds the caller for long.
const MAX_READ: usize = 8 << 20;

pub struct Follower {
    file: File,
    offset: u64,
    partial: Vec<u8>,
    /// Dropping the rest of an over-long line.
    skipping: bool,
}

impl Follower {
    pub fn open(path: &Path) -> std::io::Result<Follower> {
        Ok(Follower {
            file: File::open(path)?,
            offset: 0,
            partial: Vec::new(),
            skipping: false,
        })
    }

    /// The bytes added since the last call (from the start after a truncation).
    pub fn read_new(&mut self) -> std::io::Result<Vec<u8>> {
        let len = self.file.metadata()?.len();
        if len < self.offset {
            self.offset = 0;
            self.partial.clear();
        }
        self.file.seek(SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        (&mut self.file)
            .take(MAX_READ as u64)
            .read_to_end(&mut buf)?;
        self.offset += buf.len() as u64;
        Ok(buf)
    }

    /// Whole lines added since the last call, and how many over-long ones were dropped.
    pub fn read_lines(&mut self) -> std::io::Result<(Vec<String>, u64)> {
        let new = self.read_new()?;
        let mut lines = Vec::new();
        let mut dropped = 0;
        for &b in &new {
            if b == b'\n' {
                if self.skipping {
                    self.skipping = false;
                } else {
                    lines.push(String::from_utf8_lossy(&self.partial).into_owned());
                }
                self.partial.clear();
            } else if !self.skipping {
                self.partial.push(b);
                if self.partial.len() > MAX_LINE {
                    self.partial.clear();
                    self.skipping = true;
                    dropped += 1;
                }
            }
        }
        Ok((lines, dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn returns_whole_lines_as_they_grow_and_drops_monsters() {
        let path = std::env::temp_dir().join(format!("fl-follow-{}", std::process::id()));
        let mut w = File::create(&path).unwrap();
        let mut f = Follower::open(&path).unwrap();
        assert_eq!(f.read_lines().unwrap(), (vec![], 0));
        w.write_all(b"one\ntw").unwrap();
        assert_eq!(f.read_lines().unwrap(), (vec!["one".to_string()], 0));
        w.write_all(b"o\n").unwrap();
        assert_eq!(f.read_lines().unwrap(), (vec!["two".to_string()], 0));
        w.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        w.write_all(b"\nthree\n").unwrap();
        assert_eq!(f.read_lines().unwrap(), (vec!["three".to_string()], 1));
        // Truncated and written anew: read from the start.
        let mut w = File::create(&path).unwrap();
        w.write_all(b"four\n").unwrap();
        assert_eq!(f.read_lines().unwrap(), (vec!["four".to_string()], 0));
        let _ = std::fs::remove_file(&path);
    }
}
