//! Every rule for writing a value into a unit file, one function per kind of setting, so that
//! the value reaches systemd (and the process) exactly as given and can never add, remove or
//! change a directive. A value systemd 252 cannot carry is an [`Unrepresentable`] error (a pod
//! error naming the field), never a unit systemd refuses.
//!
//! How systemd 252 reads a unit file (src/shared/conf-parser.c `config_parse`,
//! src/basic/fileio.c `read_line_full`):
//! - Lines end at `\n`, `\r` or NUL. A line of [`LONG_LINE_MAX`] bytes or more fails the whole
//!   file with ENOBUFS ("No buffer space available").
//! - A line whose first non-blank character is `#` or `;` is a comment, also in the middle of
//!   a continued line.
//! - A line ending in a backslash that is not itself escaped (an odd number of trailing
//!   backslashes) continues on the next line: the backslash becomes a space and the next line
//!   is appended. So no line vks writes may end in an unescaped backslash.
//! - Key and value are stripped of blanks (` \t\n\r`) at both ends; a line must be valid UTF-8.
//!
//! How each setting vks writes is then parsed (src/core/load-fragment.c):
//! - `ExecStart=` (`config_parse_exec`): words are split like a shell (`extract_first_word` with
//!   `EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE`, src/basic/extract-word.c): `"…"`/`'…'` quote, `\`
//!   starts a C escape (`\n`, `\\`, `\"`, `\xNN`, …) inside and outside quotes, and an unquoted
//!   `;` word separates commands. The first word may carry prefixes (`@` = argv\[0\] is the next
//!   word); after the prefixes it is expanded with `unit_path_printf` (`%` specifiers) and must be
//!   "safe" (`string_is_safe`: no control character, no `"`, `'` or `\`), must not end in `/` and
//!   must be a valid path (at most 4095 bytes, components at most 255). The executable path gets
//!   no `$` substitution. Every other word is expanded with `unit_full_printf`, and at exec time
//!   `replace_env_argv` substitutes `$VAR` (as a whole word, split at blanks) and `${VAR}`, and
//!   turns `$$` into `$`.
//! - `Environment=` (`config_parse_environ`): the same word splitting, then specifiers; no `$`.
//!   An assignment is dropped (with a warning only) unless the name is `[A-Za-z_][A-Za-z0-9_]*`;
//!   in 252 values may hold any character but NUL (`env_value_is_valid`).
//! - `WorkingDirectory=` (`config_parse_working_directory`): no unquoting at all; a leading `-`
//!   or a lone `~` are special; then specifiers, then `path_simplify` (drops `//`, `/./` and a
//!   trailing `/`), and the result must be absolute, valid and normalized (no `..`), else the
//!   unit fails to load (bad-setting).
//! - `Description=`, `SyslogIdentifier=` (`config_parse_unit_string_printf`): the raw value,
//!   specifiers expanded.
//! - `LogExtraFields=` (`config_parse_log_extra_fields`): word splitting as `Environment=`, then
//!   specifiers.
//! - `InaccessiblePaths=` and the other path lists (`config_parse_namespace_path_strv`): words,
//!   unquoted, an optional `-`/`+` prefix, then specifiers and `path_simplify`.
//! - `[X-…]` sections are not interpreted, but the line rules above still apply.
//!
//! Specifiers (src/shared/specifier.c): `%%` is `%`; `%` and a letter or digit is a specifier
//! (unknown ones fail the setting); `%` before anything else is kept.

use std::fmt::Write;

/// systemd's limit on the length of a line of a unit file (LONG_LINE_MAX); a line must be
/// shorter than this, not counting its newline.
pub const LONG_LINE_MAX: usize = 1024 * 1024;
/// Longest path systemd accepts in a path setting (PATH_MAX - 1).
pub const PATH_MAX: usize = 4095;
/// Longest path component (NAME_MAX).
pub const NAME_MAX: usize = 255;

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
    /// A path must be absolute.
    #[error("is not an absolute path")]
    NotAbsolute,
    /// systemd refuses these characters in this setting.
    #[error("contains {0}, which systemd does not accept here")]
    Special(&'static str),
    /// `..` cannot be normalized away without knowing the file system.
    #[error("has a '..' component, which systemd refuses (it only accepts normalized paths)")]
    DotDot,
    /// The path or one of its components is longer than systemd accepts.
    #[error("is longer than systemd accepts ({PATH_MAX} bytes per path, {NAME_MAX} per component)")]
    PathTooLong,
    /// An executable path must name a file.
    #[error("ends in '/', which names a directory, not a program")]
    Directory,
    /// The line in the unit file would exceed systemd's limit.
    #[error("needs a unit file line of {0} bytes, more than systemd's limit of {max} bytes", max = LONG_LINE_MAX - 1)]
    LineTooLong(usize),
}

