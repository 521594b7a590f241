//! A thread's time off the CPU, from the kernel's own clock: `/proc/TID/schedstat` gives
//! its time on a CPU and its time waiting in a run queue; what is left of the wall time
//! it spent asleep (for a vCPU thread in post-copy, mostly waiting for pages).

/// One reading of a thread's scheduler counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadTimes {
    pub on_cpu_ns: u64,
    pub run_queue_ns: u64,
}

/// Parses the first two fields of a schedstat line ("on-cpu-ns wait-ns timeslices").
pub fn parse(line: &str) -> Option<ThreadTimes> {
    let mut f = line.split_ascii_whitespace().map(str::parse::<u64>);
    Some(ThreadTimes {
        on_cpu_ns: f.next()?.ok()?,
        run_queue_ns: f.next()?.ok()?,
    })
}

/// Reads thread `tid`'s counters; None once the thread is gone.
pub fn read(tid: u32) -> Option<ThreadTimes> {
    parse(&std::fs::read_to_string(format!("/proc/{tid}/schedstat")).ok()?)
}

/// A thread's counters read over time, so its off-CPU time can be taken over any window
/// that starts and ends at a reading.
#[derive(Debug, Clone)]
pub struct ThreadClock {
    tid: u32,
    /// (when, in the caller's ns, counters), oldest first.
    samples: Vec<(u64, ThreadTimes)>,
}

impl ThreadClock {
    pub fn new(tid: u32) -> ThreadClock {
        ThreadClock {
            tid,
            samples: Vec::new(),
        }
    }

    pub fn tid(&self) -> u32 {
        self.tid
    }

    /// Reads the counters, as at time `at_ns`; false if the thread is gone.
    pub fn sample(&mut self, at_ns: u64) -> bool {
        match read(self.tid) {
            Some(t) => {
                self.push(at_ns, t);
                true
            }
            None => false,
        }
    }

    pub fn push(&mut self, at_ns: u64, t: ThreadTimes) {
        self.samples.push((at_ns, t));
    }

    /// The window from the first reading at or after `from` to the last at or before
    /// `to`, and the thread's off-CPU ns within it: (start, end, off).
    pub fn off_cpu_within(&self, from: u64, to: u64) -> Option<(u64, u64, u64)> {
        let i = self.samples.partition_point(|&(at, _)| at < from);
        let j = self.samples.partition_point(|&(at, _)| at <= to);
        let (&(a, before), &(b, after)) =
            (self.samples.get(i)?, self.samples.get(j.checked_sub(1)?)?);
        (b > a).then(|| (a, b, off_cpu_ns(b - a, before, after)))
    }
}

/// Wall time minus time on a CPU minus time waiting for one.
pub fn off_cpu_ns(wall_ns: u64, before: ThreadTimes, after: ThreadTimes) -> u64 {
    let busy = after.on_cpu_ns.saturating_sub(before.on_cpu_ns)
        + after.run_queue_ns.saturating_sub(before.run_queue_ns);
    wall_ns.saturating_sub(busy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_line() {
        assert_eq!(
            parse("532731162 4581019 61\n"),
            Some(ThreadTimes {
                on_cpu_ns: 532731162,
                run_queue_ns: 4581019
            })
        );
        assert_eq!(parse("12"), None);
        assert_eq!(parse("x y z"), None);
    }

    #[test]
    fn off_cpu_is_what_the_wall_clock_saw_beyond_running_and_queueing() {
        let a = ThreadTimes {
            on_cpu_ns: 100,
            run_queue_ns: 50,
        };
        let b = ThreadTimes {
            on_cpu_ns: 400,
            run_queue_ns: 150,
        };
        assert_eq!(off_cpu_ns(1000, a, b), 600);
        assert_eq!(off_cpu_ns(100, a, b), 0);
    }

    #[test]
    fn a_sleeping_thread_is_off_cpu_and_a_spinning_one_is_not() {
        use std::time::{Duration, Instant};
        let start = Instant::now();
        let ns = || start.elapsed().as_nanos() as u64;
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            std::thread::sleep(Duration::from_millis(300));
        });
        let mut off = ThreadClock::new(rx.recv().unwrap());
        assert!(off.sample(ns()));
        std::thread::sleep(Duration::from_millis(200));
        assert!(off.sample(ns()));
        sleeper.join().unwrap();
        let (a, b, asleep) = off.off_cpu_within(0, u64::MAX).unwrap();
        // Asleep the whole window, but for the time the scheduler took to note it.
        assert!(asleep > (b - a) * 9 / 10, "{asleep} of {}", b - a);
        let mut busy = ThreadClock::new(unsafe { libc::gettid() } as u32);
        assert!(busy.sample(ns()));
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(100) {
            std::hint::spin_loop();
        }
        assert!(busy.sample(ns()));
        let (a, b, off) = busy.off_cpu_within(0, u64::MAX).unwrap();
        assert!(off < (b - a) / 2, "{off} of {}", b - a);
    }

    #[test]
    fn windows_start_and_end_at_readings() {
        let t = |on| ThreadTimes {
            on_cpu_ns: on,
            run_queue_ns: 0,
        };
        let mut c = ThreadClock::new(1);
        c.push(100, t(0));
        c.push(200, t(50));
        c.push(300, t(60));
        assert_eq!(c.off_cpu_within(150, 300), Some((200, 300, 90)));
        assert_eq!(c.off_cpu_within(0, 250), Some((100, 200, 50)));
        assert_eq!(c.off_cpu_within(250, 260), None);
    }
}
