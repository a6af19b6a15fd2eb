//! Container logs in the CRI format (`<RFC3339Nano> <stream> <P|F> <text>`),
//! one file per container start under `<data-dir>/logs/<ns>_<pod>_<uid>/<ctr>/<n>.log`,
//! and reading them back the way `kubectl logs` asks (tail, timestamps).

use std::path::{Path, PathBuf};

/// Longest record the shim writes before splitting a line into partials.
pub const MAX_LINE: usize = 16 * 1024;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Now as RFC 3339 with nanoseconds, UTC.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// Formats one CRI log record.
pub fn cri_line(stream: Stream, full: bool, body: &[u8]) -> Vec<u8> {
    let mut line = format!(
        "{} {} {} ",
        jiff::Timestamp::now(),
        match stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        },
        if full { "F" } else { "P" }
    )
    .into_bytes();
    line.extend_from_slice(body);
    line.push(b'\n');
    line
}

/// One parsed CRI record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub full: bool,
    pub text: &'a [u8],
}

/// Parses a CRI record (without its newline).
pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or(b"");
    Some(Record {
        time,
        stream,
        full: tag != b"P",
        text,
    })
}

/// The log directory of a pod.
pub fn pod_dir(root: &Path, namespace: &str, name: &str, uid: &str) -> PathBuf {
    root.join(format!("{namespace}_{name}_{uid}"))
}

/// Turns CRI records into what the user sees: the text, optionally prefixed by
/// its timestamp, partial records joined.
pub fn render(data: &[u8], timestamps: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut at_line_start = true;
    for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Some(rec) = parse(line) else { continue };
        if timestamps && at_line_start {
            out.extend_from_slice(rec.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(rec.text);
        if rec.full {
            out.push(b'\n');
        }
        at_line_start = rec.full;
    }
    out
}

/// Keeps the last `n` complete records of CRI `data` (partials count with their line).
pub fn tail(data: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &data[data.len()..];
    }
    let mut seen = 0;
    let mut end = data.len();
    // Walk back over full records.
    let mut i = data.len();
    while i > 0 {
        let start = data[..i - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1);
        let line = &data[start..i - 1];
        if parse(line).is_some_and(|r| r.full) {
            if seen == n {
                return &data[end..];
            }
            seen += 1;
        }
        end = start;
        i = start;
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_partials_join() {
        let mut data = cri_line(Stream::Stdout, false, b"hel");
        data.extend(cri_line(Stream::Stdout, true, b"lo"));
        data.extend(cri_line(Stream::Stderr, true, b"oops"));
        assert_eq!(render(&data, false), b"hello\noops\n");
        let with_ts = String::from_utf8(render(&data, true)).unwrap();
        assert!(with_ts.lines().all(|l| l.starts_with("20")), "{with_ts}");
        assert!(with_ts.contains(" hello\n"), "{with_ts}");
    }

    #[test]
    fn tail_keeps_last_lines() {
        let mut data = Vec::new();
        for i in 0..5 {
            data.extend(cri_line(
                Stream::Stdout,
                true,
                format!("line {i}").as_bytes(),
            ));
        }
        assert_eq!(render(tail(&data, 2), false), b"line 3\nline 4\n");
        assert_eq!(render(tail(&data, 10), false), render(&data, false));
        assert!(render(tail(&data, 0), false).is_empty());
    }
}