/// The shell-like word systemd reads back as `s`: double-quoted, with `\`, `"` and control
/// characters C-escaped, `%` doubled, and `$` doubled when `dollar` (exec-time substitution).
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
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    Ok(out)
}

/// One argument of an `ExecStart=` line (argv\[0\] included).
pub fn exec_arg(s: &str) -> Result<String, Unrepresentable> {
    quoted(s, true)
}

/// The program of an `ExecStart=` line, with systemd's `@` prefix so that the next word is
/// argv\[0\]. No `$` doubling: systemd substitutes nothing in the executable path.
pub fn exec_path(p: &str) -> Result<String, Unrepresentable> {
    if p.contains('\0') {
        return Err(Unrepresentable::Nul);
    }
    if !p.starts_with('/') {
        return Err(Unrepresentable::NotAbsolute);
    }
    if p.chars().any(|c| c.is_ascii_control()) {
        return Err(Unrepresentable::Special("a control character"));
    }
    if let Some(c) = p.chars().find(|c| matches!(c, '"' | '\'' | '\\')) {
        return Err(Unrepresentable::Special(match c {
            '"' => "a double quote",
            '\'' => "a single quote",
            _ => "a backslash",
        }));
    }
    if p.ends_with('/') {
        return Err(Unrepresentable::Directory);
    }
    check_path_length(p)?;
    Ok(format!("\"@{}\"", p.replace('%', "%%")))
}

/// A whole `ExecStart=` value: the executable ([`exec_path`]) followed by every argument
/// including argv\[0\].
pub fn exec_line(executable: &str, argv: &[super::Arg]) -> Result<String, Unrepresentable> {
    let mut line = exec_path(executable)?;
    for a in argv {
        line.push(' ');
        match a {
            super::Arg::Lit(s) => line.push_str(&exec_arg(s)?),
            // Raw text comes from a packaged unit's own ExecStart= line (one line, no newline).
            super::Arg::Raw(s) => line.push_str(s),
            super::Arg::WithSecret { pieces, .. } => line.push_str(&exec_arg_pieces(pieces)?),
        }
    }
    Ok(line)
}

/// One `ExecStart=` argument made of text and secret variables: the text escaped as
/// [`exec_arg`] does, each secret variable as `${NAME}`, which systemd substitutes at exec time
/// (inside a word: exactly the value, one argument), so the value never enters the unit file.
pub fn exec_arg_pieces(pieces: &[super::env::Piece]) -> Result<String, Unrepresentable> {
    let mut out = String::from("\"");
    for p in pieces {
        match p {
            super::env::Piece::Text(t) => {
                let q = quoted(t, true)?;
                out.push_str(&q[1..q.len() - 1]);
            }
            super::env::Piece::Secret { name, .. } => {
                if !is_valid_env_name(name) {
                    return Err(Unrepresentable::EnvName);
                }
                out.push_str("${");
                out.push_str(name);
                out.push('}');
            }
        }
    }
    out.push('"');
    Ok(out)
}

