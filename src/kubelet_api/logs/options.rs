//! The query of `/containerLogs` (a `PodLogOptions`), parsed and validated as the kubelet does,
//! and the formatting of log lines (pure).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a client asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new lines until the container's run ends.
    pub follow: bool,
    /// Only the last N lines (0: none).
    pub tail_lines: Option<u64>,
    /// Only lines logged at or after this time, µs since the epoch.
    pub since_us: Option<u64>,
    /// Prefix each line with its time (RFC 3339, nanoseconds, UTC) and a space.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
    /// The container's previous run instead of the current one.
    pub previous: bool,
}

fn bool_param(name: &str, v: &str) -> Result<bool, String> {
    // strconv.ParseBool, which the API server's parameter codec uses.
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" | "" => Ok(false),
        _ => Err(format!("{name}: {v:?} is not a boolean")),
    }
}

fn int_param(name: &str, v: &str, min: i64) -> Result<u64, String> {
    match v.parse::<i64>() {
        Ok(n) if n >= min => Ok(n as u64),
        Ok(n) => Err(format!("{name}: {n} must be greater than or equal to {min}")),
        Err(_) => Err(format!("{name}: {v:?} is not an integer")),
    }
}

/// Parses an RFC 3339 time into µs since the epoch.
pub fn parse_time_us(v: &str) -> Result<u64, String> {
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{v:?} is not an RFC 3339 time: {e}"))?;
    u64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| format!("{v:?} is before 1970"))
}

impl LogOptions {
    /// Parses the query string of a request (`now` resolves `sinceSeconds`). Unknown
    /// parameters are ignored, as by the kubelet (`stream`, which journald cannot honour:
    /// stdout and stderr reach the journal as one stream).
    pub fn parse(query: Option<&str>, now: SystemTime) -> Result<LogOptions, String> {
        let mut o = LogOptions::default();
        let mut since_seconds = None;
        let mut since_time = None;
        for (k, v) in url_pairs(query.unwrap_or("")) {
            match k.as_str() {
                "follow" => o.follow = bool_param("follow", &v)?,
                "previous" => o.previous = bool_param("previous", &v)?,
                "timestamps" => o.timestamps = bool_param("timestamps", &v)?,
                "tailLines" => o.tail_lines = Some(int_param("tailLines", &v, 0)?),
                "limitBytes" => o.limit_bytes = Some(int_param("limitBytes", &v, 1)?),
                "sinceSeconds" => since_seconds = Some(int_param("sinceSeconds", &v, 1)?),
                "sinceTime" => since_time = Some(parse_time_us(&v).map_err(|e| format!("sinceTime: {e}"))?),
                _ => {}
            }
        }
        o.since_us = match (since_seconds, since_time) {
            (Some(_), Some(_)) => return Err("sinceSeconds and sinceTime: at most one may be set".into()),
            (Some(s), None) => {
                let at = now.checked_sub(Duration::from_secs(s)).unwrap_or(UNIX_EPOCH);
                Some(at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64))
            }
            (None, t) => t,
        };
        Ok(o)
    }
}

/// Decodes `a=b&c=d` (percent escapes and `+`).
fn url_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// `2024-05-01T10:00:00.123456000Z`: the kubelet's `--timestamps` format (RFC 3339, always nine
/// fraction digits), in UTC.
pub fn format_timestamp(us: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_micros(us)).to_string()
}

/// One log line as sent: the optional timestamp, the message, and a newline unless journald
/// marked the entry as not ending a line (`_LINE_BREAK`: a line longer than LineMax split in
/// parts, or the output's last bytes without a newline).
pub fn format_line(out: &mut Vec<u8>, realtime_us: u64, message: &[u8], ends_line: bool, timestamps: bool) {
    if timestamps {
        out.extend_from_slice(format_timestamp(realtime_us).as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(message);
    if ends_line {
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn parses_like_the_kubelet() {
        let o = LogOptions::parse(
            Some("follow=true&tailLines=10&timestamps=1&limitBytes=500&previous=false&sinceSeconds=60"),
            at(1000),
        )
        .unwrap();
        assert_eq!(
            o,
            LogOptions {
                follow: true,
                tail_lines: Some(10),
                since_us: Some(940_000_000),
                timestamps: true,
                limit_bytes: Some(500),
                previous: false
            }
        );
        assert_eq!(LogOptions::parse(None, at(0)).unwrap(), LogOptions::default());
        let t = LogOptions::parse(Some("sinceTime=2024-05-01T10%3A00%3A00Z"), at(0)).unwrap();
        assert_eq!(t.since_us, Some(1_714_557_600_000_000));
        let t = LogOptions::parse(Some("sinceTime=2024-05-01T12:00:00.5%2B02:00"), at(0)).unwrap();
        assert_eq!(t.since_us, Some(1_714_557_600_500_000));
        assert_eq!(LogOptions::parse(Some("tailLines=0"), at(0)).unwrap().tail_lines, Some(0));
        assert_eq!(LogOptions::parse(Some("stream=Stdout&x=%zz"), at(0)).unwrap(), LogOptions::default());
    }

    #[test]
    fn refuses_what_the_kubelet_refuses() {
        let err = |q: &str| LogOptions::parse(Some(q), at(0)).unwrap_err();
        assert_eq!(err("tailLines=-1"), "tailLines: -1 must be greater than or equal to 0");
        assert_eq!(err("limitBytes=0"), "limitBytes: 0 must be greater than or equal to 1");
        assert_eq!(err("sinceSeconds=0"), "sinceSeconds: 0 must be greater than or equal to 1");
        assert_eq!(err("follow=yes"), "follow: \"yes\" is not a boolean");
        assert!(err("sinceSeconds=5&sinceTime=2024-05-01T10:00:00Z").contains("at most one"));
        assert!(err("sinceTime=yesterday").starts_with("sinceTime: \"yesterday\" is not an RFC 3339 time"));
        assert_eq!(err("tailLines=ten"), "tailLines: \"ten\" is not an integer");
    }

    #[test]
    fn lines_are_formatted_like_the_kubelets() {
        let mut out = Vec::new();
        format_line(&mut out, 1_714_557_600_123_456, b"hello", true, true);
        format_line(&mut out, 1_714_557_600_123_456, b"part", false, false);
        format_line(&mut out, 1_714_557_600_123_456, b"\xff", true, false);
        assert_eq!(out, b"2024-05-01T10:00:00.123456000Z hello\npart\xff\n");
    }
}
