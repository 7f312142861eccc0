//! Kubernetes resource quantities, parsed exactly as `k8s.io/apimachinery/pkg/api/resource` parses them.
//!
//! A quantity is `<sign><number><suffix>`, where the suffix is a binary SI unit (`Ki`…`Ei`), a decimal
//! SI unit (`n`, `u`, `m`, `k`, `M`, `G`, `T`, `P`, `E`) or a decimal exponent (`e3`, `E-2`).
//! Values are rounded *up* when converted to integers, as the apiserver does for `MilliValue()` and
//! `Value()`, so a request is never under-counted.

use thiserror::Error;

/// A quantity failed to parse; the message names the offending text so the user can find it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid quantity {text:?}: {why}")]
pub struct QuantityError {
    /// The text that was given.
    pub text: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// An exact parsed quantity: `mantissa × 10^exp10 × 2^exp2`, so no precision is lost before rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity {
    mantissa: i128,
    exp10: i32,
    exp2: u32,
}

impl Quantity {
    /// Parses Kubernetes quantity syntax; used for every request, limit and capacity Gantry reads.
    ///
    /// # Errors
    /// Returns [`QuantityError`] for empty text, a missing number, an unknown suffix or an overflow.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let err = |why| QuantityError {
            text: text.to_string(),
            why,
        };
        let s = text.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        let bytes = s.as_bytes();
        let mut i = 0;
        let mut negative = false;
        if let Some(&c) = bytes.first()
            && (c == b'+' || c == b'-')
        {
            negative = c == b'-';
            i = 1;
        }
        let mut mantissa: i128 = 0;
        let mut exp10: i32 = 0;
        let mut digits = 0usize;
        let mut seen_dot = false;
        while i < bytes.len() {
            let c = bytes[i];
            if c.is_ascii_digit() {
                digits += 1;
                if mantissa < 10i128.pow(30) {
                    mantissa = mantissa * 10 + i128::from(c - b'0');
                    if seen_dot {
                        exp10 -= 1;
                    }
                } else if !seen_dot {
                    // Too many significant digits: keep the magnitude, drop the precision.
                    exp10 += 1;
                }
            } else if c == b'.' && !seen_dot {
                seen_dot = true;
            } else {
                break;
            }
            i += 1;
        }
        if digits == 0 {
            return Err(err("no number"));
        }
        let suffix = &s[i..];
        let (add10, exp2) = match suffix {
            "" => (0, 0),
            "Ki" => (0, 10),
            "Mi" => (0, 20),
            "Gi" => (0, 30),
            "Ti" => (0, 40),
            "Pi" => (0, 50),
            "Ei" => (0, 60),
            "n" => (-9, 0),
            "u" => (-6, 0),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            other => {
                let rest = other
                    .strip_prefix('e')
                    .or_else(|| other.strip_prefix('E'))
                    .ok_or_else(|| err("unknown suffix"))?;
                let e: i32 = rest.parse().map_err(|_| err("bad exponent"))?;
                if !(-100..=100).contains(&e) {
                    return Err(err("exponent out of range"));
                }
                (e, 0)
            }
        };
        if negative {
            mantissa = -mantissa;
        }
        Ok(Quantity {
            mantissa,
            exp10: exp10 + add10,
            exp2,
        })
    }

    /// The value scaled by `10^scale10`, rounded towards positive infinity and saturated to `i64`.
    fn scaled_ceil(self, scale10: i32) -> i64 {
        let mut num: i128 = self.mantissa;
        let mut e = self.exp10 + scale10;
        // Apply the binary factor first: it is exact.
        for _ in 0..self.exp2 {
            num = num.saturating_mul(2);
        }
        while e > 0 {
            num = num.saturating_mul(10);
            e -= 1;
        }
        if e < 0 {
            let mut den: i128 = 1;
            while e < 0 && den < 10i128.pow(36) {
                den *= 10;
                e += 1;
            }
            if e < 0 {
                // Smaller than any representable unit: rounds up to 1 if positive.
                return if num > 0 { 1 } else { 0 };
            }
            let q = num.div_euclid(den);
            let r = num.rem_euclid(den);
            num = if r > 0 { q + 1 } else { q };
        }
        i64::try_from(num).unwrap_or(if num > 0 { i64::MAX } else { i64::MIN })
    }

    /// Thousandths of a unit, rounded up: the unit CPU is counted in (`100m` → 100).
    pub fn milli(self) -> i64 {
        self.scaled_ceil(3)
    }

    /// Whole units, rounded up: memory bytes, pods and extended resources (`1Gi` → 1073741824).
    pub fn units(self) -> i64 {
        self.scaled_ceil(0)
    }

    /// The value as a float, for display and for ratios that need no exactness.
    pub fn as_f64(self) -> f64 {
        self.mantissa as f64 * 10f64.powi(self.exp10) * 2f64.powi(self.exp2 as i32)
    }
}