/// Whether systemd accepts `name` as an environment variable name.
pub fn is_valid_env_name(name: &str) -> bool {
    let mut b = name.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// One `Environment=` assignment. Any value but NUL is carried (C-escaped).
pub fn environment(name: &str, value: &str) -> Result<String, Unrepresentable> {
    if !is_valid_env_name(name) {
        return Err(Unrepresentable::EnvName);
    }
    quoted(&format!("{name}={value}"), false)
}

/// One `LogExtraFields=` field; `name` is vks's own (a valid journal field name).
pub fn log_field(name: &str, value: &str) -> Result<String, Unrepresentable> {
    quoted(&format!("{name}={value}"), false)
}

fn check_path_length(p: &str) -> Result<(), Unrepresentable> {
    if p.len() > PATH_MAX || p.split('/').any(|c| c.len() > NAME_MAX) {
        return Err(Unrepresentable::PathTooLong);
    }
    Ok(())
}

/// `p` with `//`, `/./` and a trailing `/` removed, as systemd's `path_simplify` does (the same
/// directory); `..` is refused, since removing it could change the meaning (symbolic links).
pub fn normalize_path(p: &str) -> Result<String, Unrepresentable> {
    if p.contains('\0') {
        return Err(Unrepresentable::Nul);
    }
    if !p.starts_with('/') {
        return Err(Unrepresentable::NotAbsolute);
    }
    let mut out = String::with_capacity(p.len());
    for part in p.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if part == ".." {
            return Err(Unrepresentable::DotDot);
        }
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    check_path_length(&out)?;
    Ok(out)
}

/// A `WorkingDirectory=` value for `p` (normalized, see [`normalize_path`]). The value is not
/// unquoted by systemd, so it is written as is with `%` doubled; characters that cannot be
/// written raw (control characters) are refused. A path ending in a backslash or a blank gets a
/// trailing `/`, which systemd removes again, so the line never continues onto the next one and
/// the blank is not stripped.
pub fn working_directory(p: &str) -> Result<String, Unrepresentable> {
    let norm = normalize_path(p)?;
    if norm.chars().any(|c| c.is_ascii_control()) {
        return Err(Unrepresentable::Special("a control character"));
    }
    let mut out = norm.replace('%', "%%");
    if out.ends_with(['\\', ' ']) {
        out.push('/');
    }
    Ok(out)
}

/// One path of a path-list setting (`InaccessiblePaths=`, `ReadWritePaths=`), after systemd's
/// `prefix` (`-`: a missing path is not an error). systemd 252 splits these lists into words
/// (`config_parse_namespace_path_strv`: unquoting, then specifiers, then `path_simplify`), so
/// the normalized path is written as one double-quoted word with `%` doubled; a quote, a
/// backslash or a control character, whose escapes that parser reads differently from the
/// others, is refused.
pub fn path_item(p: &str, prefix: &str) -> Result<String, Unrepresentable> {
    let norm = normalize_path(p)?;
    if norm.chars().any(|c| c.is_ascii_control()) {
        return Err(Unrepresentable::Special("a control character"));
    }
    if let Some(c) = norm.chars().find(|c| matches!(c, '"' | '\\' | '\'')) {
        return Err(Unrepresentable::Special(match c {
            '"' => "a double quote",
            '\'' => "a single quote",
            _ => "a backslash",
        }));
    }
    Ok(format!("\"{prefix}{}\"", norm.replace('%', "%%")))
}

/// An `EnvironmentFile=` path: written raw (systemd does not unquote it), normalized, `%`
/// doubled; control characters, and blanks or a backslash at its end, are refused.
pub fn env_file_path(p: &str) -> Result<String, Unrepresentable> {
    let norm = normalize_path(p)?;
    if norm.chars().any(|c| c.is_ascii_control()) {
        return Err(Unrepresentable::Special("a control character"));
    }
    if norm.ends_with(['\\', ' ']) {
        return Err(Unrepresentable::Special("a blank or a backslash at its end"));
    }
    Ok(norm.replace('%', "%%"))
}

/// One path of a `BindPaths=` value (`config_parse_bind_paths`: words split at `:` and blanks,
/// quotes removed, `\` escaping only separators and itself, then specifiers): `:`, blanks and
/// `\` are backslash-escaped, a quote is wrapped in the other kind of quote, `%` is doubled.
fn bind_path(p: &str) -> Result<String, Unrepresentable> {
    let norm = normalize_path(p)?;
    let mut out = String::with_capacity(norm.len());
    for c in norm.chars() {
        match c {
            c if c.is_control() => return Err(Unrepresentable::Special("a control character")),
            ':' => out.push_str("\\:"),
            ' ' => out.push_str("\\ "),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("'\"'"),
            '\'' => out.push_str("\"'\""),
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A `BindPaths=`/`BindReadOnlyPaths=` value binding `source` (on the host) to `target` (in the
/// unit's namespace), recursively. The explicit `rbind` option (systemd's default) ends the
/// value, so an escaped blank is never the last character of the line.
pub fn bind_paths(source: &str, target: &str) -> Result<String, Unrepresentable> {
    Ok(format!("{}:{}:rbind", bind_path(source)?, bind_path(target)?))
}

/// One line of an environment file as systemd 252 reads it (`parse_env_file_internal`):
/// `NAME="value"`, with `\`, `"`, `` ` `` and `$` backslash-escaped inside the double quotes, where
/// everything else (newlines included) is kept as is.
pub fn env_file_line(name: &str, value: &str) -> Result<String, Unrepresentable> {
    if !is_valid_env_name(name) {
        return Err(Unrepresentable::EnvName);
    }
    if value.contains('\0') {
        return Err(Unrepresentable::Nul);
    }
    let mut out = format!("{name}=\"");
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '`' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push_str("\"\n");
    Ok(out)
}

/// A plain text value (`Description=`, `SyslogIdentifier=`): written raw, so it must be one line
/// without control characters, blanks at its ends or a trailing backslash; `%` is doubled.
pub fn text(s: &str) -> Result<String, Unrepresentable> {
    if s.contains('\0') {
        return Err(Unrepresentable::Nul);
    }
    if s.chars().any(|c| c.is_ascii_control()) {
        return Err(Unrepresentable::Special("a control character"));
    }
    if s.trim_matches(' ') != s || s.ends_with('\\') {
        return Err(Unrepresentable::Special("a blank at either end or a trailing backslash"));
    }
    Ok(s.replace('%', "%%"))
}

/// `key=value` as a line of the unit file (with its newline), refused when systemd could not
/// read a line that long.
pub fn directive(key: &str, value: &str) -> Result<String, Unrepresentable> {
    let len = key.len() + 1 + value.len();
    if len >= LONG_LINE_MAX {
        return Err(Unrepresentable::LineTooLong(len));
    }
    Ok(format!("{key}={value}\n"))
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
    use crate::unit::Arg;

    #[test]
    fn exec_args_escape_everything_systemd_would_interpret() {
        assert_eq!(exec_arg("plain").unwrap(), r#""plain""#);
        assert_eq!(exec_arg("").unwrap(), r#""""#);
        assert_eq!(exec_arg("a b").unwrap(), r#""a b""#);
        assert_eq!(exec_arg("100%").unwrap(), r#""100%%""#);
        assert_eq!(exec_arg("$HOME ${X}").unwrap(), r#""$$HOME $${X}""#);
        assert_eq!(exec_arg(r#"say "hi"\"#).unwrap(), r#""say \"hi\"\\""#);
        assert_eq!(exec_arg("l1\nl2\r\t").unwrap(), r#""l1\nl2\r\t""#);
        assert_eq!(exec_arg("\u{1}\u{7f}").unwrap(), r#""\x01\x7f""#);
        assert_eq!(exec_arg("grüße ☃").unwrap(), "\"grüße ☃\"");
        assert_eq!(exec_arg(";").unwrap(), r#"";""#);
        assert_eq!(exec_arg("a\0b"), Err(Unrepresentable::Nul));
    }

    #[test]
    fn a_newline_can_never_start_a_directive() {
        let argv = [Arg::Lit("echo".into()), Arg::Lit("x\n[Service]\nUser=root".into())];
        let line = exec_line("/bin/echo", &argv).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(line, r#""@/bin/echo" "echo" "x\n[Service]\nUser=root""#);
    }

    #[test]
    fn executable_paths_are_not_escaped_like_arguments() {
        // Defect 2 of issue 9: `$` is not substituted in the executable path, so not doubled.
        assert_eq!(exec_path("/opt/a$b/run").unwrap(), r#""@/opt/a$b/run""#);
        assert_eq!(exec_path("/opt/50%/run").unwrap(), r#""@/opt/50%%/run""#);
        assert_eq!(exec_path("/opt/a b/run").unwrap(), r#""@/opt/a b/run""#);
        for bad in ["/opt/a\\b", "/opt/\"x", "/opt/it's", "/opt/a\u{1}", "/opt/a\u{7f}"] {
            assert!(matches!(exec_path(bad), Err(Unrepresentable::Special(_))), "{bad:?}");
        }
        assert_eq!(exec_path("/opt/dir/"), Err(Unrepresentable::Directory));
        assert_eq!(exec_path("run"), Err(Unrepresentable::NotAbsolute));
        assert_eq!(exec_path(&format!("/{}", "x".repeat(256))), Err(Unrepresentable::PathTooLong));
    }

    #[test]
    fn environment_assignments() {
        assert_eq!(environment("A", "1").unwrap(), r#""A=1""#);
        assert_eq!(environment("A", "$B %n \"q\" \\ \n").unwrap(), r#""A=$B %%n \"q\" \\ \n""#);
        assert_eq!(environment("A", "bell\u{7}cr\r").unwrap(), r#""A=bell\x07cr\r""#);
        assert_eq!(environment("9A", "x"), Err(Unrepresentable::EnvName));
        assert_eq!(environment("A.B", "x"), Err(Unrepresentable::EnvName));
        assert_eq!(environment("", "x"), Err(Unrepresentable::EnvName));
        assert_eq!(environment("A", "nul\0"), Err(Unrepresentable::Nul));
    }

    #[test]
    fn working_directories_are_normalized_and_never_continue_a_line() {
        assert_eq!(working_directory("/srv/my dir/50%").unwrap(), "/srv/my dir/50%%");
        assert_eq!(working_directory("/x/").unwrap(), "/x");
        assert_eq!(working_directory("//x//./y/.").unwrap(), "/x/y");
        assert_eq!(working_directory("/").unwrap(), "/");
        assert_eq!(working_directory("/a\\").unwrap(), "/a\\/");
        assert_eq!(working_directory("/a\\\\").unwrap(), "/a\\\\/");
        assert_eq!(working_directory("/a ").unwrap(), "/a /");
        assert_eq!(working_directory("/q\"'$").unwrap(), "/q\"'$");
        assert_eq!(working_directory("/tmp/../tmp"), Err(Unrepresentable::DotDot));
        assert_eq!(working_directory("relative"), Err(Unrepresentable::NotAbsolute));
        assert_eq!(working_directory(" /x"), Err(Unrepresentable::NotAbsolute));
        assert!(matches!(working_directory("/x\n"), Err(Unrepresentable::Special(_))));
        assert!(matches!(working_directory("/x\ty"), Err(Unrepresentable::Special(_))));
        assert_eq!(working_directory(&"/x".repeat(2048)), Err(Unrepresentable::PathTooLong));
    }

    #[test]
    fn path_list_items() {
        assert_eq!(path_item("/etc/vks", "-").unwrap(), r#""-/etc/vks""#);
        assert_eq!(path_item("//var/lib/a b/50%/", "").unwrap(), r#""/var/lib/a b/50%%""#);
        assert!(matches!(path_item("/a\"b", "-"), Err(Unrepresentable::Special(_))));
        assert!(matches!(path_item("/a\\b", "-"), Err(Unrepresentable::Special(_))));
        assert!(matches!(path_item("/a\nb", "-"), Err(Unrepresentable::Special(_))));
        assert_eq!(path_item("relative", "-"), Err(Unrepresentable::NotAbsolute));
    }

    #[test]
    fn secret_arguments_refer_to_their_variables() {
        use crate::unit::env::Piece;
        let pieces = [
            Piece::Text("--pw=$ %".into()),
            Piece::Secret { name: "PW".into(), value: "x".into() },
            Piece::Text("\"".into()),
        ];
        assert_eq!(exec_arg_pieces(&pieces).unwrap(), r#""--pw=$$ %%${PW}\"""#);
        let bad = [Piece::Secret { name: "a.b".into(), value: "x".into() }];
        assert_eq!(exec_arg_pieces(&bad), Err(Unrepresentable::EnvName));
    }

    #[test]
    fn bind_paths_escape_separators_and_quotes() {
        assert_eq!(bind_paths("/run/vks/p", "/etc/app").unwrap(), "/run/vks/p:/etc/app:rbind");
        assert_eq!(bind_paths("/a b", "/c:d").unwrap(), r"/a\ b:/c\:d:rbind");
        assert_eq!(bind_paths("/q\"'", "/x\\y%").unwrap(), r#"/q'"'"'":/x\\y%%:rbind"#);
        assert_eq!(bind_paths("/x//y/", "/z/").unwrap(), "/x/y:/z:rbind");
        assert!(matches!(bind_paths("/a\nb", "/c"), Err(Unrepresentable::Special(_))));
        assert_eq!(bind_paths("/a", "rel"), Err(Unrepresentable::NotAbsolute));
        assert_eq!(bind_paths("/a", "/b/../c"), Err(Unrepresentable::DotDot));
    }

    #[test]
    fn environment_files() {
        assert_eq!(env_file_line("A", "x\"y\\z`$w\n%").unwrap(), "A=\"x\\\"y\\\\z\\`\\$w\n%\"\n");
        assert_eq!(env_file_line("1A", "x"), Err(Unrepresentable::EnvName));
        assert_eq!(env_file_line("A", "\0"), Err(Unrepresentable::Nul));
        assert_eq!(env_file_path("/run/vks/pods/u/env/c.env").unwrap(), "/run/vks/pods/u/env/c.env");
        assert_eq!(env_file_path("/run/50%/x").unwrap(), "/run/50%%/x");
        assert!(env_file_path("/run/x ").is_err());
    }

    #[test]
    fn text_values() {
        assert_eq!(text("vks pod a/b 100%").unwrap(), "vks pod a/b 100%%");
        assert!(text("a\nb").is_err());
        assert!(text("a\\").is_err());
        assert!(text(" a").is_err());
    }

    #[test]
    fn lines_longer_than_systemd_reads_are_refused() {
        assert!(directive("K", &"x".repeat(LONG_LINE_MAX - 3)).is_ok());
        assert_eq!(directive("K", &"x".repeat(LONG_LINE_MAX - 2)), Err(Unrepresentable::LineTooLong(LONG_LINE_MAX)));
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
