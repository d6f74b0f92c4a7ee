//! Parsers for the scalar notations a spec uses: durations, file modes, sizes, addresses.
//!
//! Each returns `Err(message)` naming what was expected; the caller adds the location.

use std::net::SocketAddr;
use std::time::Duration;

/// "250ms", "1m30s", "1.5s", "24h", "7d". Units: ns, us, ms, s, m, h, d.
pub fn duration(s: &str) -> Result<Duration, String> {
    let err = || {
        format!(
            "invalid duration \"{s}\": expected numbers with units (ms, s, m, h, d), like \"250ms\" or \"1m30s\""
        )
    };
    if s.is_empty() {
        return Err(err());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += n * secs;
    }
    // Ten years is far beyond any sensible timeout; refuse rather than overflow.
    if !total.is_finite() || total > 10.0 * 365.0 * 86400.0 {
        return Err(format!("duration \"{s}\" is too long"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Render a duration the way a spec writes it: "1m30s", "250ms", "0s".
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let mut ms = d.as_millis();
    if ms == 0 {
        return format!("{}us", d.as_micros());
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    if ms > 0 {
        out.push_str(&format!("{ms}ms"));
    }
    out
}

/// "0755" or "755": octal permission bits, at most 0o7777.
pub fn mode(s: &str) -> Result<u32, String> {
    let err = || format!("invalid file mode \"{s}\": expected octal digits like \"0755\"");
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(err());
    }
    let m = u32::from_str_radix(s, 8).map_err(|_| err())?;
    if m > 0o7777 {
        return Err(err());
    }
    Ok(m)
}

/// "256MiB", "1GiB", "512M", "1048576": a size in bytes.
pub fn size(s: &str) -> Result<u64, String> {
    let err = || {
        format!("invalid size \"{s}\": expected a number with a unit, like \"256MiB\" or \"1GiB\"")
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| err())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "KiB" | "k" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "MiB" | "m" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "GiB" | "g" => 1 << 30,
        "T" | "TB" => 1_000_000_000_000,
        "TiB" => 1 << 40,
        _ => return Err(err()),
    };
    let bytes = n * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes as u64)
}

/// "127.0.0.1:8080" or "[::1]:8080"; the port must not be 0.
pub fn listen(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        format!("invalid listen address \"{s}\": expected IP:PORT, like \"127.0.0.1:8080\"")
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "invalid listen address \"{s}\": port must be 1-65535"
        ));
    }
    Ok(addr)
}

/// "UID:GID" or "UID" (gid = uid), numeric.
pub fn owner(s: &str) -> Result<(u32, u32), String> {
    let err = || format!("invalid owner \"{s}\": expected numeric UID:GID, like \"1000:1000\"");
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    Ok((u.parse().map_err(|_| err())?, g.parse().map_err(|_| err())?))
}

/// A name usable as an image, service, route, volume or webhook name.
pub fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.'))
        && s.len() <= 63
}

/// An environment variable name.
pub fn is_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("250ms", 250),
            ("1m30s", 90_000),
            ("1.5s", 1500),
            ("24h", 86_400_000),
            ("0s", 0),
            ("2d", 172_800_000),
        ];
        for (s, ms) in ok {
            assert_eq!(duration(s).map(|d| d.as_millis()), Ok(ms), "{s}");
        }
        for s in ["", "5", "5x", "s", "1.2.3s", "-1s", "1 s", "99999999999d"] {
            assert!(duration(s).is_err(), "{s}");
        }
        assert_eq!(format_duration(Duration::from_millis(90_250)), "1m30s250ms");
    }

    #[test]
    fn modes_sizes_owners() {
        assert_eq!(mode("0755"), Ok(0o755));
        assert_eq!(mode("4755"), Ok(0o4755));
        assert!(mode("0855").is_err() && mode("").is_err() && mode("77777").is_err());
        assert_eq!(size("256MiB"), Ok(256 << 20));
        assert_eq!(size("1G"), Ok(1_000_000_000));
        assert!(size("lots").is_err() && size("0").is_err());
        assert_eq!(owner("1000:100"), Ok((1000, 100)));
        assert_eq!(owner("7"), Ok((7, 7)));
        assert!(owner("root").is_err());
    }
}

/// Linux's signal names (the generic numbering of x86, Arm and RISC-V), `SIGRTMIN` = 34.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// A signal as Docker's `StopSignal` takes it: "SIGQUIT", "QUIT" (any case), "3", or
/// "SIGRTMIN+N". Returns its canonical name ("SIGQUIT", "SIGRTMIN+3") and number.
pub fn signal(s: &str) -> Result<(String, i32), String> {
    let err = || {
        format!(
            "invalid signal \"{s}\": expected a name like \"SIGTERM\" or \"QUIT\", or a number from 1 to 64"
        )
    };
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        if !(1..=64).contains(&n) {
            return Err(err());
        }
        return Ok((signal_name(n), n));
    }
    let upper = t.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    if let Some((_, n)) = SIGNALS.iter().find(|(name, _)| *name == bare) {
        return Ok((signal_name(*n), *n));
    }
    if let Some(rest) = bare.strip_prefix("RTMIN") {
        let off = if rest.is_empty() {
            Some(0)
        } else {
            rest.strip_prefix('+').and_then(|r| r.parse::<i32>().ok())
        };
        if let Some(off) = off.filter(|o| (0..=30).contains(o)) {
            return Ok((signal_name(34 + off), 34 + off));
        }
    }
    Err(err())
}

/// The canonical name of signal `n` (1 to 64).
fn signal_name(n: i32) -> String {
    match SIGNALS.iter().find(|(_, m)| *m == n) {
        Some((name, _)) => format!("SIG{name}"),
        None if n == 34 => "SIGRTMIN".into(),
        None if n > 34 => format!("SIGRTMIN+{}", n - 34),
        None => n.to_string(),
    }
}

#[cfg(test)]
mod signal_tests {
    use super::signal;

    #[test]
    fn signals_by_name_short_name_and_number() {
        assert_eq!(signal("SIGTERM"), Ok(("SIGTERM".into(), 15)));
        assert_eq!(signal("TERM"), Ok(("SIGTERM".into(), 15)));
        assert_eq!(signal("quit"), Ok(("SIGQUIT".into(), 3)));
        assert_eq!(signal("15"), Ok(("SIGTERM".into(), 15)));
        assert_eq!(signal("SIGRTMIN+3"), Ok(("SIGRTMIN+3".into(), 37)));
        assert_eq!(signal("SIGIOT"), Ok(("SIGABRT".into(), 6)));
        for bad in ["", "SIGFOO", "0", "65", "-1", "SIGRTMIN+31", "TERM15"] {
            assert!(signal(bad).is_err(), "{bad}");
        }
    }
}
