//! A bootable image of a workload for a PC-class VMM that starts guests itself (QEMU with
//! `-kernel`): a Multiboot (v1) flat binary. The bootloader enters it in 32-bit protected
//! mode on the boot CPU; it switches to long mode over identity page tables it carries,
//! wakes the other CPUs with INIT-SIPI-SIPI through a real-mode trampoline, and every CPU
//! then runs the same workload code as faultline's own VM, reporting through a debug
//! console one byte at a time ([`Reports::Console`]).
//!
//! Owns the image's layout and boot code. Knows nothing of the VMM that loads it.

use iced_x86::code_asm::*;

use super::GuestError;
use super::codegen::{GuestProgram, Placement, Reports, assemble};
use super::ports;
use crate::contract::{Pattern, Workload};

const PAGE: u64 = 0x1000;
/// Where the image is loaded (1 MiB: the first address a Multiboot loader accepts).
pub const IMAGE_GPA: u64 = 0x10_0000;
const PML4: u64 = IMAGE_GPA + 0x1000;
const PDPT: u64 = IMAGE_GPA + 0x2000;
/// Four page directories of 2 MiB pages: the first 4 GiB, local APIC included.
const PD: u64 = IMAGE_GPA + 0x3000;
const PDS: u64 = 4;
const GDT: u64 = IMAGE_GPA + 0x7000;
const GDT_PTR: u64 = GDT + 0x20;
/// Each vCPU's start registers, 64 bytes apiece (rsp, rdi, rsi, r8, r9, r10, r11).
const STARTS: u64 = IMAGE_GPA + 0x8000;
const ENTRY32: u64 = IMAGE_GPA + 0x9000;
/// Where CPUs continue in 32-bit protected mode once the GDT is loaded (the trampoline too).
const PM32: u64 = ENTRY32 + 0x100;
const LONG64: u64 = IMAGE_GPA + 0x9800;
/// The AP trampoline as carried in the image, and where it runs (below 1 MiB, page-aligned:
/// a SIPI names its page).
const TRAMPOLINE_IMAGE: u64 = IMAGE_GPA + 0xA000;
const TRAMPOLINE_GPA: u64 = 0x8000;
/// Offset of the GDT pointer's copy inside the trampoline (real mode reaches only 1 MiB).
const TRAMPOLINE_GDT_PTR: u64 = 0x40;
const WORKLOAD_GPA: u64 = IMAGE_GPA + 0x1_0000;
const WORKLOAD_MAX: u64 = 0x3_0000;
/// Stacks follow the workload code, in the image's zeroed tail (bss).
const STACKS_GPA: u64 = WORKLOAD_GPA + WORKLOAD_MAX;
const STACK_SIZE: u64 = 0x1000;
/// The workload's data starts at 2 MiB.
pub const DATA_GPA: u64 = 0x20_0000;
/// Left to the firmware at the top of RAM (SeaBIOS keeps its tables there).
pub const TOP_RESERVED: u64 = 0x40_0000;
/// The smallest guest this layout fits.
pub const MIN_MEM_BYTES: u64 = 32 << 20;
/// The most: RAM must stay below the PCI hole the identity map leaves alone.
pub const MAX_MEM_BYTES: u64 = 2 << 30;

const CODE64: u16 = 0x08;
const DATA: u16 = 0x10;
const CODE32: u16 = 0x18;

const LAPIC_SVR: u32 = 0xFEE0_00F0;
const LAPIC_ICR_LOW: u32 = 0xFEE0_0300;
/// INIT, level assert, to all but the sender.
const ICR_INIT_ALL_BUT_SELF: u32 = 0x000C_4500;
/// Start-up IPI, level assert, to all but the sender; the vector names the trampoline's page.
const ICR_SIPI_ALL_BUT_SELF: u32 = 0x000C_4600 | (TRAMPOLINE_GPA / PAGE) as u32;

const MULTIBOOT_MAGIC: u32 = 0x1BAD_B002;
/// Flag 16: the header gives the load addresses (a flat binary, not an ELF).
const MULTIBOOT_ADDRESSES: u32 = 1 << 16;

