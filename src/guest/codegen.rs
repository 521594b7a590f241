//! Encodes a [`Workload`] as x86-64 machine code for a long-mode guest with identity-mapped
//! memory. The loop keeps all of its state in registers, so capturing a vCPU's registers
//! captures the workload's position too.
//!
//! Register convention (set by the host at start, carried by vCPU state afterwards):
//! rdi slice base gpa, rsi slice pages, r11 hot-set pages or stride, r8 PRNG state,
//! r9 verify generation, r10 next sequential index, r12 access counter,
//! r14 verify expectation mask, r15 read sink; rax, rcx, r13 are scratch. With
//! [`Reports::Console`], rbx holds the vCPU index and rdx is scratch too.

use iced_x86::code_asm::*;

use super::GuestError;
use super::ports;
use crate::contract::{LAST_QWORD, Operation, Pattern, Sharing, Workload};

const PAGE_SHIFT: u32 = 12;

/// Initial register values of one vCPU, independent of any hypervisor API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VcpuStart {
    pub rip: u64,
    pub rsp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
}

/// Code to load into the guest and where each vCPU starts.
#[derive(Debug, Clone)]
pub struct GuestProgram {
    pub code: Vec<u8>,
    pub code_gpa: u64,
    pub starts: Vec<VcpuStart>,
    /// The page range each vCPU works on, as (first gpa, pages).
    pub slices: Vec<(u64, u64)>,
}

/// Memory the workload may use and where its code goes.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub code_gpa: u64,
    pub code_max: u64,
    pub data_gpa: u64,
    pub data_pages: u64,
    /// Top of vCPU 0's stack; vCPU i gets `stack_top(i)`.
    pub stack_top: fn(usize) -> u64,
    pub reports: Reports,
}

/// How the workload tells the host what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reports {
    /// `out imm8, eax` to the ports of [`ports`]: the host sees all four bytes (KVM_EXIT_IO).
    Ports,
    /// One byte a report to a debug console at this port, for a VMM that logs port writes
    /// byte by byte (QEMU's isa-debugcon): [`ports::ConsoleReport`] says how.
    Console(u16),
}

/// What a report says, for [`Reports::Console`]'s byte (the top two bits).
#[derive(Debug, Clone, Copy)]
enum ReportKind {
    Progress,
    VerifyError,
    Done,
}

/// Reports `kind`; for [`Reports::Ports`] eax holds the value. Clobbers rax (and rdx).
fn emit_report(a: &mut CodeAssembler, reports: Reports, kind: ReportKind) -> Result<(), IcedError> {
    match reports {
        Reports::Ports => {
            let port = match kind {
                ReportKind::Progress => ports::PROGRESS,
                ReportKind::VerifyError => ports::VERIFY_ERROR,
                ReportKind::Done => ports::DONE,
            };
            a.out(u32::from(port), eax)
        }
        Reports::Console(port) => {
            let tag = match kind {
                ReportKind::Progress => ports::CONSOLE_PROGRESS,
                ReportKind::VerifyError => ports::CONSOLE_VERIFY_ERROR,
                ReportKind::Done => ports::CONSOLE_DONE,
            };
            a.mov(eax, ebx)?;
            a.or(eax, u32::from(tag))?;
            a.mov(edx, u32::from(port))?;
            a.out(dx, al)
        }
    }
}

