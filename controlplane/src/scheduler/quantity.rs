//! Kubernetes resource quantities (`100m`, `1`, `128Mi`, `1G`, `1e3`) turned
//! into integers the scheduler can add and compare: milli-units for cpu,
//! plain units (bytes, counts) for everything else.
//!
//! The grammar and rounding follow `k8s.io/apimachinery/pkg/api/resource`:
//! a signed decimal number, then a binary suffix (`Ki` … `Ei`), a decimal SI
//! suffix (`n` `u` `m` `k` `M` `G` `T` `P` `E`) or a decimal exponent (`e3`,
//! `E-2`). Fractions round up, as `Quantity.Value()` and `MilliValue()` do, so
//! a request of `0.5m` cpu still counts as `1m`. Values beyond `i64` saturate.

/// Why a quantity string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Nothing to parse.
    #[error("empty quantity")]
    Empty,
    /// The number part is missing or malformed.
    #[error("quantity {0:?} has no valid number; expected e.g. 100m, 1, 1.5, 128Mi or 1G")]
    Number(String),
    /// The suffix is none of the known ones.
    #[error("quantity {0:?} has an unknown suffix; expected one of Ki Mi Gi Ti Pi Ei n u m k M G T P E or an exponent like e3")]
    Suffix(String),
}

/// A parsed quantity: `mantissa × 10^exp10 × 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    mantissa: i128,
    exp10: i32,
    exp2: u32,
}

/// Digits beyond this many are dropped from the mantissa (their weight is
/// folded into the exponent), which keeps the arithmetic inside `i128`.
const MAX_MANTISSA_DIGITS: usize = 30;

/// Parses `s` and returns its value in units, rounded up (`Quantity.Value()`).
pub fn value(s: &str) -> Result<i64, QuantityError> {
    Ok(scaled(parse(s)?, 0))
}

/// Parses `s` and returns its value in thousandths, rounded up
/// (`Quantity.MilliValue()`); the unit of cpu requests.
pub fn milli_value(s: &str) -> Result<i64, QuantityError> {
    Ok(scaled(parse(s)?, 3))
}

fn parse(s: &str) -> Result<Parsed, QuantityError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let (negative, rest) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') {
        return Err(QuantityError::Number(s.to_string()));
    }
    let mut mantissa: i128 = 0;
    let mut exp10: i32 = 0;
    let mut digits = 0usize;
    for (i, c) in int_part.chars().chain(frac_part.chars()).enumerate() {
        let in_fraction = i >= int_part.len();
        let d = i128::from(c as u8 - b'0');
        if digits < MAX_MANTISSA_DIGITS {
            if mantissa != 0 || d != 0 {
                digits += 1;
            }
            mantissa = mantissa * 10 + d;
            if in_fraction {
                exp10 -= 1;
            }
        } else if !in_fraction {
            // Too many significant integer digits: keep the magnitude only.
            exp10 += 1;
        }
    }
    if negative {
        mantissa = -mantissa;
    }
    let (suffix_exp10, exp2) =
        suffix_exponents(suffix).ok_or_else(|| QuantityError::Suffix(s.to_string()))?;
    Ok(Parsed {
        mantissa,
        exp10: exp10.saturating_add(suffix_exp10),
        exp2,
    })
}

/// The decimal and binary exponents a suffix stands for.
fn suffix_exponents(suffix: &str) -> Option<(i32, u32)> {
    let binary = |e| Some((0, e));
    let decimal = |e| Some((e, 0));
    match suffix {
        "" => decimal(0),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        _ => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Exponents this large saturate anyway; clamp before parsing overflows.
            let e: i32 = exponent.parse().unwrap_or(if exponent.starts_with('-') {
                -1000
            } else {
                1000
            });
            decimal(e)
        }
    }
}

