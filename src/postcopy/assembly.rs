//! A destination's assembly, as a migration's leg and `faultline bench` both make it: the
//! userfaultfds (one per vCPU slice, or one for all), the features the fault mode and the
//! backing need, the handler of exit mode, the uffd readers, the prefetch workers and the
//! push threads, and the [`Workers`] that stop and join them.

use std::sync::Arc;
use std::thread::JoinHandle;

use super::PostcopyError;
use super::destination::{self, Destination};
use crate::contract::{Backing, FaultMode, Transport};
use crate::uffd::{Features, Userfaultfd};
use crate::vmm::MissingPageHandler;

/// What a destination is made of.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub mode: FaultMode,
    pub backing: Backing,
    pub vcpus: usize,
    /// A userfaultfd per vCPU slice, so one vCPU's faults never queue behind another's
    /// and each slice is a VMA of its own, whose locks no other vCPU takes
    /// (BENCHMARKS.md); else one for all.
    pub per_slice: bool,
    /// Readers of the one userfaultfd (uffd mode without `per_slice`).
    pub readers: usize,
    /// Background push threads (they wait until the push is enabled).
    pub push_threads: usize,
}

impl Plan {
    /// The userfaultfds, with what the fault mode and the backing need.
    pub fn userfaultfds(&self) -> Result<Vec<Arc<Userfaultfd>>, PostcopyError> {
        let features = match self.mode {
            FaultMode::Uffd => Features::THREAD_ID,
            FaultMode::Exit => Features::SIGBUS,
        }
        .union(destination::backing_features(self.backing));
        let count = if self.per_slice { self.vcpus } else { 1 };
        (0..count)
            .map(|_| Ok(Arc::new(Userfaultfd::new(features, true)?)))
            .collect()
    }

    /// Which userfaultfd each reader thread reads: one each per slice, or all the one.
    pub fn reader_uffds(&self) -> Vec<usize> {
        match (self.mode, self.per_slice) {
            (FaultMode::Exit, _) => Vec::new(),
            (FaultMode::Uffd, true) => (0..self.vcpus).collect(),
            (FaultMode::Uffd, false) => vec![0; self.readers.max(1)],
        }
    }

    /// Threads that fetch pages: the vCPUs themselves (exit mode) or the readers, and the
    /// push threads.
    pub fn fetchers(&self) -> usize {
        let on_faults = match self.mode {
            FaultMode::Exit => self.vcpus,
            FaultMode::Uffd => self.reader_uffds().len(),
        };
        on_faults + self.push_threads
    }

    /// How long a fetcher spins on its socket for an answer: only the vCPUs beyond one
    /// per reader compete for cores with the fetchers (a vCPU sleeps while its fault is
    /// fetched).
    pub fn socket_spin(&self) -> std::time::Duration {
        let sleepers = match self.mode {
            FaultMode::Exit => 0,
            FaultMode::Uffd => self.vcpus.saturating_sub(self.reader_uffds().len()),
        };
        super::net::socket_spin(self.fetchers(), sleepers)
    }

    /// How long readers keep reading after a fault: while every busy thread (vCPUs,
    /// readers, push, and over TCP a server thread per fetcher) has a core.
    pub fn reader_spin(&self, transport: Transport) -> std::time::Duration {
        let servers = match transport {
            Transport::Tcp => self.fetchers(),
            Transport::Local => 0,
        };
        destination::auto_reader_spin(
            self.vcpus + self.reader_uffds().len() + self.push_threads + servers,
        )
    }

    /// What the vCPUs call on a fault exit: the destination itself in exit mode.
    pub fn handler(&self, dest: &Arc<Destination>) -> Option<Arc<dyn MissingPageHandler>> {
        match self.mode {
            FaultMode::Uffd => None,
            FaultMode::Exit => Some(dest.clone()),
        }
    }

    /// Starts the readers and the push threads of `dest`; `on_reader(i)` runs first on
    /// reader `i`'s own thread (placement, say).
    pub fn start(
        &self,
        dest: &Arc<Destination>,
        on_reader: impl Fn(usize) -> Result<(), PostcopyError> + Clone + Send + 'static,
    ) -> Result<Workers, PostcopyError> {
        dest.set_readers_wait(self.per_slice);
        let mut workers = Workers {
            dest: dest.clone(),
            threads: Vec::new(),
        };
        for (i, u) in self.reader_uffds().into_iter().enumerate() {
            let on_reader = on_reader.clone();
            workers.threads.push(destination::spawn(
                format!("uffd-reader{i}"),
                dest.clone(),
                move |d| {
                    on_reader(i)?;
                    d.serve_uffd_of(u)
                },
            )?);
        }
        // Workers fill what a fault need not wait for: a window beyond its head from an
        // in-process source, and the fills of a reader shared by vCPUs.
        let workers_count = prefetch_workers(self.vcpus);
        dest.set_ahead_spin(destination::auto_ahead_spin(
            self.vcpus + self.reader_uffds().len() + self.push_threads + workers_count,
        ));
        for i in 0..workers_count {
            workers.threads.push(destination::spawn(
                format!("prefetch{i}"),
                dest.clone(),
                |d| d.serve_ahead(),
            )?);
        }
        let parts = self.push_threads as u64;
        for i in 0..parts {
            workers.threads.push(destination::spawn(
                format!("push{i}"),
                dest.clone(),
                move |d| d.push_part(i, parts),
            )?);
        }
        Ok(workers)
    }
}

/// Prefetch workers for `vcpus`: one copies a page in well under the time a guest takes
/// to get to the next, so it keeps ahead of several streaming vCPUs.
fn prefetch_workers(vcpus: usize) -> usize {
    const VCPUS_A_WORKER: usize = 4;
    vcpus.div_ceil(VCPUS_A_WORKER).max(1)
}

/// Threads serving the destination; stopped and joined on drop.
pub struct Workers {
    dest: Arc<Destination>,
    threads: Vec<JoinHandle<Result<(), PostcopyError>>>,
}

impl Workers {
    pub fn finish(mut self) -> Result<(), PostcopyError> {
        self.dest.stop();
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            let r = t
                .join()
                .map_err(|_| PostcopyError::Panicked)
                .and_then(|r| r);
            // The first error, unless it only says a thread stopped because another failed.
            if result.is_ok() || (matches!(result, Err(PostcopyError::StoppedEarly)) && r.is_err())
            {
                result = r;
            }
        }
        result
    }

    /// Stops the rest after one ended early, and returns why it ended. With no reader
    /// left, vCPUs waiting in the kernel for pages are let go, so they can be stopped.
    pub fn failure(self) -> PostcopyError {
        let dest = self.dest.clone();
        let e = match self.finish() {
            Err(e) => e,
            Ok(()) => PostcopyError::StoppedEarly,
        };
        dest.release_faults();
        e
    }

    pub fn any_finished(&self) -> bool {
        self.threads.iter().any(|t| t.is_finished())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.dest.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
