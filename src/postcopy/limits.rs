//! What a run may ask of the test VM, checked before any VM starts.

use super::PostcopyError;
use crate::contract::{Action, RunConfig};
use crate::vmm::layout::{self, BOOT_SIZE, PAGE_SIZE};

impl RunConfig {
    /// Checks what can be checked before any VM starts.
    pub fn validate(&self) -> Result<(), PostcopyError> {
        let bad = |m: String| Err(PostcopyError::Config(m));
        if self.vcpus == 0 || self.vcpus > layout::MAX_VCPUS {
            return bad(format!(
                "--vcpus {}: must be 1 to {}",
                self.vcpus,
                layout::MAX_VCPUS
            ));
        }
        if !(layout::MIN_MEM_BYTES..=layout::MAX_MEM_BYTES).contains(&self.mem_bytes)
            || !self.mem_bytes.is_multiple_of(PAGE_SIZE)
        {
            return bad(format!(
                "--mem {}: must be a whole number of pages from {} to {}",
                crate::units::Bytes(self.mem_bytes),
                crate::units::Bytes(layout::MIN_MEM_BYTES),
                crate::units::Bytes(layout::MAX_MEM_BYTES)
            ));
        }
        if self.readers == 0 {
            return bad("--readers must be at least 1".into());
        }
        for t in &self.timeline {
            if let Action::Inject(r) = t.action
                && (r.start < BOOT_SIZE || r.end() > self.mem_bytes)
            {
                return bad(format!(
                    "inject at {}: range {:#x}+{:#x} is outside guest data memory {:#x}..{:#x}",
                    humantime::format_duration(t.at),
                    r.start,
                    r.len,
                    BOOT_SIZE,
                    self.mem_bytes
                ));
            }
        }
        Ok(())
    }
}
