//! Where pages come from: the `PageSource` trait and its in-process implementation over
//! the source VM's memory image. A TCP peer implements the same trait (`net::TcpSource`)
//! and converts its own errors into [`SourceError`]; the trait names none of them.

use std::sync::Arc;

use crate::vmm::GuestRam;
use crate::vmm::layout::PAGE_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "page source cannot serve {len:#x} bytes at {gpa:#x}: outside its {size:#x}-byte image"
    )]
    OutOfRange { gpa: u64, len: u64, size: u64 },
    #[error("page source failed: {0}")]
    Io(String),
    /// The source could not be reached or refused: the implementation's own error inside.
    #[error(transparent)]
    Unreachable(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl SourceError {
    /// The implementation's own error behind an [`SourceError::Unreachable`], if it is an `E`.
    pub fn cause<E: std::error::Error + 'static>(&self) -> Option<&E> {
        match self {
            SourceError::Unreachable(e) => e.downcast_ref::<E>(),
            _ => None,
        }
    }
}

/// Serves pages of the guest's memory image as it was at switchover.
pub trait PageSource: Send + Sync {
    /// Reads whole pages `[gpa, gpa + buf.len())` into `buf` and appends one CRC32 per page,
    /// computed at the source, to `checksums`.
    fn fetch(&self, gpa: u64, buf: &mut [u8], checksums: &mut Vec<u32>) -> Result<(), SourceError>;

    /// Reads one page at each of `gpas` into consecutive pages of `buf`, with one CRC32 each
    /// appended to `checksums`. A source across a network sends every request before it
    /// reads an answer: the pages cost one round trip, not one each.
    fn fetch_pages(
        &self,
        gpas: &[u64],
        buf: &mut [u8],
        checksums: &mut Vec<u32>,
    ) -> Result<(), SourceError> {
        for (&gpa, page) in gpas.iter().zip(buf.chunks_mut(PAGE_SIZE as usize)) {
            self.fetch(gpa, page, checksums)?;
        }
        Ok(())
    }

    /// Takes back the destination's current content of whole pages at `gpa`, so that a
    /// range made missing again loses nothing.
    fn put_back(&self, gpa: u64, data: &[u8]) -> Result<(), SourceError>;

    /// A short name for reports.
    fn describe(&self) -> String;

    /// Connections to the source that broke and were replaced, so far (none in process).
    fn connections_lost(&self) -> u64 {
        0
    }

    /// The image itself when it lives in this process: the destination then copies pages
    /// straight from it, with no staging copy and no checksums (they guard pages in
    /// transit, and these travel nowhere).
    fn local_image(&self) -> Option<&GuestRam> {
        None
    }
}

/// The source VM's RAM in this process. The source vCPUs stay paused after switchover.
pub struct InProcessSource {
    image: Arc<GuestRam>,
}

impl InProcessSource {
    pub fn new(image: Arc<GuestRam>) -> InProcessSource {
        InProcessSource { image }
    }

    pub fn image(&self) -> &Arc<GuestRam> {
        &self.image
    }

    fn check(&self, gpa: u64, len: u64) -> Result<(), SourceError> {
        if self.image.contains(gpa, len)
            && gpa.is_multiple_of(PAGE_SIZE)
            && len.is_multiple_of(PAGE_SIZE)
        {
            Ok(())
        } else {
            Err(SourceError::OutOfRange {
                gpa,
                len,
                size: self.image.size(),
            })
        }
    }
}

impl PageSource for InProcessSource {
    fn fetch(&self, gpa: u64, buf: &mut [u8], checksums: &mut Vec<u32>) -> Result<(), SourceError> {
        self.check(gpa, buf.len() as u64)?;
        self.image
            .read(gpa, buf)
            .map_err(|e| SourceError::Io(e.to_string()))?;
        checksums.extend(buf.chunks(PAGE_SIZE as usize).map(crc32fast::hash));
        Ok(())
    }

    fn put_back(&self, gpa: u64, data: &[u8]) -> Result<(), SourceError> {
        self.check(gpa, data.len() as u64)?;
        let host = self
            .image
            .host_addr(gpa)
            .ok_or_else(|| SourceError::Io(format!("{gpa:#x} is outside the image")))?;
        // SAFETY: checked inside the image; the source's vCPUs are paused, or gone, once
        // the guest has moved on, so nothing writes it but this.
        let image = unsafe { std::slice::from_raw_parts(host as *const u8, data.len()) };
        // Only pages the destination changed are written: a page's first write can cost
        // a fault and a fresh page (40 us each here), where comparing costs a read.
        let page = PAGE_SIZE as usize;
        let mut at = 0;
        while at < data.len() {
            let end = (at + page).min(data.len());
            if data[at..end] != image[at..end] {
                let from = at;
                while at < data.len() && {
                    let e = (at + page).min(data.len());
                    data[at..e] != image[at..e]
                } {
                    at = (at + page).min(data.len());
                }
                self.image
                    .write_bulk(gpa + from as u64, &data[from..at])
                    .map_err(|e| SourceError::Io(e.to_string()))?;
            } else {
                at = end;
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "in-process image".into()
    }

    fn local_image(&self) -> Option<&GuestRam> {
        Some(&self.image)
    }
}
