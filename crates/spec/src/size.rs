//! Human size strings: a bare number is MiB (as the peer CLI); `K`, `M`, `G`
//! and `T` take an optional `i`, `iB` or `B` and are all binary units.

const ACCEPTED: &str = "accepted forms: 512 (MiB), 1.5G, 100M, 2GiB, 1T, 4096K";

/// Why a size string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("invalid size {0:?}; {ACCEPTED}")]
    Syntax(String),
    #[error("size {0:?} is not a whole number of MiB")]
    NotWholeMib(String),
    #[error("size {0:?} is too large")]
    TooLarge(String),
    #[error("size {0:?} is zero")]
    Zero(String),
}

const MIB: u64 = 1 << 20;

/// Parses a size into bytes. Zero is rejected.
pub fn parse_size_bytes(s: &str) -> Result<u64, SizeError> {
    let syntax = || SizeError::Syntax(s.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit {
        "" => 20,
        "K" | "k" | "Ki" | "KiB" | "KB" | "kB" => 10,
        "M" | "m" | "Mi" | "MiB" | "MB" => 20,
        "G" | "g" | "Gi" | "GiB" | "GB" => 30,
        "T" | "t" | "Ti" | "TiB" | "TB" => 40,
        _ => return Err(syntax()),
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty()
        || frac.contains('.')
        || (num.contains('.') && frac.is_empty())
    {
        return Err(syntax());
    }
    let too_large = || SizeError::TooLarge(s.to_string());
    let int_val: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_large())?
    };
    let mut bytes = int_val
        .checked_shl(shift)
        .filter(|v| v >> shift == int_val)
        .ok_or_else(too_large)?;
    if !frac.is_empty() {
        if frac.len() > 12 {
            return Err(syntax());
        }
        // Exact decimal fraction of the unit, rounded down to a byte.
        let digits: u128 = frac.parse().map_err(|_| syntax())?;
        let scale = 10u128.pow(frac.len() as u32);
        let part = ((digits << shift) / scale) as u64;
        bytes = bytes.checked_add(part).ok_or_else(too_large)?;
    }
    if bytes == 0 {
        return Err(SizeError::Zero(s.to_string()));
    }
    Ok(bytes)
}

/// Parses a size that must be a whole number of MiB fitting in `u32`.
pub fn parse_size_mib(s: &str) -> Result<u32, SizeError> {
    let bytes = parse_size_bytes(s)?;
    if bytes % MIB != 0 {
        return Err(SizeError::NotWholeMib(s.to_string()));
    }
    u32::try_from(bytes / MIB).map_err(|_| SizeError::TooLarge(s.to_string()))
}

/// Formats bytes for people: `0 B`, `4.0 KiB`, `1.5 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_mib() {
        assert_eq!(parse_size_mib("512"), Ok(512));
        assert_eq!(parse_size_bytes("1"), Ok(MIB));
    }

    #[test]
    fn units_are_binary() {
        assert_eq!(parse_size_mib("1G"), Ok(1024));
        assert_eq!(parse_size_mib("1GiB"), Ok(1024));
        assert_eq!(parse_size_mib("1Gi"), Ok(1024));
        assert_eq!(parse_size_mib("1GB"), Ok(1024));
        assert_eq!(parse_size_mib("100M"), Ok(100));
        assert_eq!(parse_size_mib("2T"), Ok(2 << 20));
        assert_eq!(parse_size_bytes("4K"), Ok(4096));
        assert_eq!(parse_size_mib("2048K"), Ok(2));
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_size_mib("1.5G"), Ok(1536));
        assert_eq!(parse_size_mib("0.5G"), Ok(512));
        assert_eq!(parse_size_mib(".5G"), Ok(512));
        assert_eq!(parse_size_bytes("1.5K"), Ok(1536));
        assert_eq!(
            parse_size_mib("1.5"),
            Err(SizeError::NotWholeMib("1.5".into()))
        );
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "", "G", "1X", "1.2.3G", "-1G", "1 G B", "1e3", "1.", "ten", "1Gx",
        ] {
            assert!(
                matches!(parse_size_bytes(s), Err(SizeError::Syntax(_))),
                "{s}"
            );
        }
        assert_eq!(parse_size_bytes("0"), Err(SizeError::Zero("0".into())));
        assert_eq!(
            parse_size_bytes("0.0G"),
            Err(SizeError::Zero("0.0G".into()))
        );
        assert!(matches!(
            parse_size_bytes("99999999999999999999T"),
            Err(SizeError::TooLarge(_))
        ));
        assert!(matches!(
            parse_size_bytes("16777216T"),
            Err(SizeError::TooLarge(_))
        ));
        assert!(matches!(
            parse_size_mib("8192T"),
            Err(SizeError::TooLarge(_))
        ));
    }

    #[test]
    fn error_message_lists_accepted_forms() {
        let msg = parse_size_bytes("lots").unwrap_err().to_string();
        assert!(msg.contains("accepted forms"), "{msg}");
    }

    #[test]
    fn formats() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(4096), "4.0 KiB");
        assert_eq!(format_bytes(1536 * MIB), "1.5 GiB");
    }
}
