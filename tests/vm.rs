//! The test VM on the real /dev/kvm: every workload runs and reports progress, pause and
//! resume act at once, and a vCPU captured in one VM continues in another.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use faultline::contract::Workload;
use faultline::guest::{self};
use faultline::vmm::{RunState, Vm, VmConfig, layout};

const MEM: u64 = 64 << 20;
const WAIT: Duration = Duration::from_secs(20);

fn started(workload: &str, vcpus: usize) -> Vm {
    let w: Workload = workload.parse().unwrap();
    let vm = Vm::new(VmConfig {
        vcpus,
        mem_bytes: MEM,
    })
    .unwrap();
    let program = guest::assemble(&w, vcpus, &layout::placement(MEM)).unwrap();
    vm.load(&program).unwrap();
    vm.resume_all().unwrap();
    vm
}

fn reports(vm: &Vm) -> Vec<u64> {
    vm.vcpus()
        .iter()
        .map(|v| v.stats().progress_reports.load(Ordering::Relaxed))
        .collect()
}

fn accesses(vm: &Vm) -> Vec<u64> {
    vm.vcpus()
        .iter()
        .map(|v| v.stats().guest_accesses.load(Ordering::Relaxed))
        .collect()
}

/// Waits until every vCPU has reported progress `more` times beyond `from`.
fn wait_for_progress(vm: &Vm, from: &[u64], more: u64) {
    let start = Instant::now();
    loop {
        assert_eq!(vm.failure(), None);
        let now = reports(vm);
        if now.iter().zip(from).all(|(n, f)| *n >= f + more) {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "progress stalled: {from:?} -> {now:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn check_runs_pauses_and_resumes(workload: &str, vcpus: usize) {
    let vm = started(workload, vcpus);
    wait_for_progress(&vm, &vec![0; vcpus], 2);

    vm.pause_all().unwrap();
    assert!(vm.vcpus().iter().all(|v| v.state() == RunState::Paused));
    let paused_at = reports(&vm);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(reports(&vm), paused_at, "progress while paused");

    vm.resume_all().unwrap();
    wait_for_progress(&vm, &paused_at, 2);
    for v in vm.vcpus() {
        assert_eq!(v.stats().verify_mismatches.load(Ordering::Relaxed), 0);
    }
}

macro_rules! workload_tests {
    ($($name:ident: $workload:expr,)*) => {$(
        mod $name {
            #[test]
            fn one_vcpu() {
                super::check_runs_pauses_and_resumes($workload, 1);
            }
            #[test]
            fn four_vcpus() {
                super::check_runs_pauses_and_resumes($workload, 4);
            }
        }
    )*};
}

workload_tests! {
    sequential_read: "sequential-read",
    sequential_write: "sequential-write",
    sequential_mixed: "sequential-mixed",
    random_read: "random-read",
    random_write: "random-write",
    random_mixed: "random-mixed",
    hotspot_read: "hotspot-read",
    hotspot_write: "hotspot-write",
    hotspot_mixed: "hotspot-mixed",
    stride_read: "stride-read",
    stride_write: "stride-write",
    stride_mixed: "stride-mixed",
    verify: "verify",
}

#[test]
fn touch_workload_finishes_and_reports_every_page() {
    for vcpus in [1, 4] {
        let vm = started("touch", vcpus);
        let start = Instant::now();
        while !vm.vcpus().iter().all(|v| v.state() == RunState::Done) {
            assert_eq!(vm.failure(), None);
            assert!(start.elapsed() < WAIT, "touch did not finish");
            std::thread::sleep(Duration::from_millis(2));
        }
        let slice = layout::placement(MEM).data_pages / vcpus as u64;
        for v in vm.vcpus() {
            assert_eq!(v.stats().done_accesses.load(Ordering::Relaxed), slice);
        }
        // Every page of every slice was written (4 vCPUs also run the loop's one-page tail).
        let data = layout::data_gpa();
        for page in 0..slice * vcpus as u64 {
            let gpa = data + page * layout::PAGE_SIZE;
            let value = vm.ram().read_u64(gpa).unwrap();
            assert!(value != 0 && value <= gpa, "page {gpa:#x} holds {value:#x}");
        }
    }
}

#[test]
fn shared_memory_workload_runs_on_every_vcpu() {
    let mut w: Workload = "random-mixed".parse().unwrap();
    w.sharing = faultline::contract::Sharing::Shared;
    let vm = Vm::new(VmConfig {
        vcpus: 4,
        mem_bytes: MEM,
    })
    .unwrap();
    vm.load(&guest::assemble(&w, 4, &layout::placement(MEM)).unwrap())
        .unwrap();
    vm.resume_all().unwrap();
    wait_for_progress(&vm, &[0; 4], 2);
}

/// Captures a running VM's vCPUs, restores them into a second VM over a copy of the
/// memory, and checks the guest carries on from where it was.
fn check_migrates_to_a_second_vm(workload: &str, vcpus: usize) {
    let src = started(workload, vcpus);
    wait_for_progress(&src, &vec![0; vcpus], 3);
    src.pause_all().unwrap();
    let states = src.capture_all().unwrap();
    let at_capture = accesses(&src);

    let dst = Vm::new(VmConfig {
        vcpus,
        mem_bytes: MEM,
    })
    .unwrap();
    dst.ram().copy_all_from(src.ram()).unwrap();
    dst.restore_all(states).unwrap();
    drop(src);
    dst.resume_all().unwrap();
    wait_for_progress(&dst, &vec![0; vcpus], 2);
    let after = accesses(&dst);
    for (i, (a, b)) in at_capture.iter().zip(&after).enumerate() {
        assert!(b > a, "vCPU {i} restarted its count: {a} -> {b}");
    }
    for v in dst.vcpus() {
        assert_eq!(v.stats().verify_mismatches.load(Ordering::Relaxed), 0);
    }
}

#[test]
fn verify_workload_continues_in_a_second_vm_one_vcpu() {
    check_migrates_to_a_second_vm("verify", 1);
}

#[test]
fn verify_workload_continues_in_a_second_vm_four_vcpus() {
    check_migrates_to_a_second_vm("verify", 4);
}

#[test]
fn random_write_workload_continues_in_a_second_vm() {
    check_migrates_to_a_second_vm("random-write", 4);
}

#[test]
fn verify_workload_notices_lost_memory() {
    // Restoring over memory that lost the guest's writes must make the guest complain.
    let src = started("verify", 1);
    wait_for_progress(&src, &[0], 3);
    src.pause_all().unwrap();
    let states = src.capture_all().unwrap();
    let dst = Vm::new(VmConfig {
        vcpus: 1,
        mem_bytes: MEM,
    })
    .unwrap();
    // Only the boot region arrives; the data pages come back zeroed.
    let mut boot = vec![0u8; layout::BOOT_SIZE as usize];
    src.ram().read(0, &mut boot).unwrap();
    dst.ram().write(0, &boot).unwrap();
    dst.restore_all(states).unwrap();
    dst.resume_all().unwrap();
    let start = Instant::now();
    while dst.vcpus()[0]
        .stats()
        .verify_mismatches
        .load(Ordering::Relaxed)
        == 0
    {
        assert!(start.elapsed() < WAIT, "lost memory went unnoticed");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn pause_and_stop_reach_a_vcpu_that_never_exits() {
    // A huge progress interval is not available, but a paused-then-stopped VM must drop
    // promptly even with every vCPU busy in guest code.
    let vm = started("hotspot-read", 4);
    wait_for_progress(&vm, &[0; 4], 1);
    let t = Instant::now();
    vm.pause_all().unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(vm);
}

#[test]
fn capture_of_a_running_vcpu_is_refused() {
    let vm = started("sequential-read", 1);
    let err = vm.capture_all().unwrap_err();
    assert!(err.to_string().contains("must be paused"), "{err}");
}

#[test]
fn bad_vm_shapes_are_rejected() {
    assert!(
        Vm::new(VmConfig {
            vcpus: 0,
            mem_bytes: MEM
        })
        .is_err()
    );
    assert!(
        Vm::new(VmConfig {
            vcpus: 1,
            mem_bytes: 1 << 20
        })
        .is_err()
    );
}
