//! A test-side model of how systemd 252 reads the unit files vks writes, and what the process
//! then receives. Written from systemd v252 (Debian 252.38): src/basic/fileio.c
//! `read_line_full`, src/shared/conf-parser.c `config_parse`/`parse_line`,
//! src/basic/extract-word.c `extract_first_word`, src/basic/escape.c `cunescape_one`,
//! src/shared/specifier.c `specifier_printf`, src/core/load-fragment.c (`config_parse_exec`,
//! `config_parse_environ`, `config_parse_working_directory`), src/basic/path-util.c
//! (`path_simplify`, `path_is_valid`, `path_is_normalized`) and src/basic/env-util.c
//! (`replace_env_argv`). It is a fake of systemd's parser, so tests/e2e/unit_roundtrip.rs checks
//! it against the real systemd of a test node.

#![allow(dead_code)]

use std::collections::BTreeSet;

/// systemd's LONG_LINE_MAX.
pub const LONG_LINE_MAX: usize = 1024 * 1024;
const PATH_MAX: usize = 4096;
const NAME_MAX: usize = 255;
const WHITESPACE: &[u8] = b" \t\n\r";

/// What systemd makes of a service unit file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    /// `Description=`.
    pub description: Option<String>,
    /// The program executed.
    pub path: String,
    /// The argument vector at exec time (`$` substitution done).
    pub argv: Vec<Vec<u8>>,
    /// The environment from `Environment=`, in order, later assignments replacing earlier ones.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// `WorkingDirectory=` after simplification.
    pub working_directory: Option<String>,
    /// Every (section, key) assigned, in order (`[X-…]` sections included).
    pub keys: Vec<(String, String)>,
    /// Raw values of the `[X-Kubernetes]` section.
    pub x_kubernetes: Vec<(String, String)>,
    /// What systemd would warn about and ignore.
    pub warnings: Vec<String>,
}

/// One word and the rest of the line.
type Word<'a> = Option<(Vec<u8>, &'a [u8])>;
/// (section, key, value) assignments and warnings.
type Assignments = (Vec<(String, String, Vec<u8>)>, Vec<String>);
/// One command of `ExecStart=`: path, argv, whether `$` substitution is off.
type Command = (String, Vec<Vec<u8>>, bool);

/// Why systemd would refuse to load or start the unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// Splits the file into lines as `read_line_full` does (EOL: `\n`, `\r`, NUL and their
/// combinations), failing like it does on a line of LONG_LINE_MAX bytes or more.
fn read_lines(file: &[u8]) -> Result<Vec<&[u8]>, Refused> {
    let mut lines = Vec::new();
    let mut i = 0;
    while i < file.len() {
        let start = i;
        while i < file.len() && !matches!(file[i], b'\n' | b'\r' | 0) {
            if i - start >= LONG_LINE_MAX {
                return Err(Refused(format!("line {} too long (ENOBUFS)", lines.len() + 1)));
            }
            i += 1;
        }
        if i - start >= LONG_LINE_MAX {
            return Err(Refused(format!("line {} too long (ENOBUFS)", lines.len() + 1)));
        }
        lines.push(&file[start..i]);
        // The end-of-line marker: each kind at most once, NUL ends it.
        let (mut seen_n, mut seen_r) = (false, false);
        while i < file.len() {
            match file[i] {
                b'\n' if !seen_n => seen_n = true,
                b'\r' if !seen_r => seen_r = true,
                0 => {
                    i += 1;
                    break;
                }
                _ => break,
            }
            i += 1;
        }
    }
    Ok(lines)
}

fn strip(s: &[u8]) -> &[u8] {
    let a = s.iter().position(|c| !WHITESPACE.contains(c)).unwrap_or(s.len());
    let b = s.iter().rposition(|c| !WHITESPACE.contains(c)).map_or(a, |p| p + 1);
    &s[a..b.max(a)]
}