/// Assembles `workload` for `vcpus` vCPUs.
pub fn assemble(
    workload: &Workload,
    vcpus: usize,
    place: &Placement,
) -> Result<GuestProgram, GuestError> {
    let vcpus_u64 = vcpus.max(1) as u64;
    let own = workload.sharing == Sharing::Own || workload.pattern == Pattern::Verify;
    let slice_pages = if own {
        place.data_pages / vcpus_u64
    } else {
        place.data_pages
    };
    if slice_pages == 0 {
        return Err(GuestError::TooSmall {
            data_pages: place.data_pages,
            vcpus,
        });
    }

    let code = encode(workload, place.code_gpa, place.reports)?;
    if code.len() as u64 > place.code_max {
        return Err(GuestError::TooLarge {
            len: code.len(),
            max: place.code_max,
        });
    }

    let param = match workload.pattern {
        Pattern::Hotspot => workload.hot_pages.clamp(1, slice_pages),
        Pattern::Stride => (workload.stride_pages % slice_pages).max(1),
        _ => 0,
    };
    let mut starts = Vec::with_capacity(vcpus);
    let mut slices = Vec::with_capacity(vcpus);
    for i in 0..vcpus {
        let i64_ = i as u64;
        let base = if own {
            place.data_gpa + ((i64_ * slice_pages) << PAGE_SHIFT)
        } else {
            place.data_gpa
        };
        // Shared sequential walkers start spread out rather than in lock step.
        let first = if own {
            0
        } else {
            i64_ * slice_pages / vcpus_u64
        };
        starts.push(VcpuStart {
            rip: place.code_gpa,
            rsp: (place.stack_top)(i),
            rdi: base,
            rsi: slice_pages,
            r8: 0x9E37_79B9_7F4A_7C15 ^ (i64_ + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            r9: 1,
            r10: first,
            r11: param,
        });
        slices.push((base, slice_pages));
    }
    Ok(GuestProgram {
        code,
        code_gpa: place.code_gpa,
        starts,
        slices,
    })
}

fn xorshift(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(rax, r8)?;
    a.shl(rax, 13)?;
    a.xor(r8, rax)?;
    a.mov(rax, r8)?;
    a.shr(rax, 7)?;
    a.xor(r8, rax)?;
    a.mov(rax, r8)?;
    a.shl(rax, 17)?;
    a.xor(r8, rax)?;
    Ok(())
}

/// Leaves the page index of this access in rcx.
fn emit_index(a: &mut CodeAssembler, pattern: Pattern) -> Result<(), IcedError> {
    match pattern {
        // Touch has its own loop (`encode_touch`) and never comes here.
        Pattern::Sequential | Pattern::Verify | Pattern::Touch => {
            // Wrap before taking the index, so a new pass begins with its first page.
            let mut no_wrap = a.create_label();
            a.cmp(r10, rsi)?;
            a.jb(no_wrap)?;
            a.xor(r10d, r10d)?;
            if pattern == Pattern::Verify {
                // A new pass: every page now holds the previous generation's stamp.
                a.inc(r9)?;
                a.mov(r14, -1i64)?;
            }
            a.set_label(&mut no_wrap)?;
            a.mov(rcx, r10)?;
            a.inc(r10)?;
        }
        Pattern::Stride => {
            let mut no_wrap = a.create_label();
            a.mov(rcx, r10)?;
            a.add(r10, r11)?;
            a.cmp(r10, rsi)?;
            a.jb(no_wrap)?;
            a.sub(r10, rsi)?;
            a.set_label(&mut no_wrap)?;
            a.nop()?;
        }
        Pattern::Random => {
            xorshift(a)?;
            a.mov(rax, r8)?;
            a.shr(rax, 32)?;
            a.imul_2(rax, rsi)?;
            a.shr(rax, 32)?;
            a.mov(rcx, rax)?;
        }
        Pattern::Hotspot => {
            xorshift(a)?;
            a.mov(rcx, r11)?;
            // One access in eight goes anywhere in the slice.
            a.test(r8d, 0x700)?;
            a.cmovz(rcx, rsi)?;
            a.mov(rax, r8)?;
            a.shr(rax, 32)?;
            a.imul_2(rax, rcx)?;
            a.shr(rax, 32)?;
            a.mov(rcx, rax)?;
        }
    }
    Ok(())
}

fn emit_read(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(rcx, qword_ptr(rax))?;
    a.add(r15, rcx)?;
    Ok(())
}

fn emit_write(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(qword_ptr(rax), r12)
}

/// Checks both stamps of the page at rax against the previous generation, reports a
/// mismatch, then stamps the page with the current generation.
fn emit_verify(a: &mut CodeAssembler, reports: Reports) -> Result<(), IcedError> {
    let mut bad = a.create_label();
    let mut stamp = a.create_label();
    a.mov(rcx, r9)?;
    a.dec(rcx)?;
    a.shl(rcx, 40)?;
    a.or(rcx, rax)?;
    // The first pass expects untouched (zero) memory.
    a.and(rcx, r14)?;
    a.cmp(qword_ptr(rax), rcx)?;
    a.jne(bad)?;
    a.cmp(qword_ptr(rax + LAST_QWORD), rcx)?;
    a.je(stamp)?;
    a.set_label(&mut bad)?;
    a.mov(r13, rax)?;
    a.shr(rax, PAGE_SHIFT)?;
    emit_report(a, reports, ReportKind::VerifyError)?;
    a.mov(rax, r13)?;
    a.set_label(&mut stamp)?;
    a.mov(rcx, r9)?;
    a.shl(rcx, 40)?;
    a.or(rcx, rax)?;
    a.mov(qword_ptr(rax), rcx)?;
    a.mov(qword_ptr(rax + LAST_QWORD), rcx)?;
    Ok(())
}

fn emit_progress(a: &mut CodeAssembler, top: CodeLabel, reports: Reports) -> Result<(), IcedError> {
    a.test(r12d, (ports::PROGRESS_EVERY - 1) as u32)?;
    a.jnz(top)?;
    a.mov(rax, r12)?;
    a.shr(rax, ports::PROGRESS_SHIFT)?;
    emit_report(a, reports, ReportKind::Progress)?;
    a.jmp(top)?;
    Ok(())
}

/// Pages written by one unrolled block of the touch loop.
const TOUCH_BLOCK: u32 = 256;

// Progress reports fall on block boundaries.
const _: () = assert!(ports::PROGRESS_EVERY.is_multiple_of(TOUCH_BLOCK as u64));

/// One write to every page of the slice, then DONE: the demand-paging benchmark's guest.
///
/// Unrolled: a hypervisor that emulates this guest's instructions (PVM does, for a guest
/// that is not PVM-aware) pays for each one, so the loop spends about one instruction a
/// page, the write itself. A block writes [`TOUCH_BLOCK`] pages from rax with r10 and r12
/// advanced after it; the pages left over go one at a time.
fn encode_touch(code_gpa: u64, reports: Reports) -> Result<Vec<u8>, GuestError> {
    let mut a = CodeAssembler::new(64)?;
    let mut block = a.create_label();
    let mut tail = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut block)?;
    a.mov(rcx, rsi)?;
    a.sub(rcx, r10)?;
    a.cmp(rcx, TOUCH_BLOCK as i32)?;
    a.jb(tail)?;
    a.mov(rax, r10)?;
    a.shl(rax, PAGE_SHIFT)?;
    a.add(rax, rdi)?;
    for page in 0..TOUCH_BLOCK {
        a.mov(qword_ptr(rax + (page << PAGE_SHIFT) as i32), rax)?;
    }
    a.add(r10, TOUCH_BLOCK as i32)?;
    a.add(r12, TOUCH_BLOCK as i32)?;
    emit_progress(&mut a, block, reports)?;

    a.set_label(&mut tail)?;
    a.cmp(r10, rsi)?;
    a.jae(done)?;
    a.mov(rax, r10)?;
    a.shl(rax, PAGE_SHIFT)?;
    a.add(rax, rdi)?;
    a.mov(qword_ptr(rax), rax)?;
    a.inc(r10)?;
    a.inc(r12)?;
    emit_progress(&mut a, tail, reports)?;

    a.set_label(&mut done)?;
    a.mov(eax, r12d)?;
    emit_report(&mut a, reports, ReportKind::Done)?;
    // The host stops the vCPU at DONE; spin here should it ever be resumed.
    a.jmp(done)?;
    Ok(a.assemble(code_gpa)?)
}