/// A bootable guest and what the host needs to read its reports.
#[derive(Debug, Clone)]
pub struct BootImage {
    pub bytes: Vec<u8>,
    /// The I/O port of the debug console the vCPUs report to.
    pub console_port: u16,
    /// The page range each vCPU works on, as (first gpa, pages).
    pub slices: Vec<(u64, u64)>,
}

fn stack_top(i: usize) -> u64 {
    STACKS_GPA + (i as u64 + 1) * STACK_SIZE
}

/// Builds the image of `workload` on `vcpus` CPUs of a guest with `mem_bytes` of RAM,
/// reporting to a debug console at `console_port`.
pub fn build(
    workload: &Workload,
    vcpus: usize,
    mem_bytes: u64,
    console_port: u16,
) -> Result<BootImage, GuestError> {
    if vcpus == 0 || vcpus > ports::CONSOLE_MAX_VCPUS {
        return Err(GuestError::TooManyVcpus {
            vcpus,
            max: ports::CONSOLE_MAX_VCPUS,
        });
    }
    if !(MIN_MEM_BYTES..=MAX_MEM_BYTES).contains(&mem_bytes) {
        return Err(GuestError::MemOutOfRange {
            mem_bytes,
            min: MIN_MEM_BYTES,
            max: MAX_MEM_BYTES,
        });
    }
    let place = Placement {
        code_gpa: WORKLOAD_GPA,
        code_max: WORKLOAD_MAX,
        data_gpa: DATA_GPA,
        data_pages: (mem_bytes - DATA_GPA - TOP_RESERVED) / PAGE,
        stack_top,
        reports: Reports::Console(console_port),
    };
    let program = assemble(workload, vcpus, &place)?;
    let mut image = vec![0u8; (WORKLOAD_GPA - IMAGE_GPA) as usize + program.code.len()];
    put(&mut image, WORKLOAD_GPA, &program.code);
    let header = multiboot_header(image.len() as u64);
    put(&mut image, IMAGE_GPA, &header);
    page_tables(&mut image);
    put(&mut image, GDT, &gdt());
    put(&mut image, GDT_PTR, &gdt_pointer());
    put(&mut image, STARTS, &start_table(&program));
    put(&mut image, ENTRY32, &entry32()?);
    put(&mut image, PM32, &pm32()?);
    let trampoline = trampoline()?;
    // The firmware leaves data behind in RAM; a workload that checks what it finds starts
    // from zeroed memory, as in faultline's own VM.
    let zero = workload.pattern == Pattern::Verify;
    put(
        &mut image,
        LONG64,
        &long64(vcpus, console_port, trampoline.len(), zero)?,
    );
    put(&mut image, TRAMPOLINE_IMAGE, &trampoline);
    Ok(BootImage {
        bytes: image,
        console_port,
        slices: program.slices,
    })
}

/// Writes `bytes` at guest address `gpa` of the image.
fn put(image: &mut [u8], gpa: u64, bytes: &[u8]) {
    let at = (gpa - IMAGE_GPA) as usize;
    image[at..at + bytes.len()].copy_from_slice(bytes);
}

fn multiboot_header(file_len: u64) -> Vec<u8> {
    let load_end = IMAGE_GPA + file_len;
    let bss_end = stack_top(ports::CONSOLE_MAX_VCPUS - 1);
    let fields = [
        MULTIBOOT_MAGIC,
        MULTIBOOT_ADDRESSES,
        0u32.wrapping_sub(MULTIBOOT_MAGIC.wrapping_add(MULTIBOOT_ADDRESSES)),
        IMAGE_GPA as u32,
        IMAGE_GPA as u32,
        load_end as u32,
        bss_end.max(load_end) as u32,
        ENTRY32 as u32,
    ];
    fields.iter().flat_map(|f| f.to_le_bytes()).collect()
}