/// `config_parse`: comments, continuation lines, sections, `key=value`.
/// Returns (section, key, value) assignments.
fn assignments(file: &[u8]) -> Result<Assignments, Refused> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    let mut section: Option<String> = None;
    let mut continuation: Option<Vec<u8>> = None;
    let mut logical = |text: &[u8], section: &mut Option<String>, warnings: &mut Vec<String>| {
        let l = strip(text);
        if l.is_empty() {
            return Ok(());
        }
        let Ok(l) = std::str::from_utf8(l) else {
            return Err(Refused("invalid UTF-8".into()));
        };
        if l.starts_with('[') {
            let name = l.strip_suffix(']').ok_or_else(|| Refused(format!("invalid section header {l:?}")))?;
            *section = Some(name[1..].to_owned());
            return Ok(());
        }
        let Some(sec) = section.clone() else {
            warnings.push(format!("assignment outside of section: {l}"));
            return Ok(());
        };
        match l.split_once('=') {
            Some(("", _)) => warnings.push(format!("missing key: {l}")),
            Some((k, v)) => {
                out.push((sec, String::from_utf8_lossy(strip(k.as_bytes())).into_owned(), strip(v.as_bytes()).to_vec()))
            }
            None => warnings.push(format!("missing '=': {l}")),
        }
        Ok(())
    };
    let mut bom_seen = false;
    for raw in read_lines(file)? {
        let lead = raw.iter().position(|c| !WHITESPACE.contains(c));
        if lead.is_some_and(|p| b"#;".contains(&raw[p])) {
            continue;
        }
        let mut l = raw;
        if !bom_seen && let Some(rest) = l.strip_prefix("\u{feff}".as_bytes()) {
            l = rest;
            bom_seen = true;
        }
        let mut p = match continuation.take() {
            Some(mut c) => {
                if c.len() + l.len() > LONG_LINE_MAX {
                    return Err(Refused("continuation line too long".into()));
                }
                c.extend_from_slice(l);
                c
            }
            None => l.to_vec(),
        };
        let mut escaped = false;
        for &c in &p {
            escaped = !escaped && c == b'\\';
        }
        if escaped {
            let n = p.len();
            p[n - 1] = b' ';
            continuation = Some(p);
            continue;
        }
        logical(&p, &mut section, &mut warnings)?;
    }
    if let Some(c) = continuation {
        logical(&c, &mut section, &mut warnings)?;
    }
    Ok((out, warnings))
}

/// `extract_first_word(…, EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE)`, retried with
/// `EXTRACT_UNESCAPE_RELAX` on a bad escape as `extract_first_word_and_warn` does.
/// Returns the word and the rest, or `None` at the end.
fn extract_word(p: &[u8]) -> Result<Word<'_>, Refused> {
    match extract(p, false) {
        Ok(r) => Ok(r),
        Err(_) => extract(p, true),
    }
}

fn extract(p: &[u8], relax: bool) -> Result<Word<'_>, Refused> {
    let mut i = p.iter().position(|c| !WHITESPACE.contains(c)).unwrap_or(p.len());
    if i == p.len() {
        return Ok(None);
    }
    let mut s = Vec::new();
    let mut quote = 0u8;
    loop {
        let Some(&c) = p.get(i) else {
            if quote != 0 {
                return Err(Refused("unbalanced quotes".into()));
            }
            return Ok(Some((s, &p[i..])));
        };
        if c == b'\\' {
            i += 1;
            let Some(&n) = p.get(i) else {
                if relax && quote == 0 {
                    s.push(b'\\');
                    return Ok(Some((s, &p[i..])));
                }
                return Err(Refused("trailing backslash".into()));
            };
            match cunescape_one(&p[i..]) {
                Some((bytes, used)) => {
                    s.extend_from_slice(&bytes);
                    i += used;
                }
                None if relax => {
                    s.push(b'\\');
                    s.push(n);
                    i += 1;
                }
                None => return Err(Refused("bad escape".into())),
            }
            continue;
        }
        if quote != 0 {
            if c == quote {
                quote = 0;
            } else {
                s.push(c);
            }
        } else if c == b'\'' || c == b'"' {
            quote = c;
        } else if WHITESPACE.contains(&c) {
            let rest = i + p[i..].iter().position(|c| !WHITESPACE.contains(c)).unwrap_or(p.len() - i);
            return Ok(Some((s, &p[rest..])));
        } else {
            s.push(c);
        }
        i += 1;
    }
}