/// `ceil(q × 10^scale)`, saturated to `i64`.
fn scaled(q: Parsed, scale: i32) -> i64 {
    if q.mantissa == 0 {
        return 0;
    }
    let mut v = q.mantissa;
    // Binary factor first: it never loses precision.
    for _ in 0..q.exp2 {
        match v.checked_mul(2) {
            Some(n) => v = n,
            None => return saturate(v),
        }
    }
    let exp = q.exp10.saturating_add(scale);
    if exp >= 0 {
        for _ in 0..exp {
            match v.checked_mul(10) {
                Some(n) if n.abs() <= i128::from(i64::MAX) * 10 => v = n,
                _ => return saturate(v),
            }
        }
        clamp(v)
    } else {
        let mut divisor: i128 = 1;
        for _ in 0..exp.unsigned_abs() {
            match divisor.checked_mul(10) {
                Some(d) => divisor = d,
                // The divisor exceeds any mantissa: the value is in (0, 1) or (-1, 0).
                None => return if v > 0 { 1 } else { 0 },
            }
        }
        let quotient = v.div_euclid(divisor);
        let rounded_up = if v.rem_euclid(divisor) != 0 {
            quotient + 1
        } else {
            quotient
        };
        clamp(rounded_up)
    }
}

fn saturate(v: i128) -> i64 {
    if v < 0 {
        i64::MIN
    } else {
        i64::MAX
    }
}

fn clamp(v: i128) -> i64 {
    i64::try_from(v).unwrap_or_else(|_| saturate(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_in_millis() {
        assert_eq!(milli_value("100m"), Ok(100));
        assert_eq!(milli_value("1"), Ok(1000));
        assert_eq!(milli_value("2.5"), Ok(2500));
        assert_eq!(milli_value("0.1"), Ok(100));
        assert_eq!(milli_value(".5"), Ok(500));
        assert_eq!(milli_value("1."), Ok(1000));
        assert_eq!(milli_value("+3"), Ok(3000));
        assert_eq!(milli_value("250000u"), Ok(250));
        assert_eq!(milli_value("1k"), Ok(1_000_000));
    }

    #[test]
    fn fractions_round_up() {
        assert_eq!(milli_value("0.5m"), Ok(1));
        assert_eq!(milli_value("1n"), Ok(1));
        assert_eq!(value("100m"), Ok(1));
        assert_eq!(value("1.5"), Ok(2));
        assert_eq!(value("-1.5"), Ok(-1));
        assert_eq!(milli_value("0"), Ok(0));
        assert_eq!(milli_value("0.000000000000000000001"), Ok(1));
    }

    #[test]
    fn memory_binary_and_decimal() {
        assert_eq!(value("128Mi"), Ok(128 * 1024 * 1024));
        assert_eq!(value("1Ki"), Ok(1024));
        assert_eq!(value("1.5Gi"), Ok(3 * 512 * 1024 * 1024));
        assert_eq!(value("1G"), Ok(1_000_000_000));
        assert_eq!(value("64M"), Ok(64_000_000));
        assert_eq!(value("1Ti"), Ok(1 << 40));
        assert_eq!(value("2Ei"), Ok(2 << 60));
        assert_eq!(value("129e6"), Ok(129_000_000));
        assert_eq!(value("1E3"), Ok(1000));
        assert_eq!(value("5e-1"), Ok(1));
        assert_eq!(value("1E"), Ok(1_000_000_000_000_000_000));
    }

    #[test]
    fn huge_values_saturate() {
        assert_eq!(value("100Ei"), Ok(i64::MAX));
        assert_eq!(value("1e100"), Ok(i64::MAX));
        assert_eq!(
            milli_value("99999999999999999999999999999999999999"),
            Ok(i64::MAX)
        );
        assert_eq!(value("-1e100"), Ok(i64::MIN));
        assert_eq!(value("1e-100"), Ok(1));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(value(""), Err(QuantityError::Empty));
        assert!(matches!(value("abc"), Err(QuantityError::Number(_))));
        assert!(matches!(value("."), Err(QuantityError::Number(_))));
        assert!(matches!(value("1.2.3"), Err(QuantityError::Number(_))));
        assert!(matches!(value("1Qi"), Err(QuantityError::Suffix(_))));
        assert!(matches!(value("1e"), Err(QuantityError::Suffix(_))));
        assert!(matches!(value("1mi"), Err(QuantityError::Suffix(_))));
    }
}