fn page_tables(image: &mut [u8]) {
    const PRESENT_WRITE: u64 = 0b11;
    const HUGE: u64 = 1 << 7;
    put(image, PML4, &(PDPT | PRESENT_WRITE).to_le_bytes());
    for d in 0..PDS {
        put(
            image,
            PDPT + d * 8,
            &((PD + d * PAGE) | PRESENT_WRITE).to_le_bytes(),
        );
        for e in 0..512 {
            let phys = (d << 30) | (e << 21);
            put(
                image,
                PD + d * PAGE + e * 8,
                &(phys | PRESENT_WRITE | HUGE).to_le_bytes(),
            );
        }
    }
}

fn gdt() -> Vec<u8> {
    [
        0u64,
        0x00AF_9A00_0000_FFFF, // 64-bit code
        0x00CF_9200_0000_FFFF, // flat data
        0x00CF_9A00_0000_FFFF, // flat 32-bit code
    ]
    .iter()
    .flat_map(|e| e.to_le_bytes())
    .collect()
}

fn gdt_pointer() -> Vec<u8> {
    let mut p = (4 * 8 - 1u16).to_le_bytes().to_vec();
    p.extend_from_slice(&(GDT as u32).to_le_bytes());
    p
}

fn start_table(program: &GuestProgram) -> Vec<u8> {
    program
        .starts
        .iter()
        .flat_map(|s| {
            let mut entry = [0u64; 8];
            entry[..7].copy_from_slice(&[s.rsp, s.rdi, s.rsi, s.r8, s.r9, s.r10, s.r11]);
            entry.into_iter().flat_map(u64::to_le_bytes)
        })
        .collect()
}

/// A far jump with a 32-bit offset (`jmp selector:offset`), `o32` from 16-bit code.
fn far_jump(o32_prefix: bool, selector: u16, offset: u64) -> Vec<u8> {
    let mut b = if o32_prefix { vec![0x66] } else { vec![] };
    b.push(0xEA);
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&selector.to_le_bytes());
    b
}

/// The boot CPU's entry from the loader (32-bit, paging off): load the GDT and reload CS
/// from it.
fn entry32() -> Result<Vec<u8>, GuestError> {
    let mut a = CodeAssembler::new(32)?;
    a.cli()?;
    a.lgdt(ptr(GDT_PTR))?;
    a.db(&far_jump(false, CODE32, PM32))?;
    Ok(a.assemble(ENTRY32)?)
}

/// Every CPU in protected mode: enable PAE and long mode, page, jump to 64-bit code.
fn pm32() -> Result<Vec<u8>, GuestError> {
    let mut a = CodeAssembler::new(32)?;
    a.mov(eax, u32::from(DATA))?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(fs, ax)?;
    a.mov(gs, ax)?;
    a.mov(eax, cr4)?;
    a.or(eax, 1 << 5)?; // PAE
    a.mov(cr4, eax)?;
    a.mov(eax, PML4 as u32)?;
    a.mov(cr3, eax)?;
    a.mov(ecx, 0xC000_0080u32)?; // EFER
    a.rdmsr()?;
    a.or(eax, 1 << 8)?; // LME
    a.wrmsr()?;
    a.mov(eax, cr0)?;
    // An AP leaves INIT with caching off (CD, NW): turn it on, and page.
    a.and(eax, !0x6000_0000u32)?;
    a.or(eax, 0x8000_0001u32)?; // PG | PE
    a.mov(cr0, eax)?;
    a.db(&far_jump(false, CODE64, LONG64))?;
    Ok(a.assemble(PM32)?)
}

/// Real-mode code an AP starts in after a SIPI (CS = page, IP = 0): load the GDT, enter
/// protected mode, join the boot CPU's path at `pm32`.
fn trampoline() -> Result<Vec<u8>, GuestError> {
    let mut a = CodeAssembler::new(16)?;
    a.cli()?;
    a.mov(ax, cs)?;
    a.mov(ds, ax)?;
    a.lgdt(ptr(TRAMPOLINE_GDT_PTR))?;
    a.mov(eax, cr0)?;
    a.or(al, 1)?;
    a.mov(cr0, eax)?;
    a.db(&far_jump(true, CODE32, PM32))?;
    let mut code = a.assemble(0)?;
    if code.len() as u64 > TRAMPOLINE_GDT_PTR {
        return Err(GuestError::TooLarge {
            len: code.len(),
            max: TRAMPOLINE_GDT_PTR,
        });
    }
    code.resize(TRAMPOLINE_GDT_PTR as usize, 0x90);
    code.extend_from_slice(&gdt_pointer());
    Ok(code)
}