/// A guest that runs `iterations` of a two-instruction loop (`dec`, `jnz`) on one vCPU,
/// then reports DONE: for timing how the hypervisor executes guest code.
pub fn timing_loop(iterations: u32, place: &Placement) -> Result<GuestProgram, GuestError> {
    let mut a = CodeAssembler::new(64)?;
    let mut top = a.create_label();
    let mut done = a.create_label();
    a.mov(ecx, iterations.max(1))?;
    a.set_label(&mut top)?;
    a.dec(rcx)?;
    a.jnz(top)?;
    a.set_label(&mut done)?;
    a.mov(eax, iterations)?;
    a.out(u32::from(ports::DONE), eax)?;
    a.jmp(done)?;
    let code = a.assemble(place.code_gpa)?;
    Ok(GuestProgram {
        code,
        code_gpa: place.code_gpa,
        starts: vec![VcpuStart {
            rip: place.code_gpa,
            rsp: (place.stack_top)(0),
            ..VcpuStart::default()
        }],
        slices: vec![],
    })
}

fn encode(workload: &Workload, code_gpa: u64, reports: Reports) -> Result<Vec<u8>, GuestError> {
    if workload.pattern == Pattern::Touch {
        return encode_touch(code_gpa, reports);
    }
    let mut a = CodeAssembler::new(64)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    emit_index(&mut a, workload.pattern)?;
    a.mov(rax, rcx)?;
    a.shl(rax, PAGE_SHIFT)?;
    a.add(rax, rdi)?;
    match (workload.pattern, workload.op) {
        (Pattern::Verify, _) => emit_verify(&mut a, reports)?,
        (_, Operation::Write) => emit_write(&mut a)?,
        (_, Operation::Read) => emit_read(&mut a)?,
        (_, Operation::Mixed) => {
            let mut write = a.create_label();
            let mut after = a.create_label();
            a.test(r12b, 1)?;
            a.jnz(write)?;
            emit_read(&mut a)?;
            a.jmp(after)?;
            a.set_label(&mut write)?;
            emit_write(&mut a)?;
            a.set_label(&mut after)?;
            a.nop()?;
        }
    }
    a.inc(r12)?;
    emit_progress(&mut a, top, reports)?;
    Ok(a.assemble(code_gpa)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    fn place(data_pages: u64) -> Placement {
        Placement {
            code_gpa: 0x10_0000,
            code_max: 0x1000,
            data_gpa: 0x20_0000,
            data_pages,
            stack_top: |i| 0x18_0000 + (i as u64 + 1) * 0x1000,
            reports: Reports::Ports,
        }
    }

    fn mnemonics(code: &[u8], ip: u64) -> Vec<Mnemonic> {
        Decoder::with_ip(64, code, ip, DecoderOptions::NONE)
            .into_iter()
            .map(|i| i.mnemonic())
            .collect()
    }

    #[test]
    fn every_workload_assembles_and_reports_through_out() {
        for name in Workload::all_names() {
            let w: Workload = name.parse().unwrap();
            let prog = assemble(&w, 4, &place(1024)).unwrap();
            let m = mnemonics(&prog.code, prog.code_gpa);
            assert!(m.contains(&Mnemonic::Out), "{name} never reports");
            assert!(!m.contains(&Mnemonic::INVALID), "{name} has invalid code");
        }
    }

    #[test]
    fn touch_spends_about_one_instruction_a_page() {
        let w: Workload = "touch".parse().unwrap();
        let code = encode(&w, 0x10_0000, Reports::Ports).unwrap();
        let all = Decoder::with_ip(64, &code, 0x10_0000, DecoderOptions::NONE)
            .into_iter()
            .collect::<Vec<_>>();
        let writes = all
            .iter()
            .filter(|i| i.mnemonic() == Mnemonic::Mov && i.op0_kind() == iced_x86::OpKind::Memory)
            .count();
        // One unrolled block plus the one-page tail; the block's bookkeeping is a few
        // instructions for all of its pages.
        assert_eq!(writes, TOUCH_BLOCK as usize + 1);
        assert!(
            all.len() < TOUCH_BLOCK as usize + 40,
            "{} instructions",
            all.len()
        );
    }

    #[test]
    fn the_timing_loop_is_two_instructions_then_done() {
        let prog = timing_loop(10, &place(4)).unwrap();
        let m = mnemonics(&prog.code, prog.code_gpa);
        assert_eq!(
            &m[..5],
            &[
                Mnemonic::Mov,
                Mnemonic::Dec,
                Mnemonic::Jne,
                Mnemonic::Mov,
                Mnemonic::Out
            ]
        );
        assert_eq!(prog.starts.len(), 1);
    }

    #[test]
    fn own_slices_are_disjoint_and_cover_the_data() {
        let w: Workload = "sequential-read".parse().unwrap();
        let prog = assemble(&w, 4, &place(1000)).unwrap();
        assert_eq!(prog.slices[0], (0x20_0000, 250));
        assert_eq!(prog.slices[3], (0x20_0000 + 750 * 4096, 250));
        assert_eq!(prog.starts[2].rdi, prog.slices[2].0);
    }

    #[test]
    fn shared_memory_walkers_start_apart() {
        let mut w: Workload = "sequential-read".parse().unwrap();
        w.sharing = Sharing::Shared;
        let prog = assemble(&w, 4, &place(1000)).unwrap();
        assert!(prog.slices.iter().all(|s| *s == (0x20_0000, 1000)));
        assert_eq!(prog.starts[1].r10, 250);
    }

    #[test]
    fn too_little_memory_for_the_vcpus_is_an_error() {
        let w: Workload = "verify".parse().unwrap();
        assert!(matches!(
            assemble(&w, 8, &place(4)),
            Err(GuestError::TooSmall { .. })
        ));
    }
}
