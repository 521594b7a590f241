//! The stall book on trace lines as QEMU writes them, in and out of order.

use super::*;

const EPOCH: u64 = 1_700_000_000_000_000;

fn at(ms: u64, event: TraceEvent) -> TraceLine {
    TraceLine {
        tid: Some(1),
        at_us: Some(EPOCH + ms * 1000),
        event,
    }
}

fn begin(ms: u64, addr: u64, cpu: usize) -> TraceLine {
    at(
        ms,
        TraceEvent::BlocktimeBegin {
            addr,
            cpu: Some(cpu),
            received: false,
        },
    )
}

fn end(ms: u64, addr: u64) -> TraceLine {
    at(
        ms,
        TraceEvent::BlocktimeEnd {
            addr,
            affected_cpus: None,
        },
    )
}

#[test]
fn a_stall_runs_from_begin_to_the_end_of_its_page() {
    let mut b = StallBook::new(2, 1 << 30, EPOCH).unwrap();
    b.fold(&begin(10, 0x5000, 0));
    b.fold(&begin(12, 0x5000, 1));
    b.fold(&end(11, 0x9000)); // another page: nobody waited for it
    assert_eq!(b.stall_ns(0, 15_000_000), 5_000_000, "in progress counts");
    b.fold(&end(20, 0x5000));
    assert_eq!(b.stall_ns(0, 99_000_000), 10_000_000);
    assert_eq!(b.stall_ns(1, 99_000_000), 8_000_000);
    assert_eq!(b.faults(0), 1);
    assert_eq!(b.activity(0, 30_000_000), Activity::Running);
    b.advance(30_000_000);
    // Both waited from 12 to 20 ms.
    assert_eq!(b.blocktime_all_ns(), 8_000_000);
    // hdrhistogram keeps two significant digits.
    assert!((9_900..=10_100).contains(&b.vcpu_latency(0).max_us));
}

#[test]
fn end_one_names_the_vcpu_and_received_pages_cost_nothing() {
    let mut b = StallBook::new(2, 1 << 30, EPOCH).unwrap();
    b.fold(&begin(0, 0x5000, 1));
    b.fold(&at(3, TraceEvent::BlocktimeEndOne { cpu: Some(1) }));
    assert_eq!(b.stall_ns(1, 50_000_000), 3_000_000);
    b.fold(&at(
        4,
        TraceEvent::BlocktimeBegin {
            addr: 0x6000,
            cpu: Some(0),
            received: true,
        },
    ));
    assert_eq!(b.faults(0), 1);
    assert_eq!(b.stall_ns(0, 50_000_000), 0);
    b.fold(&at(
        4,
        TraceEvent::BlocktimeBegin {
            addr: 0x6000,
            cpu: None,
            received: false,
        },
    ));
    assert_eq!(b.non_vcpu_faults(), 1);
}

#[test]
fn faults_land_in_regions_once_the_ram_block_is_known() {
    let mut b = StallBook::new(1, 64 << 20, EPOCH).unwrap();
    let base = 0x7f00_0000_0000;
    b.fold(&at(
        0,
        TraceEvent::PageRequest {
            hva: base + 0x10_0000,
            ramblock: "pc.ram".into(),
            offset: 0x10_0000,
        },
    ));
    assert!(b.knows_offsets());
    b.fold(&begin(1, base + (63 << 20), 0));
    let rows = b.fault_heatmap().rows;
    assert_eq!(rows.len(), FAULT_HEATMAP_ROWS);
    assert_eq!(rows[63].iter().sum::<u32>(), 1);
    assert_eq!(
        b.activity(0, 2_000_000),
        Activity::Stalled {
            gpa: 63 << 20,
            for_us: 1000
        }
    );
}

#[test]
fn the_stall_heatmap_splits_a_stall_over_its_columns() {
    let mut b = StallBook::new(1, 1 << 30, EPOCH).unwrap();
    b.fold(&begin(250, 0x1000, 0));
    b.fold(&end(750, 0x1000));
    b.advance(1_000_000_000);
    let h = b.stall_heatmap(1_000_000_000);
    assert_eq!(h.rows[0][..2], [50, 50]);
    assert_eq!(
        b.stall_ns_within(0, 500_000_000, 1_000_000_000),
        250_000_000
    );
}

#[test]
fn an_end_written_before_its_begin_ends_the_wait_at_its_own_stamp() {
    let mut b = StallBook::new(1, 1 << 30, EPOCH).unwrap();
    b.fold(&end(5, 0x7000));
    b.fold(&begin(4, 0x7000, 0));
    assert_eq!(b.faults(0), 1);
    assert_eq!(b.activity(0, 10_000_000), Activity::Running);
    assert_eq!(b.stall_ns(0, 10_000_000), 1_000_000);
    // Placed before the fault was even read: no wait at all.
    b.fold(&end(6, 0x9000));
    b.fold(&begin(7, 0x9000, 0));
    assert_eq!(b.stall_ns(0, 10_000_000), 1_000_000);
    b.close_all(0);
    b.fold(&begin(6, 0x8000, 0));
    b.close_all(9_000_000);
    assert_eq!(b.stall_ns(0, 50_000_000), 4_000_000);
}

#[test]
fn a_fault_on_the_page_already_waited_for_is_the_same_wait() {
    let mut b = StallBook::new(1, 1 << 30, EPOCH).unwrap();
    b.fold(&begin(1, 0x7000, 0));
    b.fold(&begin(3, 0x7000, 0));
    b.fold(&end(5, 0x7000));
    assert_eq!(b.faults(0), 1);
    assert_eq!(b.stall_ns(0, 9_000_000), 4_000_000);
}

#[test]
fn a_stamp_far_ahead_restarts_the_heatmaps_rather_than_rolling_to_it() {
    let mut b = StallBook::new(1, 1 << 30, EPOCH).unwrap();
    b.fold(&begin(1, 0x7000, 0));
    // Years ahead: one step, not billions.
    b.fold(&end(100_000_000_000, 0x7000));
    b.advance(100_000_000_000 * 1_000_000);
    assert_eq!(
        b.stall_heatmap(100_000_000_000 * 1_000_000).rows[0].len(),
        1
    );
}

#[test]
fn lines_without_a_timestamp_are_not_timed() {
    let mut b = StallBook::new(1, 1 << 30, EPOCH).unwrap();
    b.fold(&TraceLine {
        tid: None,
        at_us: None,
        event: TraceEvent::BlocktimeBegin {
            addr: 1,
            cpu: Some(0),
            received: false,
        },
    });
    assert_eq!(b.faults(0), 0);
}