/// Long mode: each CPU takes its APIC ID as its vCPU index, the boot CPU wakes the
/// others, then each loads its start registers, zeroes its slice if asked, says it
/// started and jumps to the workload.
fn long64(
    vcpus: usize,
    console_port: u16,
    trampoline_len: usize,
    zero_slices: bool,
) -> Result<Vec<u8>, GuestError> {
    let mut a = CodeAssembler::new(64)?;
    let mut park = a.create_label();
    let mut go = a.create_label();
    a.mov(eax, u32::from(DATA))?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    // The vCPU index is the initial APIC ID (CPUID.1:EBX[31:24]), which is QEMU's
    // cpu-index under its default topology: the host's per-vCPU figures name the same CPU.
    a.mov(eax, 1)?;
    a.cpuid()?;
    a.shr(ebx, 24)?;
    a.cmp(ebx, vcpus as u32)?;
    a.jae(park)?;
    a.test(ebx, ebx)?;
    a.jnz(go)?;
    if vcpus > 1 {
        a.cld()?;
        a.mov(esi, TRAMPOLINE_IMAGE as u32)?;
        a.mov(edi, TRAMPOLINE_GPA as u32)?;
        a.mov(ecx, trampoline_len as u32)?;
        a.rep().movsb()?;
        a.mov(eax, LAPIC_SVR)?;
        a.or(dword_ptr(rax), 0x100)?; // APIC software enable
        a.mov(eax, LAPIC_ICR_LOW)?;
        a.mov(dword_ptr(rax), ICR_INIT_ALL_BUT_SELF)?;
        delay(&mut a)?;
        a.mov(dword_ptr(rax), ICR_SIPI_ALL_BUT_SELF)?;
        delay(&mut a)?;
        a.mov(dword_ptr(rax), ICR_SIPI_ALL_BUT_SELF)?;
    }
    a.set_label(&mut go)?;
    a.mov(eax, ebx)?;
    a.shl(eax, 6)?;
    a.add(eax, STARTS as u32)?;
    a.mov(rsp, qword_ptr(rax))?;
    a.mov(rdi, qword_ptr(rax + 8))?;
    a.mov(rsi, qword_ptr(rax + 16))?;
    a.mov(r8, qword_ptr(rax + 24))?;
    a.mov(r9, qword_ptr(rax + 32))?;
    a.mov(r10, qword_ptr(rax + 40))?;
    a.mov(r11, qword_ptr(rax + 48))?;
    if zero_slices {
        a.cld()?;
        a.mov(r13, rdi)?;
        a.mov(rcx, rsi)?;
        a.shl(rcx, 9)?; // qwords
        a.xor(eax, eax)?;
        a.rep().stosq()?;
        a.mov(rdi, r13)?;
    }
    a.mov(eax, ebx)?;
    a.or(eax, u32::from(ports::CONSOLE_STARTED))?;
    a.mov(edx, u32::from(console_port))?;
    a.out(dx, al)?;
    for r in [rcx, rdx, rbp, r12, r13, r14, r15] {
        a.xor(r, r)?;
    }
    a.mov(eax, WORKLOAD_GPA as u32)?;
    a.jmp(rax)?;
    a.set_label(&mut park)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(park)?;
    Ok(a.assemble(LONG64)?)
}

