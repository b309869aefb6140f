use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An amount of memory in bytes, written by people as `"6GiB"`, `"512MiB"`, `"8GB"` or `1024`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a size such as \"512MiB\", \"6GiB\" or \"8GB\", got {0:?}")]
pub struct ByteSizeError(pub String);

impl ByteSize {
    pub const KIB: u64 = 1024;
    pub const MIB: u64 = 1024 * 1024;
    pub const GIB: u64 = 1024 * 1024 * 1024;

    pub fn bytes(self) -> u64 {
        self.0
    }
    pub fn gib(n: u64) -> Self {
        ByteSize(n * Self::GIB)
    }
    pub fn mib(n: u64) -> Self {
        ByteSize(n * Self::MIB)
    }
    pub fn saturating_sub(self, other: ByteSize) -> ByteSize {
        ByteSize(self.0.saturating_sub(other.0))
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ByteSizeError(text.to_string());
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        if number.is_empty() {
            return Err(err());
        }
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => return Err(err()),
        };
        let value: f64 = number.parse().map_err(|_| err())?;
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(err());
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    /// Binary units with one decimal, the way `nvidia-smi` users read memory.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if self.0 >= Self::GIB {
            write!(f, "{:.1}GiB", b / Self::GIB as f64)
        } else if self.0 >= Self::MIB {
            write!(f, "{:.0}MiB", b / Self::MIB as f64)
        } else if self.0 >= Self::KIB {
            write!(f, "{:.0}KiB", b / Self::KIB as f64)
        } else {
            write!(f, "{}B", self.0)
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    /// Accepts a number of bytes or a string with a unit.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"6GiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("expected a size, got negative {v}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_units() {
        assert_eq!("6GiB".parse::<ByteSize>().unwrap(), ByteSize::gib(6));
        assert_eq!("512MiB".parse::<ByteSize>().unwrap(), ByteSize::mib(512));
        assert_eq!("1.5GiB".parse::<ByteSize>().unwrap(), ByteSize(3 << 29));
        assert_eq!("8GB".parse::<ByteSize>().unwrap(), ByteSize(8_000_000_000));
        assert_eq!("1024".parse::<ByteSize>().unwrap(), ByteSize(1024));
        assert_eq!(" 2 GiB ".parse::<ByteSize>().unwrap(), ByteSize::gib(2));
    }

    #[test]
    fn refuses_what_is_not_a_size() {
        for bad in ["", "GiB", "six GiB", "6 gigs", "-1GiB", "1e999GiB"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn displays_in_binary_units() {
        assert_eq!(ByteSize::gib(8).to_string(), "8.0GiB");
        assert_eq!(ByteSize::mib(300).to_string(), "300MiB");
        assert_eq!(ByteSize(12).to_string(), "12B");
    }

    proptest::proptest! {
        #[test]
        fn whole_mebibytes_round_trip(n in 0u64..1_000_000) {
            let size = ByteSize::mib(n);
            let text = format!("{}MiB", n);
            proptest::prop_assert_eq!(text.parse::<ByteSize>().unwrap(), size);
        }
    }
}