/// `cunescape_one`: the bytes of one escape after the backslash and how many bytes it used.
fn cunescape_one(p: &[u8]) -> Option<(Vec<u8>, usize)> {
    let hex = |c: u8| (c as char).to_digit(16);
    let simple = |b: u8| Some((vec![b], 1));
    match p[0] {
        b'a' => simple(7),
        b'b' => simple(8),
        b'f' => simple(12),
        b'n' => simple(b'\n'),
        b'r' => simple(b'\r'),
        b't' => simple(b'\t'),
        b'v' => simple(11),
        b'\\' | b'"' | b'\'' => simple(p[0]),
        b's' => simple(b' '),
        b'x' => {
            let v = hex(*p.get(1)?)? * 16 + hex(*p.get(2)?)?;
            (v != 0).then(|| (vec![v as u8], 3))
        }
        b'u' | b'U' => {
            let n = if p[0] == b'u' { 4 } else { 8 };
            let mut v = 0u32;
            for k in 1..=n {
                v = v * 16 + hex(*p.get(k)?)?;
            }
            let ch = char::from_u32(v).filter(|_| v != 0)?;
            Some((ch.to_string().into_bytes(), n + 1))
        }
        b'0'..=b'7' => {
            let oct = |c: u8| (b'0'..=b'7').contains(&c).then(|| u32::from(c - b'0'));
            let v = oct(p[0])? * 64 + oct(*p.get(1)?)? * 8 + oct(*p.get(2)?)?;
            (v != 0 && v <= 255).then(|| (vec![v as u8], 3))
        }
        _ => None,
    }
}

/// `specifier_printf` with the unit table: known specifiers expand to a visible marker (vks
/// never wants one expanded), unknown letters and digits fail, `%%` is `%`.
fn specifiers(s: &[u8], max: usize) -> Result<Vec<u8>, Refused> {
    const KNOWN: &[u8] = b"iIjJnNpPfyYcrRCdELStshaAbBHlmMoqTvVwWgGuU";
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            match s.get(i + 1) {
                None => out.push(b'%'),
                Some(b'%') => out.push(b'%'),
                Some(&c) if KNOWN.contains(&c) => {
                    out.extend_from_slice(format!("<specifier %{}>", c as char).as_bytes())
                }
                Some(&c) if c.is_ascii_alphanumeric() => {
                    return Err(Refused(format!("unknown specifier %{}", c as char)));
                }
                Some(&c) => out.extend_from_slice(&[b'%', c]),
            }
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
        if out.len() > max {
            return Err(Refused("specifier expansion too long".into()));
        }
    }
    Ok(out)
}

