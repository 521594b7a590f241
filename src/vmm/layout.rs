//! The guest-physical layout and the boot region: GDT, identity page tables, code and
//! stacks live in the first [`BOOT_SIZE`] bytes; the workload's data follows.
//!
//! The boot region moves with the vCPU state at switchover, because KVM itself touches it
//! (page-table walks, instruction fetch) and those accesses cannot take the exit path.

use kvm_bindings::{kvm_segment, kvm_sregs};

pub const PAGE_SIZE: u64 = 4096;
pub const PAGE_SHIFT: u32 = 12;

pub const GDT_GPA: u64 = 0x1000;
pub const PML4_GPA: u64 = 0x2000;
pub const PDPT_GPA: u64 = 0x3000;
/// Page directories, one per GiB of guest RAM, up to the code.
pub const PD_GPA: u64 = 0x4000;
pub const CODE_GPA: u64 = 0x10_0000;
pub const CODE_MAX: u64 = 0x4_0000;
pub const STACKS_GPA: u64 = 0x14_0000;
pub const STACK_SIZE: u64 = 0x1000;
pub const MAX_VCPUS: usize = 64;
pub const BOOT_SIZE: u64 = 0x20_0000;
pub const BOOT_PAGES: u64 = BOOT_SIZE / PAGE_SIZE;

/// The most guest RAM the identity map can cover (one page directory per GiB).
pub const MAX_MEM_BYTES: u64 = ((CODE_GPA - PD_GPA) / PAGE_SIZE) << 30;
pub const MIN_MEM_BYTES: u64 = 64 << 20;

const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_AM: u64 = 1 << 18;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITE: u64 = 1 << 1;
const PTE_HUGE: u64 = 1 << 7;

// The boot region holds the largest page tables, the code and every vCPU's stack.
const _: () = {
    assert!(PD_GPA + (MAX_MEM_BYTES >> 30) * PAGE_SIZE <= CODE_GPA);
    assert!(CODE_GPA + CODE_MAX <= STACKS_GPA);
    assert!(STACKS_GPA + MAX_VCPUS as u64 * STACK_SIZE <= BOOT_SIZE);
};

/// Top of vCPU `i`'s stack.
pub fn stack_top(i: usize) -> u64 {
    STACKS_GPA + (i as u64 + 1) * STACK_SIZE
}

/// The parts of the boot region a running guest (or the CPU walking its page tables) can
/// change: GDT and page tables, and the vCPUs' stacks. The rest is written once at load,
/// so a switchover can copy it ahead and move only these while the guest is paused.
pub fn live_boot_ranges(mem_bytes: u64, vcpus: usize) -> [(u64, u64); 2] {
    let page_dirs = mem_bytes.div_ceil(1 << 30);
    [
        (0, PD_GPA + page_dirs * PAGE_SIZE),
        (STACKS_GPA, vcpus as u64 * STACK_SIZE),
    ]
}

/// First gpa after the boot region: where workload data begins.
pub fn data_gpa() -> u64 {
    BOOT_SIZE
}

/// Where a workload goes in a VM of `mem_bytes`: code in the boot region, data after it.
pub fn placement(mem_bytes: u64) -> crate::guest::Placement {
    crate::guest::Placement {
        code_gpa: CODE_GPA,
        code_max: CODE_MAX,
        data_gpa: data_gpa(),
        data_pages: mem_bytes.saturating_sub(data_gpa()) / PAGE_SIZE,
        stack_top,
        reports: crate::guest::Reports::Ports,
    }
}

/// A GDT entry from flags, base and limit (the usual packed x86 format).
fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The GDT: null, 64-bit code, data, TSS (as 8-byte entries).
pub fn gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(0xa09b, 0, 0xfffff),
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

fn segment(entry: u64, selector: u16) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: ((entry >> 55) & 1) as u8,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Puts `sregs` in 64-bit long mode over the boot region's GDT and page tables.
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    let gdt = gdt();
    let code = segment(gdt[1], CODE_SELECTOR);
    let data = segment(gdt[2], DATA_SELECTOR);
    let tss = segment(gdt[3], TSS_SELECTOR);
    sregs.gdt.base = GDT_GPA;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr3 = PML4_GPA;
    sregs.cr4 |= CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// The identity map for `mem_bytes` of RAM as (gpa, little-endian qwords) writes:
/// PML4 -> one PDPT -> one PD per GiB, 2 MiB pages.
pub fn page_tables(mem_bytes: u64) -> Vec<(u64, Vec<u64>)> {
    let gib = mem_bytes.div_ceil(1 << 30).max(1);
    let mut writes = vec![(PML4_GPA, vec![PDPT_GPA | PTE_PRESENT | PTE_WRITE])];
    let pdpt = (0..gib)
        .map(|i| (PD_GPA + i * PAGE_SIZE) | PTE_PRESENT | PTE_WRITE)
        .collect();
    writes.push((PDPT_GPA, pdpt));
    for i in 0..gib {
        let pd = (0..512u64)
            .map(|j| ((i << 30) | (j << 21)) | PTE_PRESENT | PTE_WRITE | PTE_HUGE)
            .collect();
        writes.push((PD_GPA + i * PAGE_SIZE, pd));
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_code_segment_is_64_bit() {
        let code = segment(gdt()[1], CODE_SELECTOR);
        assert_eq!((code.l, code.db, code.present, code.type_), (1, 0, 1, 0xb));
        let data = segment(gdt()[2], DATA_SELECTOR);
        assert_eq!((data.l, data.db, data.type_), (0, 1, 3));
    }

    #[test]
    fn page_tables_map_every_gib_identity() {
        let writes = page_tables(3 << 30);
        // PML4, PDPT and three page directories.
        assert_eq!(writes.len(), 5);
        assert_eq!(writes[1].1.len(), 3);
        let last_pd = &writes[4];
        assert_eq!(last_pd.0, PD_GPA + 2 * PAGE_SIZE);
        assert_eq!(last_pd.1[1] & !0xfff, (2 << 30) | (1 << 21));
    }
}
