//! How many pages a demand fault brings in besides its own: the prefetch strategy, as the
//! operator writes it (`off`, a number of pages, `adaptive`) on the command line, in a
//! scenario, in a timeline, on the control socket and in recordings.

use serde::{Deserialize, Serialize};

/// The most pages one fault may bring in besides its own: 1 MiB, one frame over TCP.
pub const MAX_PREFETCH_PAGES: u32 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefetch {
    /// One page a fault: the demand path alone.
    #[default]
    Off,
    /// The N pages after each faulting page.
    Fixed(u32),
    /// Per vCPU: the next pages of a stream detected in its faults (sequential or strided,
    /// either direction), in a window that grows while the stream goes on through it and
    /// shrinks when it does not.
    Adaptive,
}

impl std::fmt::Display for Prefetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Prefetch::Off => f.write_str("off"),
            Prefetch::Fixed(n) => write!(f, "{n}"),
            Prefetch::Adaptive => f.write_str("adaptive"),
        }
    }
}

impl std::str::FromStr for Prefetch {
    type Err = String;
    fn from_str(s: &str) -> Result<Prefetch, String> {
        match s {
            "off" | "0" => Ok(Prefetch::Off),
            "adaptive" => Ok(Prefetch::Adaptive),
            n => match n.parse::<u32>() {
                Ok(n) if n <= MAX_PREFETCH_PAGES => Ok(Prefetch::Fixed(n)),
                Ok(n) => Err(format!(
                    "prefetch of {n} pages: at most {MAX_PREFETCH_PAGES}"
                )),
                Err(_) => Err(format!(
                    "unknown prefetch '{s}' (expected off, a number of pages up to \
                     {MAX_PREFETCH_PAGES}, or adaptive)"
                )),
            },
        }
    }
}

impl Serialize for Prefetch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefetch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Prefetch, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Prefetch {
    /// As one word for a packed atomic: 0 off, N fixed, u32::MAX adaptive.
    pub fn to_word(self) -> u32 {
        match self {
            Prefetch::Off => 0,
            Prefetch::Fixed(n) => n.min(MAX_PREFETCH_PAGES),
            Prefetch::Adaptive => u32::MAX,
        }
    }

    pub fn from_word(w: u32) -> Prefetch {
        match w {
            0 => Prefetch::Off,
            u32::MAX => Prefetch::Adaptive,
            n => Prefetch::Fixed(n.min(MAX_PREFETCH_PAGES)),
        }
    }
}

/// What prefetch has done in the current migration, for the live view and the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchStatus {
    /// The strategy in force, as the operator would type it.
    pub strategy: String,
    /// Pages brought in by prefetch (beside the faulting page of each fetch).
    pub pages: u64,
    /// Of those, pages of windows the vCPU's stream went on past: used, as far as the
    /// faults show (a lower bound; a page used and then left behind is not seen).
    pub used: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_form_reads_back_in_text_and_json() {
        for p in [Prefetch::Off, Prefetch::Fixed(8), Prefetch::Adaptive] {
            assert_eq!(p.to_string().parse::<Prefetch>(), Ok(p));
            let j = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Prefetch>(&j).unwrap(), p);
            assert_eq!(Prefetch::from_word(p.to_word()), p);
        }
        assert_eq!("0".parse::<Prefetch>(), Ok(Prefetch::Off));
        assert!(
            "256"
                .parse::<Prefetch>()
                .unwrap_err()
                .contains("at most 255")
        );
        assert!(
            "lots"
                .parse::<Prefetch>()
                .unwrap_err()
                .contains("expected off")
        );
    }
}
