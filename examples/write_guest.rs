//! Writes faultline's bootable guest (the `verify` workload on 2 vCPUs, 256 MiB) to a
//! file, for a QEMU started by hand: `qemu-system-x86_64 -kernel FILE ...` with
//! `-device isa-debugcon,iobase=0xe9,chardev=...` to read its reports.

use faultline::contract::Workload;
use faultline::guest::boot;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: write_guest FILE")?;
    let workload: Workload = "verify".parse()?;
    let image = boot::build(&workload, 2, 256 << 20, 0xE9)?;
    std::fs::write(&path, &image.bytes)?;
    println!(
        "{path}: {} bytes, {} vCPUs, reports on port {:#x}",
        image.bytes.len(),
        image.slices.len(),
        image.console_port
    );
    Ok(())
}
