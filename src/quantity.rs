//! Resource quantities: eviction thresholds from the config, byte counts for node capacity.

use std::fmt;

use serde::Serialize;

/// An eviction threshold: an absolute amount, or a percentage of the capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// An absolute amount (bytes, inodes or PIDs).
    Quantity(u64),
    /// A share of the capacity, 0 to 100.
    Percent(f64),
}

impl Threshold {
    /// Parses `"100Mi"`, `"1G"`, `"1000"` or `"10%"`.
    pub fn parse(s: &str) -> Result<Threshold, String> {
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| "is not a percentage like \"10%\"".to_owned())?;
            if !(0.0..=100.0).contains(&v) {
                return Err("is not a percentage between 0% and 100%".to_owned());
            }
            return Ok(Threshold::Percent(v));
        }
        parse_bytes(s)
            .map(Threshold::Quantity)
            .ok_or_else(|| "is not a quantity like \"100Mi\" or a percentage like \"10%\"".to_owned())
    }

    /// The amount this threshold stands for on a resource of `capacity` units.
    pub fn amount(&self, capacity: u64) -> u64 {
        match *self {
            Threshold::Quantity(q) => q,
            Threshold::Percent(p) => ((capacity as f64) * p / 100.0).round() as u64,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Quantity(q) => f.write_str(&format_bytes(*q)),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Threshold {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// Parses a Kubernetes quantity without a fractional part: `"123"`, `"100Mi"`, `"2G"`, `"1Ki"`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Formats bytes the way the kubelet reports memory: in `Ki` when not a whole larger unit.
pub fn format_bytes(b: u64) -> String {
    for (unit, size) in [("Ti", 1u64 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20)] {
        if b >= size && b.is_multiple_of(size) {
            return format!("{}{unit}", b / size);
        }
    }
    if b.is_multiple_of(1024) && b > 0 { format!("{}Ki", b / 1024) } else { b.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(Threshold::parse("100Mi"), Ok(Threshold::Quantity(100 << 20)));
        assert_eq!(Threshold::parse("5%"), Ok(Threshold::Percent(5.0)));
        assert_eq!(Threshold::parse("1000"), Ok(Threshold::Quantity(1000)));
        assert_eq!(Threshold::parse("2G"), Ok(Threshold::Quantity(2_000_000_000)));
        assert!(Threshold::parse("101%").is_err());
        assert!(Threshold::parse("ten%").is_err());
        assert!(Threshold::parse("1.5Gi").is_err());
        assert!(Threshold::parse("-1").is_err());
        assert!(Threshold::parse("1Zi").is_err());
        assert_eq!(Threshold::Percent(10.0).amount(1000), 100);
        assert_eq!(Threshold::Quantity(7).amount(1000), 7);
    }

    #[test]
    fn bytes_format_like_the_kubelet() {
        assert_eq!(format_bytes(16 << 30), "16Gi");
        assert_eq!(format_bytes(16_384_001 * 1024), "16384001Ki");
        assert_eq!(format_bytes(100 << 20), "100Mi");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(0), "0");
    }
}
