//! Kubernetes resource quantities (`100m`, `1.5`, `64Mi`, `1G`) as numbers.

/// Parses a quantity into its value scaled by `scale` (1000 for millicores, 1 for bytes).
pub fn parse_scaled(q: &str, scale: f64) -> Option<i64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some((n * mult * scale).ceil() as i64)
}

/// CPU in millicores.
pub fn cpu_millis(q: &str) -> Option<i64> {
    parse_scaled(q, 1000.0)
}

/// Memory in bytes.
pub fn bytes(q: &str) -> Option<i64> {
    parse_scaled(q, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(cpu_millis("100m"), Some(100));
        assert_eq!(cpu_millis("1.5"), Some(1500));
        assert_eq!(bytes("64Mi"), Some(64 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("12e3"), Some(12_000));
        assert_eq!(bytes("lots"), None);
    }
}
