//! Parsing and printing of the quantities a user types: sizes (`256M`, `1GiB`), rates
//! (`40MiB/s`, `unlimited`) and guest-physical ranges (`0x10000000+64M`).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} '{input}': {why}")]
pub struct UnitError {
    pub what: &'static str,
    pub input: String,
    pub why: &'static str,
}

fn err(what: &'static str, input: &str, why: &'static str) -> UnitError {
    UnitError {
        what,
        input: input.into(),
        why,
    }
}

/// Parses a byte count: a number with an optional K/M/G/T suffix (binary multiples; `B`,
/// `iB` and lower case accepted), or a `0x` hexadecimal number.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    const WHAT: &str = "size";
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|_| err(WHAT, s, "bad hexadecimal number"));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(err(WHAT, s, "expected a number such as 256M or 1G"));
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(err(WHAT, s, "unknown unit; use K, M, G or T")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| err(WHAT, s, "expected a number such as 256M or 1G"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(err(WHAT, s, "too large"));
    }
    Ok(bytes as u64)
}

/// A transfer rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rate {
    Unlimited,
    BytesPerSec(u64),
}

impl Rate {
    pub fn bytes_per_sec(self) -> Option<u64> {
        match self {
            Rate::Unlimited => None,
            Rate::BytesPerSec(b) => Some(b),
        }
    }
}

/// Parses `unlimited` or SIZE`/s` (the `/s` may be omitted).
pub fn parse_rate(s: &str) -> Result<Rate, UnitError> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("inf") {
        return Ok(Rate::Unlimited);
    }
    let size = t.strip_suffix("/s").unwrap_or(t);
    match parse_size(size) {
        Ok(0) => Err(err("rate", s, "must be above zero, or 'unlimited'")),
        Ok(b) => Ok(Rate::BytesPerSec(b)),
        Err(_) => Err(err(
            "rate",
            s,
            "expected SIZE/s such as 40MiB/s, or 'unlimited'",
        )),
    }
}

/// Bytes as a short human string with a binary unit (`1.5 GiB`).
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut u = 0;
        while v >= 1024.0 && u < UNITS.len() - 1 {
            v /= 1024.0;
            u += 1;
        }
        if u == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[u])
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Unlimited => write!(f, "unlimited"),
            Rate::BytesPerSec(b) => write!(f, "{}/s", Bytes(*b)),
        }
    }
}

/// A guest-physical range `[start, start + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpaRange {
    pub start: u64,
    pub len: u64,
}

impl GpaRange {
    /// Saturates: a range from a peer may be nonsense, and is then refused as outside RAM.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// Parses `START+LEN` or `START-END` (either side a size, e.g. `0x10000000+64M`).
pub fn parse_range(s: &str) -> Result<GpaRange, UnitError> {
    const WHAT: &str = "range";
    let t = s.trim();
    let (start, len) = if let Some((a, b)) = t.split_once('+') {
        (parse_size(a)?, parse_size(b)?)
    } else if let Some((a, b)) = t.split_once('-') {
        let (a, b) = (parse_size(a)?, parse_size(b)?);
        if b <= a {
            return Err(err(WHAT, s, "the end must lie after the start"));
        }
        (a, b - a)
    } else {
        return Err(err(
            WHAT,
            s,
            "expected START+LEN or START-END, e.g. 0x10000000+64M",
        ));
    };
    if len == 0 {
        return Err(err(WHAT, s, "the range is empty"));
    }
    start
        .checked_add(len)
        .ok_or_else(|| err(WHAT, s, "the range overflows"))?;
    Ok(GpaRange { start, len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("0x1000").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("40MiB/s").unwrap(), Rate::BytesPerSec(40 << 20));
        assert_eq!(parse_rate("unlimited").unwrap(), Rate::Unlimited);
        assert_eq!(parse_rate("1G").unwrap(), Rate::BytesPerSec(1 << 30));
        let e = parse_rate("40 furlongs/s").unwrap_err();
        assert!(e.to_string().contains("40 furlongs/s"));
        assert!(parse_rate("0/s").is_err());
        assert_eq!(Rate::BytesPerSec(25 << 20).to_string(), "25.0 MiB/s");
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("0x10000000+64M").unwrap(),
            GpaRange {
                start: 0x1000_0000,
                len: 64 << 20
            }
        );
        assert_eq!(parse_range("1M-3M").unwrap().len, 2 << 20);
        assert!(parse_range("3M-1M").is_err());
        assert!(parse_range("0x1000").is_err());
    }
}
