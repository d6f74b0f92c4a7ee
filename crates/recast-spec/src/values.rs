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

/// One entry of a service's `egress` list: an IP address, a CIDR network (`10.0.0.0/8`,
/// `fd00::/8`) or a DNS host name, optionally followed by `:PORT` (an IPv6 address or network
/// with a port is written in brackets: `[::1]:80`).
///
/// The host is returned in canonical form (addresses as Rust prints them, names in lowercase),
/// so that equal destinations compare equal. A network with host bits set is refused, naming
/// the network meant.
pub fn destination(s: &str) -> Result<crate::model::Destination, String> {
    use std::net::{IpAddr, Ipv6Addr};
    let bad = |why: &str| format!("invalid egress destination \"{s}\": {why}");
    let expected = "expected an IP address, a CIDR network or a host name, optionally with :PORT, like \"10.0.0.0/8\" or \"db.example.com:5432\"";
    if s.is_empty() {
        return Err(bad(expected));
    }
    // Split off the port; `bracketed`: the host was written in brackets (IPv6 only).
    let (host, port, bracketed) = if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(bad("missing ']' after the IPv6 address"));
        };
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(bad("expected :PORT after ']'")),
            },
        };
        (inside, port, true)
    } else if s.matches(':').count() > 1 {
        // An IPv6 address or network without a port.
        (s, None, false)
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p), false),
            None => (s, None, false),
        }
    };
    let port = match port {
        None => None,
        Some(p) => {
            let n = (!p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u32>().ok())
                .flatten()
                .filter(|n| (1..=65535).contains(n));
            match n {
                Some(n) => Some(n as u16),
                None => return Err(bad(&format!("port \"{p}\" must be 1-65535"))),
            }
        }
    };
    let v6_hint = || format!("{expected}; an IPv6 address with a port is written [ADDR]:PORT");
    let with_port = |host: &str, v6: bool| match port {
        Some(p) if v6 => format!("[{host}]:{p}"),
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let host = if let Some((addr, prefix)) = host.split_once('/') {
        let Ok(ip) = addr.parse::<IpAddr>() else {
            return Err(bad(&format!("\"{addr}\" is not an IP address")));
        };
        if bracketed && ip.is_ipv4() {
            return Err(bad("brackets are for IPv6 addresses only"));
        }
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits =
            (!prefix.is_empty() && prefix.len() <= 3 && prefix.bytes().all(|b| b.is_ascii_digit()))
                .then(|| prefix.parse::<u32>().ok())
                .flatten()
                .filter(|n| *n <= max);
        let Some(bits) = bits else {
            return Err(bad(&format!("prefix length \"{prefix}\" must be 0-{max}")));
        };
        let net = match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                IpAddr::from((u32::from(a) & mask).to_be_bytes())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        let canonical = format!("{net}/{bits}");
        if net != ip {
            return Err(bad(&format!(
                "{ip}/{bits} has host bits set; write \"{}\"",
                with_port(&canonical, ip.is_ipv6())
            )));
        }
        canonical
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        if bracketed && ip.is_ipv4() {
            return Err(bad("brackets are for IPv6 addresses only"));
        }
        ip.to_string()
    } else if bracketed {
        return Err(bad(&format!(
            "\"{host}\" in brackets is not an IPv6 address"
        )));
    } else if host.contains(':') {
        return Err(bad(&v6_hint()));
    } else {
        host_name(host).map_err(|why| bad(&format!("{why}; {expected}")))?
    };
    Ok(crate::model::Destination { host, port })
}

/// A DNS host name (RFC 1123), in lowercase: labels of letters, digits and '-' (not at either
/// end), 1 to 63 characters each, at most 253 in all, the last not all digits (that would be a
/// mistyped address).
fn host_name(s: &str) -> Result<String, String> {
    if s.len() > 253 {
        return Err("a host name has at most 253 characters".into());
    }
    let labels: Vec<&str> = s.split('.').collect();
    for l in &labels {
        if l.is_empty() || l.len() > 63 {
            return Err("each part of a host name between dots has 1 to 63 characters".into());
        }
        if !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err("a host name has only letters, digits, '-' and '.'".into());
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Err("a part of a host name neither starts nor ends with '-'".into());
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("not an IP address, and a host name does not end in digits only".into());
    }
    Ok(s.to_ascii_lowercase())
}