/// A short busy wait between IPIs (rcx only), as the start-up protocol asks.
fn delay(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut spin = a.create_label();
    a.mov(ecx, 200_000)?;
    a.set_label(&mut spin)?;
    a.pause()?;
    a.dec(ecx)?;
    a.jnz(spin)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    fn image(vcpus: usize) -> BootImage {
        build(&"verify".parse().unwrap(), vcpus, 256 << 20, 0xE9).unwrap()
    }

    fn at(img: &BootImage, gpa: u64, len: usize) -> &[u8] {
        let o = (gpa - IMAGE_GPA) as usize;
        &img.bytes[o..o + len]
    }

    #[test]
    fn the_multiboot_header_checks_and_points_into_the_image() {
        let img = image(2);
        let word = |i: usize| u32::from_le_bytes(img.bytes[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!(word(0), MULTIBOOT_MAGIC);
        assert_eq!(word(0).wrapping_add(word(1)).wrapping_add(word(2)), 0);
        assert_eq!(u64::from(word(5)), IMAGE_GPA + img.bytes.len() as u64);
        assert_eq!(u64::from(word(7)), ENTRY32);
        assert!(u64::from(word(6)) <= DATA_GPA, "bss runs into the data");
    }

    fn decode(bitness: u32, bytes: &[u8], ip: u64) -> Vec<iced_x86::Instruction> {
        Decoder::with_ip(bitness, bytes, ip, DecoderOptions::NONE)
            .into_iter()
            .take_while(|i| i.mnemonic() != Mnemonic::INVALID)
            .collect()
    }

    #[test]
    fn boot_cpu_and_trampoline_both_reach_long_mode_code() {
        let img = image(2);
        let entry = decode(32, at(&img, ENTRY32, 16), ENTRY32);
        assert_eq!(entry[1].mnemonic(), Mnemonic::Lgdt);
        assert_eq!(entry[2].far_branch32(), PM32 as u32);
        assert_eq!(entry[2].far_branch_selector(), CODE32);
        let tramp = decode(16, at(&img, TRAMPOLINE_IMAGE, 0x40), 0);
        let jump = tramp
            .iter()
            .find(|i| i.mnemonic() == Mnemonic::Jmp)
            .unwrap();
        assert_eq!(jump.far_branch32(), PM32 as u32);
        assert_eq!(
            &at(&img, TRAMPOLINE_IMAGE, 0x46)[0x40..],
            &gdt_pointer()[..]
        );
        let pm = decode(32, at(&img, PM32, 0x80), PM32);
        let last = pm.iter().rfind(|i| i.mnemonic() == Mnemonic::Jmp).unwrap();
        assert_eq!(last.far_branch32(), LONG64 as u32);
        assert_eq!(last.far_branch_selector(), CODE64);
    }

    #[test]
    fn every_vcpu_has_its_own_start_and_slice() {
        let img = image(4);
        assert_eq!(img.slices.len(), 4);
        for i in 0..4u64 {
            let e = at(&img, STARTS + i * 64, 16);
            let stack = u64::from_le_bytes(e[..8].try_into().unwrap());
            let base = u64::from_le_bytes(e[8..].try_into().unwrap());
            assert_eq!(stack, stack_top(i as usize));
            assert_eq!(base, img.slices[i as usize].0);
            assert!(base >= DATA_GPA);
        }
        let (last, pages) = img.slices[3];
        assert!(last + pages * PAGE <= (256 << 20) - TOP_RESERVED);
    }

    #[test]
    fn identity_map_covers_the_local_apic() {
        let img = image(1);
        let e = (0xFEE0_0000u64 >> 21) & 511;
        let d = 0xFEE0_0000u64 >> 30;
        let pde = u64::from_le_bytes(at(&img, PD + d * PAGE + e * 8, 8).try_into().unwrap());
        assert_eq!(pde & !0xFFF, 0xFEE0_0000 & !0x1F_FFFF);
    }

    #[test]
    fn sizes_out_of_range_are_refused() {
        let w: Workload = "verify".parse().unwrap();
        assert!(build(&w, 0, 256 << 20, 0xE9).is_err());
        assert!(build(&w, 65, 256 << 20, 0xE9).is_err());
        assert!(build(&w, 2, 16 << 20, 0xE9).is_err());
        assert!(build(&w, 2, 4 << 30, 0xE9).is_err());
    }
}
