//! Instance logs: what an instance writes to stdout and stderr, with the time of each line.
//!
//! An instance writes straight into append-only files (`stdout.log`, `stderr.log`) that it holds
//! open itself, so its output never depends on a recast process being alive (a server can be
//! killed and restarted under running instances). Times are recorded beside the file instead of
//! in it: every rotation tick (each 200 ms on the server, each 50 ms under `recast run`) appends
//! `SIZE MILLIS` to `<log>.times` when the file grew, so a line's time is the first mark at or
//! past its end — when recast first saw it, at most one tick late. Bytes no mark covers yet take
//! the file's modification time (the last write). Rotation copies the log's tail to `*.log.1`
//! and its marks, shifted, to `*.log.1.times`.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Most bytes read from one log file for one request: the instance decides what it writes.
pub const MAX_READ: u64 = 16 << 20;
/// A times file past this is rotated with its log (about a day of marks at 5 per second).
const MAX_TIMES: u64 = 1 << 20;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line an instance wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// When recast first saw it, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub stream: Stream,
    pub text: String,
}

fn times_of(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".times");
    PathBuf::from(s)
}

fn older_of(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn mtime_ms(p: &Path) -> u64 {
    fs::metadata(p)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or_else(now_ms, |d| d.as_millis() as u64)
}

/// The marks of a times file: (size, millis), in order. At most `MAX_TIMES` bytes are read.
fn marks(times: &Path) -> Vec<(u64, u64)> {
    let mut text = String::new();
    if let Ok(f) = fs::File::open(times) {
        let _ = f.take(MAX_TIMES * 2).read_to_string(&mut text);
    }
    text.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// The size the last mark of `times` records (0 if none), from its last bytes.
fn last_mark(times: &Path) -> u64 {
    let mut tail = Vec::new();
    if let Ok(mut f) = fs::File::open(times) {
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f
            .seek(SeekFrom::Start(len.saturating_sub(64)))
            .and_then(|_| f.take(64).read_to_end(&mut tail));
    }
    String::from_utf8_lossy(&tail)
        .lines()
        .last()
        .and_then(|l| l.split_once(' '))
        .and_then(|(a, _)| a.parse().ok())
        .unwrap_or(0)
}

fn append_private(p: &Path, text: &str) -> io::Result<()> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(p)?
        .write_all(text.as_bytes())
}

fn write_private(p: &Path, text: &str) -> io::Result<()> {
    fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(p)?
        .write_all(text.as_bytes())
}

/// Note the time of what `log` gained since the last mark, then rotate it when it (or its
/// times) passed `limit`: its last `limit` bytes go to `*.1` (with their marks, shifted) and it
/// is truncated (the instance appends, so it keeps writing at the new end).
pub(crate) fn mark_and_rotate(log: &Path, limit: u64) {
    let Ok(mut f) = fs::OpenOptions::new().read(true).write(true).open(log) else {
        return;
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let times = times_of(log);
    let marked = last_mark(&times);
    if len != marked {
        // A file shorter than its last mark was truncated behind our back: start again.
        if len < marked {
            let _ = write_private(&times, "");
        }
        let _ = append_private(&times, &format!("{len} {}\n", now_ms()));
    }
    let times_len = fs::metadata(&times).map_or(0, |m| m.len());
    if len <= limit && times_len <= MAX_TIMES {
        return;
    }
    // Only the tail: an instance that wrote gigabytes between two rotations must not make
    // recast copy gigabytes.
    let start = len.saturating_sub(limit);
    let copied = f.seek(SeekFrom::Start(start)).and_then(|_| {
        let mut old = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(older_of(log))?;
        io::copy(&mut (&mut f).take(limit), &mut old)
    });
    if copied.is_ok() {
        let shifted: String = marks(&times)
            .into_iter()
            .filter(|(size, _)| *size > start)
            .map(|(size, at)| format!("{} {at}\n", size - start))
            .collect();
        let _ = write_private(&times_of(&older_of(log)), &shifted);
    }
    let _ = f.set_len(0);
    let _ = write_private(&times, "");
}

/// The lines of one log file from byte `from` (at most [`MAX_READ`] bytes, the last ones),
/// with their times. `complete_only` holds back a last line without its newline (a follower
/// reads it once complete). Returns the lines and the offset read up to.
fn read_file(log: &Path, from: u64, stream: Stream, complete_only: bool) -> (Vec<Line>, u64) {
    let Ok(mut f) = fs::File::open(log) else {
        return (Vec::new(), from);
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let from = from.max(len.saturating_sub(MAX_READ));
    let mut bytes = Vec::new();
    if from < len {
        let _ = f
            .seek(SeekFrom::Start(from))
            .and_then(|_| (&mut f).take(len - from).read_to_end(&mut bytes));
    }
    let marks = marks(&times_of(log));
    let unmarked = mtime_ms(log);
    let time_at = |end: u64| {
        marks
            .iter()
            .find(|(size, _)| *size >= end)
            .map_or(unmarked, |(_, at)| *at)
    };
    let mut lines = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let (end, next) = match bytes[pos..].iter().position(|b| *b == b'\n') {
            Some(i) => (pos + i, pos + i + 1),
            None if complete_only => break,
            None => (bytes.len(), bytes.len()),
        };
        let text = String::from_utf8_lossy(&bytes[pos..end])
            .trim_end_matches('\r')
            .to_string();
        lines.push(Line {
            at_ms: time_at(from + next as u64),
            stream,
            text,
        });
        pos = next;
    }
    (lines, from + pos as u64)
}

/// Everything kept of an instance's output (the rotated copies, then the current files), in
/// order of time, and where a follower goes on from.
pub fn read_all(dir: &Path, complete_only: bool) -> (Vec<Line>, Cursor) {
    let mut lines = Vec::new();
    let mut cursor = Cursor::default();
    for (stream, name) in [
        (Stream::Stdout, "stdout.log"),
        (Stream::Stderr, "stderr.log"),
    ] {
        let log = dir.join(name);
        let (old, _) = read_file(&older_of(&log), 0, stream, false);
        let (new, at) = read_file(&log, 0, stream, complete_only);
        lines.extend(old);
        lines.extend(new);
        cursor.set(stream, at);
    }
    // Stable: lines of one stream keep their order; the streams interleave by time.
    lines.sort_by_key(|l| l.at_ms);
    (lines, cursor)
}

/// Where a follower of an instance's logs has read up to, per stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cursor {
    stdout: u64,
    stderr: u64,
}

impl Cursor {
    fn set(&mut self, stream: Stream, at: u64) {
        match stream {
            Stream::Stdout => self.stdout = at,
            Stream::Stderr => self.stderr = at,
        }
    }

    /// The complete lines written since the last call (from the start again after the file
    /// was rotated).
    pub fn read_new(&mut self, dir: &Path) -> Vec<Line> {
        let mut lines = Vec::new();
        for (stream, name, at) in [
            (Stream::Stdout, "stdout.log", self.stdout),
            (Stream::Stderr, "stderr.log", self.stderr),
        ] {
            let log = dir.join(name);
            let len = fs::metadata(&log).map_or(0, |m| m.len());
            let from = if len < at { 0 } else { at };
            let (new, at) = read_file(&log, from, stream, true);
            lines.extend(new);
            self.set(stream, at);
        }
        lines.sort_by_key(|l| l.at_ms);
        lines
    }
}

/// RFC 3339 in UTC with milliseconds: `2026-11-29T15:30:14.123Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_798_558_214_005), "2026-12-29T15:30:14.005Z");
    }

    #[test]
    fn lines_take_the_time_of_the_first_mark_past_them_and_survive_rotation() {
        let d = tempfile::tempdir().expect("tmp");
        let log = d.path().join("stdout.log");
        fs::write(&log, "one\ntwo\n").expect("write");
        mark_and_rotate(&log, 1 << 20);
        let first = marks(&times_of(&log));
        assert_eq!(first.len(), 1);
        // Nothing new: no new mark.
        mark_and_rotate(&log, 1 << 20);
        assert_eq!(marks(&times_of(&log)).len(), 1);
        append_private(&log, "three\npart").expect("append");
        std::thread::sleep(std::time::Duration::from_millis(5));
        mark_and_rotate(&log, 1 << 20);
        let m = marks(&times_of(&log));
        assert_eq!(m.len(), 2);
        let (lines, cursor) = read_all(d.path(), true);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three"]);
        assert_eq!(lines[0].at_ms, first[0].1);
        assert_eq!(lines[2].at_ms, m[1].1);
        // A follower sees the partial line once it is complete.
        let mut c = cursor;
        assert!(c.read_new(d.path()).is_empty());
        append_private(&log, "ial\n").expect("append");
        let new = c.read_new(d.path());
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].text, "partial");
        // Rotation past 8 bytes keeps the tail and its times in stdout.log.1.
        mark_and_rotate(&log, 8);
        assert_eq!(fs::metadata(&log).expect("log").len(), 0);
        let (lines, _) = read_all(d.path(), false);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["partial"]);
        assert!(lines[0].at_ms >= m[1].1);
    }
}