#[cfg(test)]
mod destination_tests {
    use super::destination;
    use crate::model::Destination;

    fn d(host: &str, port: Option<u16>) -> Result<Destination, String> {
        Ok(Destination {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn addresses_networks_and_names_with_or_without_a_port() {
        assert_eq!(destination("10.0.0.0/8"), d("10.0.0.0/8", None));
        assert_eq!(destination("192.168.1.5"), d("192.168.1.5", None));
        assert_eq!(destination("10.213.0.2:8081"), d("10.213.0.2", Some(8081)));
        assert_eq!(
            destination("db.example.com:5432"),
            d("db.example.com", Some(5432))
        );
        assert_eq!(destination("DB.Example.COM"), d("db.example.com", None));
        assert_eq!(destination("10.0.0.0/8:443"), d("10.0.0.0/8", Some(443)));
        assert_eq!(destination("[::1]:80"), d("::1", Some(80)));
        assert_eq!(destination("[::1]"), d("::1", None));
        assert_eq!(destination("::1"), d("::1", None));
        assert_eq!(destination("fd00:0::/8"), d("fd00::/8", None));
        assert_eq!(destination("[fd00::/16]:5432"), d("fd00::/16", Some(5432)));
        assert_eq!(destination("0.0.0.0/0"), d("0.0.0.0/0", None));
        assert_eq!(destination("10.0.0.1/32"), d("10.0.0.1/32", None));
        assert_eq!(destination("localhost:65535"), d("localhost", Some(65535)));
        assert_eq!(destination("a-b.c1:1"), d("a-b.c1", Some(1)));
        assert_eq!(destination("1password.com"), d("1password.com", None));
        // Without brackets every colon belongs to the IPv6 address.
        assert_eq!(destination("::1:80"), d("::1:80", None));
    }

    #[test]
    fn host_bits_set_names_the_network() {
        assert_eq!(
            destination("10.1.2.3/8"),
            Err("invalid egress destination \"10.1.2.3/8\": 10.1.2.3/8 has host bits set; write \"10.0.0.0/8\"".into())
        );
        assert_eq!(
            destination("10.1.2.3/8:443"),
            Err("invalid egress destination \"10.1.2.3/8:443\": 10.1.2.3/8 has host bits set; write \"10.0.0.0/8:443\"".into())
        );
        assert_eq!(
            destination("[fd00::1/8]:80"),
            Err("invalid egress destination \"[fd00::1/8]:80\": fd00::1/8 has host bits set; write \"[fd00::/8]:80\"".into())
        );
    }

    #[test]
    fn malformed_entries_are_refused_naming_the_value() {
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "::/129",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1:",
            "10.0.0.1:http",
            "10.0.0.1:+80",
            "10.0.0.256",
            "10.0.0",
            "12345",
            "db_1.example.com",
            "-db.example.com",
            "db-.example.com",
            "db..example.com",
            ".example.com",
            "example.com.",
            "fd00::1:99999",
            "[::1",
            "[::1]80",
            "[10.0.0.1]:80",
            "[db.example.com]:80",
            "[::1]:",
            "fe80::1%eth0",
            "db.example.com/8",
            "http://db.example.com",
            "*.example.com",
            "db example.com",
        ] {
            let err = destination(bad).expect_err(bad);
            assert!(
                err.starts_with(&format!("invalid egress destination \"{bad}\": ")),
                "{bad}: {err}"
            );
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(destination(&long).is_err());
        let long = vec!["a".repeat(63); 4].join(".") + ".com";
        assert!(destination(&long).is_err(), "over 253 characters");
        assert_eq!(
            destination("10.0.0.1:0"),
            Err("invalid egress destination \"10.0.0.1:0\": port \"0\" must be 1-65535".into())
        );
        assert_eq!(
            destination("10.0.0.0/33"),
            Err(
                "invalid egress destination \"10.0.0.0/33\": prefix length \"33\" must be 0-32"
                    .into()
            )
        );
        assert_eq!(
            destination("fd00::1:99999"),
            Err("invalid egress destination \"fd00::1:99999\": expected an IP address, a CIDR network or a host name, optionally with :PORT, like \"10.0.0.0/8\" or \"db.example.com:5432\"; an IPv6 address with a port is written [ADDR]:PORT".into())
        );
    }
}
