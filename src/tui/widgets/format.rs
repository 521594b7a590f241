//! Short human forms of the numbers the panes show.

use std::fmt;
use std::time::Duration;

/// A latency in µs: `850us`, `3.2ms`, `120ms`, `1.5s`.
pub struct Micros(pub u64);

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        if us < 1_000 {
            write!(f, "{us}us")
        } else if us < 10_000 {
            write!(f, "{:.1}ms", us as f64 / 1e3)
        } else if us < 1_000_000 {
            write!(f, "{}ms", us / 1_000)
        } else {
            write!(f, "{:.1}s", us as f64 / 1e6)
        }
    }
}

/// A count kept within 6 columns: `12345`, `1234k`, `12M`.
pub struct Count(pub u64);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n < 100_000 {
            write!(f, "{n}")
        } else if n < 10_000_000 {
            write!(f, "{}k", n / 1_000)
        } else {
            write!(f, "{}M", n / 1_000_000)
        }
    }
}

/// A size as the shortest exact form `parse_size` reads back: `0`, `128M`, `2G`, else hex.
pub struct ShortSize(pub u64);

impl fmt::Display for ShortSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b == 0 {
            return write!(f, "0");
        }
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if b.trailing_zeros() >= shift {
                return write!(f, "{}{unit}", b >> shift);
            }
        }
        write!(f, "{b:#x}")
    }
}

/// Milliseconds as whole seconds in humantime form (`1m 12s`).
pub fn whole_secs(ms: u64) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(ms / 1_000))
}

/// The label of a latency bucket's lower bound: `1us` ... `512us`, `1ms` ... `524ms`, `>=1s`.
pub struct BucketLabel(pub usize);

impl fmt::Display for BucketLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = crate::contract::LatencyBuckets::lower_us(self.0);
        if self.0 + 1 >= crate::contract::LATENCY_BUCKETS {
            write!(f, ">={}s", us / 1_000_000)
        } else if us < 1_000 {
            write!(f, "{us}us")
        } else if us < 1_000_000 {
            write!(f, "{}ms", us / 1_000)
        } else {
            write!(f, "{}s", us / 1_000_000)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(Micros(850).to_string(), "850us");
        assert_eq!(Micros(3_200).to_string(), "3.2ms");
        assert_eq!(Micros(120_400).to_string(), "120ms");
        assert_eq!(Micros(1_500_000).to_string(), "1.5s");
        assert_eq!(Count(1234).to_string(), "1234");
        assert_eq!(Count(1_234_567).to_string(), "1234k");
        assert_eq!(ShortSize(0).to_string(), "0");
        assert_eq!(ShortSize(384 << 20).to_string(), "384M");
        assert_eq!(ShortSize(2 << 30).to_string(), "2G");
        assert_eq!(ShortSize(0x1234).to_string(), "0x1234");
        assert_eq!(whole_secs(72_900).to_string(), "1m 12s");
        assert_eq!(BucketLabel(0).to_string(), "1us");
        assert_eq!(BucketLabel(10).to_string(), "1ms");
        assert_eq!(BucketLabel(19).to_string(), "524ms");
        assert_eq!(BucketLabel(20).to_string(), ">=1s");
    }
}