/// `path_simplify`: drops empty and `.` components and a trailing slash.
pub fn path_simplify(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    let joined = parts.join("/");
    if p.starts_with('/') {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

fn path_is_valid(p: &str, accept_dot_dot: bool) -> bool {
    !p.is_empty() && p.len() < PATH_MAX && p.split('/').all(|c| c.len() <= NAME_MAX && (accept_dot_dot || c != ".."))
}

fn utf8(b: Vec<u8>, what: &str) -> Result<String, Refused> {
    String::from_utf8(b).map_err(|_| Refused(format!("{what} is not UTF-8")))
}

/// `config_parse_exec` for one `ExecStart=` value: (path, argv before `$` substitution,
/// whether `$` substitution is off).
fn parse_exec(v: &[u8]) -> Result<Vec<Command>, Refused> {
    let mut commands = Vec::new();
    let mut p = v;
    while let Some((first, rest)) = extract_word(p)? {
        p = rest;
        if first == b";" {
            continue;
        }
        let (mut ignore, mut at, mut no_env, mut f) = (false, false, false, &first[..]);
        loop {
            match f.first() {
                Some(b'-') if !ignore => ignore = true,
                Some(b'@') if !at => at = true,
                Some(b':') if !no_env => no_env = true,
                Some(b'+' | b'!') => {}
                _ => break,
            }
            f = &f[1..];
        }
        let path = utf8(specifiers(f, PATH_MAX - 1)?, "executable")?;
        if path.is_empty() {
            return Err(Refused("empty executable path".into()));
        }
        if path.chars().any(|c| (c as u32) < 0x20 || matches!(c, '"' | '\'' | '\\' | '\u{7f}')) {
            return Err(Refused(format!("executable name contains special characters: {path:?}")));
        }
        if path.ends_with('/') {
            return Err(Refused(format!("executable path specifies a directory: {path:?}")));
        }
        if !path.starts_with('/') || !path_is_valid(&path, true) {
            return Err(Refused(format!("neither a valid executable name nor an absolute path: {path:?}")));
        }
        let mut argv: Vec<Vec<u8>> = if at { Vec::new() } else { vec![path.clone().into_bytes()] };
        let mut semicolon = false;
        while !p.is_empty() {
            if p[0] == b';' && p.get(1).is_none_or(|c| WHITESPACE.contains(c)) {
                semicolon = true;
                p = skip_blanks(&p[1..]);
                break;
            }
            if p.starts_with(b"\\;") && p.get(2).is_none_or(|c| WHITESPACE.contains(c)) {
                argv.push(b";".to_vec());
                p = skip_blanks(&p[2..]);
                continue;
            }
            let Some((w, rest)) = extract_word(p)? else { break };
            p = rest;
            argv.push(specifiers(&w, LONG_LINE_MAX)?);
        }
        if argv.is_empty() {
            return Err(Refused("empty executable name or zeroeth argument".into()));
        }
        commands.push((path_simplify(&path), argv, no_env));
        if !semicolon {
            break;
        }
    }
    Ok(commands)
}

fn skip_blanks(p: &[u8]) -> &[u8] {
    &p[p.iter().position(|c| !WHITESPACE.contains(c)).unwrap_or(p.len())..]
}

fn env_name_is_valid(n: &[u8]) -> bool {
    !n.is_empty() && !n[0].is_ascii_digit() && n.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn env_get<'a>(env: &'a [(Vec<u8>, Vec<u8>)], name: &[u8]) -> Option<&'a [u8]> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
}

/// `replace_env` without flags: `${NAME}` is substituted, `$$` is `$`, anything else is kept.
fn replace_env(s: &[u8], env: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'$' && s.get(i + 1) == Some(&b'$') {
            out.push(b'$');
            i += 2;
        } else if s[i] == b'$' && s.get(i + 1) == Some(&b'{') {
            let body = &s[i + 2..];
            match body.iter().position(|&c| c == b'}' || c == b':') {
                Some(e) if body[e] == b'}' => {
                    out.extend_from_slice(env_get(env, &body[..e]).unwrap_or_default());
                    i += 2 + e + 1;
                }
                // `${NAME:…` is unsupported syntax: kept as written.
                Some(e) => {
                    out.extend_from_slice(&s[i..i + 2 + e + 1]);
                    i += 2 + e + 1;
                }
                None => {
                    out.extend_from_slice(&s[i..]);
                    i = s.len();
                }
            }
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// `strv_split_full(…, WHITESPACE, EXTRACT_RELAX|EXTRACT_UNQUOTE)`: words unquoted, a backslash
/// keeps the next character (no C escapes), unbalanced quotes and a trailing backslash end the
/// last word.
fn split_relax(v: &[u8]) -> Vec<Vec<u8>> {
    let mut words = Vec::new();
    let mut i = 0;
    loop {
        while i < v.len() && WHITESPACE.contains(&v[i]) {
            i += 1;
        }
        if i == v.len() {
            return words;
        }
        let (mut w, mut quote) = (Vec::new(), 0u8);
        while i < v.len() && (quote != 0 || !WHITESPACE.contains(&v[i])) {
            match v[i] {
                b'\\' => {
                    i += 1;
                    if let Some(&c) = v.get(i) {
                        w.push(c);
                    }
                }
                c if quote != 0 && c == quote => quote = 0,
                c @ (b'\'' | b'"') if quote == 0 => quote = c,
                c => w.push(c),
            }
            i += 1;
        }
        words.push(w);
    }
}

/// `replace_env_argv`: a word `$NAME` is replaced by NAME's value split at blanks (and
/// unquoted); other words get [`replace_env`].
fn replace_env_argv(argv: &[Vec<u8>], env: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<Vec<u8>>, Refused> {
    let mut out = Vec::new();
    for a in argv {
        if a.first() == Some(&b'$') && !matches!(a.get(1), Some(b'{' | b'$')) {
            if let Some(v) = env_get(env, &a[1..]) {
                out.extend(split_relax(v));
            }
            continue;
        }
        out.push(replace_env(a, env));
    }
    Ok(out)
}

/// Parses a service unit the way systemd 252 does and returns what its `ExecStart=` process
/// receives, or why systemd would not load or start it.
pub fn parse_service(file: &[u8]) -> Result<Service, Refused> {
    let (assigns, mut warnings) = assignments(file)?;
    let mut svc = Service::default();
    let mut commands = Vec::new();
    let mut service_type = "simple".to_owned();
    for (section, key, v) in assigns {
        svc.keys.push((section.clone(), key.clone()));
        match (section.as_str(), key.as_str()) {
            ("Unit", "Description") => svc.description = Some(utf8(specifiers(&v, LONG_LINE_MAX)?, "Description")?),
            ("Service", "Type") => service_type = String::from_utf8_lossy(&v).into_owned(),
            ("Service", "ExecStart") if v.is_empty() => commands.clear(),
            ("Service", "ExecStart") => commands.extend(parse_exec(&v)?),
            ("Service", "Environment") => {
                let mut p = &v[..];
                loop {
                    let (w, rest) = match extract(p, false) {
                        Ok(Some(x)) => x,
                        Ok(None) => break,
                        Err(e) => {
                            warnings.push(format!("invalid Environment= syntax, ignored: {e:?}"));
                            break;
                        }
                    };
                    p = rest;
                    let Ok(w) = specifiers(&w, LONG_LINE_MAX) else {
                        warnings.push("Environment= specifier failed, ignored".into());
                        continue;
                    };
                    let eq = w.iter().position(|&c| c == b'=');
                    match eq {
                        Some(e) if env_name_is_valid(&w[..e]) && std::str::from_utf8(&w[e + 1..]).is_ok() => {
                            let (k, val) = (w[..e].to_vec(), w[e + 1..].to_vec());
                            match svc.env.iter_mut().find(|(n, _)| *n == k) {
                                Some(slot) => slot.1 = val,
                                None => svc.env.push((k, val)),
                            }
                        }
                        _ => warnings.push(format!("invalid environment assignment, ignored: {w:?}")),
                    }
                }
            }
            ("Service", "WorkingDirectory") => {
                let s = utf8(v, "WorkingDirectory")?;
                let (missing_ok, rest) = match s.strip_prefix('-') {
                    Some(r) => (true, r),
                    None => (false, s.as_str()),
                };
                if rest == "~" {
                    svc.working_directory = Some("~".into());
                    continue;
                }
                let k = utf8(specifiers(rest.as_bytes(), PATH_MAX - 1)?, "WorkingDirectory")?;
                let simple = path_simplify(&k);
                let ok = simple.starts_with('/') && path_is_valid(&simple, true) && path_is_valid(&simple, false);
                match (ok, missing_ok) {
                    (true, _) => svc.working_directory = Some(simple),
                    (false, true) => warnings.push(format!("WorkingDirectory= ignored: {k:?}")),
                    (false, false) => {
                        return Err(Refused(format!("WorkingDirectory= path is not normalized or invalid: {k:?}")));
                    }
                }
            }
            ("X-Kubernetes", _) => svc.x_kubernetes.push((key, String::from_utf8_lossy(&v).into_owned())),
            _ => {}
        }
    }
    svc.warnings = warnings;
    if commands.len() != 1 && service_type != "oneshot" {
        return Err(Refused(format!("{} ExecStart= commands in a Type={service_type} service", commands.len())));
    }
    let (path, argv, no_env) = commands.remove(0);
    svc.path = path;
    svc.argv = if no_env { argv } else { replace_env_argv(&argv, &svc.env)? };
    Ok(svc)
}

/// The set of `[Service]` keys of a parsed unit, for checking that nothing was added or lost.
pub fn service_keys(s: &Service) -> BTreeSet<String> {
    s.keys.iter().filter(|(sec, _)| sec == "Service").map(|(_, k)| k.clone()).collect()
}
