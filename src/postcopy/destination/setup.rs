//! What assembling a destination asks of the kernel and the scheduler: the backing this
//! kernel serves best, the registration and features of each backing, the readers' spin,
//! and the threads that serve a destination.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::Destination;
use crate::contract::Backing;
use crate::postcopy::PostcopyError;
use crate::uffd::{Features, Userfaultfd};

/// The backing a destination gets unless told otherwise: shared memory where this
/// kernel's userfaultfd resolves minor faults on it (Linux 5.13+), since its faults and
/// fills allocate nothing (BENCHMARKS.md); anonymous memory elsewhere.
pub fn preferred_backing() -> Backing {
    match Userfaultfd::available_features() {
        Ok((features, _)) if features.contains(Features::MINOR_SHMEM) => Backing::Shared,
        _ => Backing::Anonymous,
    }
}

/// Registers `[start, start+len)` of RAM of `backing` so that its missing pages fault to
/// `uffd`: missing faults for anonymous RAM, minor faults for shared.
pub fn register(
    uffd: &Userfaultfd,
    backing: Backing,
    start: u64,
    len: u64,
) -> Result<(), crate::uffd::UffdError> {
    match backing {
        Backing::Anonymous => uffd.register_missing(start, len),
        Backing::Shared => uffd.register_minor(start, len),
    }
}

/// The userfaultfd features a destination of `backing` needs on top of its fault mode's.
pub fn backing_features(backing: Backing) -> Features {
    match backing {
        Backing::Anonymous => Features::NONE,
        Backing::Shared => Features::MINOR_SHMEM,
    }
}

/// How long a uffd reader keeps reading after a fault when it may spin.
const SPIN_AFTER_FAULT: Duration = Duration::from_micros(100);

/// How long uffd readers keep reading after a fault before sleeping in poll, given the
/// threads that are busy during a post-copy (vCPUs, readers, push). Spinning saves the
/// reader's wake-up on every fault, which is most of a fault's cost with a core to spare,
/// and costs a core's worth of time slices when there is none (BENCHMARKS.md).
pub fn auto_reader_spin(busy_threads: usize) -> Duration {
    spin_while_cores_suffice(busy_threads, SPIN_AFTER_FAULT)
}

/// How long a prefetch worker waits awake for a stream's next window when it may spin.
const AHEAD_SPIN: Duration = Duration::from_millis(2);

/// How long prefetch workers wait awake for the next window: as readers spin, only while
/// every busy thread has a core; then a window starts landing at once, not after a
/// wake-up that takes the vCPU's lead (BENCHMARKS.md).
pub fn auto_ahead_spin(busy_threads: usize) -> Duration {
    spin_while_cores_suffice(busy_threads, AHEAD_SPIN)
}

/// `spin` while every one of `busy_threads` has a core of its own, else none.
fn spin_while_cores_suffice(busy_threads: usize, spin: Duration) -> Duration {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if busy_threads <= cores {
        spin
    } else {
        Duration::ZERO
    }
}

/// Starts a named background thread running `f` on the destination.
pub fn spawn(
    name: String,
    dest: Arc<Destination>,
    f: impl FnOnce(&Destination) -> Result<(), PostcopyError> + Send + 'static,
) -> Result<JoinHandle<Result<(), PostcopyError>>, PostcopyError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let r = f(&dest);
            if r.is_err() {
                // One failed worker ends the post-copy for everyone.
                dest.stop();
            }
            r
        })
        .map_err(PostcopyError::Thread)
}