/// Parses a quantity and returns its milli-value; the usual entry point for CPU.
///
/// # Errors
/// As [`Quantity::parse`].
pub fn parse_milli(text: &str) -> Result<i64, QuantityError> {
    Quantity::parse(text).map(Quantity::milli)
}

/// Parses a quantity and returns its integer value; the usual entry point for memory and counts.
///
/// # Errors
/// As [`Quantity::parse`].
pub fn parse_units(text: &str) -> Result<i64, QuantityError> {
    Quantity::parse(text).map(Quantity::units)
}

/// Formats bytes the way a person reads them (`1.5Gi`), for reports and reasons.
pub fn format_bytes(bytes: i64) -> String {
    const UNITS: [(&str, i64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (suffix, size) in UNITS {
        if bytes.abs() >= size {
            let v = bytes as f64 / size as f64;
            return if (v - v.round()).abs() < 0.005 {
                format!("{}{suffix}", v.round() as i64)
            } else {
                format!("{v:.2}{suffix}")
            };
        }
    }
    bytes.to_string()
}

/// Formats millicores as a person reads them (`1.5` vCPU or `250m`).
pub fn format_milli(milli: i64) -> String {
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else if milli > 1000 {
        format!("{:.2}", milli as f64 / 1000.0)
    } else {
        format!("{milli}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_examples() {
        let cases: &[(&str, i64, i64)] = &[
            ("100m", 100, 1),
            ("1.5", 1500, 2),
            ("128Mi", 128 * 1024 * 1024 * 1000, 128 * 1024 * 1024),
            ("1G", 1_000_000_000_000, 1_000_000_000),
            ("1e3", 1_000_000, 1000),
            ("0.5Gi", 512 * 1024 * 1024 * 1000, 512 * 1024 * 1024),
            ("1Ki", 1_024_000, 1024),
            ("250u", 1, 1),
            ("0", 0, 0),
            ("2k", 2_000_000, 2000),
            ("1E-3", 1, 1),
            ("+3", 3000, 3),
            ("-1", -1000, -1),
            ("32386544Ki", 32_386_544 * 1024 * 1000, 32_386_544 * 1024),
            ("7910m", 7910, 8),
        ];
        for &(text, milli, units) in cases {
            let q = Quantity::parse(text).unwrap();
            assert_eq!(q.milli(), milli, "{text} milli");
            assert_eq!(q.units(), units, "{text} units");
        }
    }

    #[test]
    fn rejects_garbage_with_the_text() {
        for bad in ["", "abc", "1Qi", "1.2.3", "Mi", "1e", "1ee3", " m"] {
            let e = Quantity::parse(bad).unwrap_err();
            assert_eq!(e.text, bad);
            assert!(e.to_string().contains("invalid quantity"));
        }
    }

    #[test]
    fn huge_values_saturate_instead_of_overflowing() {
        assert_eq!(Quantity::parse("999999Ei").unwrap().milli(), i64::MAX);
        assert_eq!(Quantity::parse("1e100").unwrap().units(), i64::MAX);
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_bytes(1 << 30), "1Gi");
        assert_eq!(format_bytes(3 << 29), "1.50Gi");
        assert_eq!(format_milli(250), "250m");
        assert_eq!(format_milli(2000), "2");
    }
}
