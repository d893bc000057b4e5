//! Writing pod-supplied strings into unit files so that they arrive in the process exactly as
//! given and can never add or change a directive.
//!
//! How systemd 252 reads the settings vks writes (src/core/load-fragment.c):
//! - `ExecStart=`: `%` specifiers are expanded on the raw line, then each word is unquoted and
//!   C-unescaped (`\n`, `\\`, `\"`, `\xNN`, ...); an *unquoted* `;` word separates commands;
//!   at exec time `$VAR`/`${VAR}` are substituted and `$$` becomes `$`.
//! - `Environment=`: each word is unquoted and C-unescaped, then `%` specifiers are expanded;
//!   no `$` substitution. systemd drops (with a warning) assignments whose name is not
//!   `[A-Za-z_][A-Za-z0-9_]*` or whose value has control characters other than tab and newline,
//!   so vks refuses those instead of losing them silently.
//! - Paths (`WorkingDirectory=`): specifiers expanded, no unquoting; the value is the rest of the
//!   line, trimmed.
//!
//! So every value is written inside double quotes with `\`, `"`, control characters and
//! newlines C-escaped, `%` doubled, and (for `ExecStart=`) `$` doubled. A line therefore never
//! contains a raw newline, and nothing a pod supplies can start a new line or section.

use std::fmt::Write;

/// Why a value cannot be put into a unit file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unrepresentable {
    /// NUL bytes cannot be passed to a process at all.
    #[error("contains a NUL character")]
    Nul,
    /// systemd would drop this environment variable name.
    #[error(
        "is not a valid environment variable name for systemd (letters, digits and '_', not starting with a digit)"
    )]
    EnvName,
    /// systemd would drop this environment value.
    #[error("contains a control character other than tab and newline, which systemd refuses in environment values")]
    EnvControl,
    /// A path must be absolute and plain.
    #[error("must be an absolute path without control characters or surrounding spaces")]
    Path,
}

fn quoted(s: &str, dollar: bool) -> Result<String, Unrepresentable> {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\0' => return Err(Unrepresentable::Nul),
            '%' => out.push_str("%%"),
            '$' if dollar => out.push_str("$$"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// One word of an `ExecStart=` line.
pub fn exec_word(s: &str) -> Result<String, Unrepresentable> {
    quoted(s, true)
}

/// A whole `ExecStart=` value: the executable (with systemd's `@` prefix, so that `argv[0]` can
/// differ from it) followed by every argument including `argv[0]`.
pub fn exec_line(executable: &str, argv: &[super::Arg]) -> Result<String, Unrepresentable> {
    let mut line = exec_word(&format!("@{executable}"))?;
    for a in argv {
        line.push(' ');
        match a {
            super::Arg::Lit(s) => line.push_str(&exec_word(s)?),
            // Raw text comes from a packaged unit's own ExecStart= line (one line, no newline).
            super::Arg::Raw(s) => line.push_str(s),
        }
    }
    Ok(line)
}

/// Whether systemd accepts `name` as an environment variable name.
pub fn is_valid_env_name(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// One `Environment=` assignment.
pub fn environment(name: &str, value: &str) -> Result<String, Unrepresentable> {
    if !is_valid_env_name(name) {
        return Err(Unrepresentable::EnvName);
    }
    if value.contains('\0') {
        return Err(Unrepresentable::Nul);
    }
    if value.chars().any(|c| (c.is_control() && c != '\t' && c != '\n') || c == '\u{7f}') {
        return Err(Unrepresentable::EnvControl);
    }
    quoted(&format!("{name}={value}"), false)
}

/// A path setting (`WorkingDirectory=`).
pub fn path(p: &str) -> Result<String, Unrepresentable> {
    if !p.starts_with('/') || p.trim() != p || p.chars().any(|c| c.is_control()) {
        return Err(Unrepresentable::Path);
    }
    Ok(p.replace('%', "%%"))
}

/// A value of the `[X-Kubernetes]` section: percent-encoded outside a small safe set, so it is
/// one plain token that systemd never interprets (no line continuation, no specifiers).
pub fn meta_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/' | b':' | b'=' | b'+' | b'@' | b',') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The inverse of [`meta_value`]; `None` for malformed input.
pub fn meta_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(s.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_words_escape_everything_systemd_would_interpret() {
        assert_eq!(exec_word("plain").unwrap(), r#""plain""#);
        assert_eq!(exec_word("").unwrap(), r#""""#);
        assert_eq!(exec_word("a b").unwrap(), r#""a b""#);
        assert_eq!(exec_word("100%").unwrap(), r#""100%%""#);
        assert_eq!(exec_word("$HOME ${X}").unwrap(), r#""$$HOME $${X}""#);
        assert_eq!(exec_word(r#"say "hi"\"#).unwrap(), r#""say \"hi\"\\""#);
        assert_eq!(exec_word("l1\nl2\r\t").unwrap(), r#""l1\nl2\r\t""#);
        assert_eq!(exec_word("\u{1}\u{7f}").unwrap(), r#""\x01\x7f""#);
        assert_eq!(exec_word("grüße ☃").unwrap(), "\"grüße ☃\"");
        assert_eq!(exec_word(";").unwrap(), r#"";""#);
        assert_eq!(exec_word("a\0b"), Err(Unrepresentable::Nul));
    }

    #[test]
    fn a_newline_can_never_start_a_directive() {
        let argv = [super::super::Arg::Lit("echo".into()), super::super::Arg::Lit("x\n[Service]\nUser=root".into())];
        let line = exec_line("/bin/echo", &argv).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(line, r#""@/bin/echo" "echo" "x\n[Service]\nUser=root""#);
    }

    #[test]
    fn environment_assignments() {
        assert_eq!(environment("A", "1").unwrap(), r#""A=1""#);
        assert_eq!(environment("A", "$B %n \"q\" \\ \n").unwrap(), r#""A=$B %%n \"q\" \\ \n""#);
        assert_eq!(environment("9A", "x"), Err(Unrepresentable::EnvName));
        assert_eq!(environment("A.B", "x"), Err(Unrepresentable::EnvName));
        assert_eq!(environment("", "x"), Err(Unrepresentable::EnvName));
        assert_eq!(environment("A", "bell\u{7}"), Err(Unrepresentable::EnvControl));
        assert_eq!(environment("A", "cr\r"), Err(Unrepresentable::EnvControl));
        assert_eq!(environment("A", "nul\0"), Err(Unrepresentable::Nul));
    }

    #[test]
    fn paths() {
        assert_eq!(path("/srv/my dir/50%").unwrap(), "/srv/my dir/50%%");
        assert!(path("relative").is_err());
        assert!(path("/x\n").is_err());
        assert!(path(" /x").is_err());
    }

    #[test]
    fn meta_values_round_trip() {
        for s in ["busybox:1.36", "/usr/bin/sleep", "https://h/x_1.0_amd64.deb#sha256=ab", "a b\n[Service]\\", "ü%"] {
            let e = meta_value(s);
            assert!(e.bytes().all(|b| b.is_ascii_graphic() && b != b'\\' && b != b'"'), "{e}");
            assert_eq!(meta_unescape(&e).as_deref(), Some(s));
        }
        assert_eq!(meta_unescape("%zz"), None);
    }
}
