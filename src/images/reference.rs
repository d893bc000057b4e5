//! Image references: what a container's `image` string names. Pure: no I/O.
//!
//! - `/absolute/path`: an executable already on the node;
//! - `https://host/path/name_1.0_amd64.deb`, optionally `#sha256=<64 hex digits>`: a .deb file;
//! - `name`, `name:version`, `name=version`: a Debian package, at its candidate or a pinned
//!   version (Debian versions, epochs included: `uptimed:1:0.4.6-3`). The tag `latest` means
//!   the candidate, as in container registries.

use super::ImageError;
use crate::reason::WaitingReason;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// An executable on the node.
    Path(String),
    /// A Debian package from the configured apt sources.
    Package {
        /// Package name.
        name: String,
        /// Pinned version; `None` for the candidate.
        version: Option<String>,
    },
    /// A .deb file to download.
    Url {
        /// The https URL, without the fragment.
        url: String,
        /// Expected SHA-256 (lowercase hex), when given.
        sha256: Option<String>,
    },
}

fn invalid(image: &str, why: &str) -> ImageError {
    ImageError { reason: WaitingReason::InvalidImageName, message: format!("image {image:?}: {why}") }
}

/// Debian policy 5.6.1: lowercase letters, digits, `+`, `-`, `.`; at least two characters,
/// starting with a letter or digit.
pub fn valid_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// Debian policy 5.6.12: `[epoch:]upstream[-revision]`, the upstream part starting with a digit.
pub fn valid_version(s: &str) -> bool {
    let (epoch, rest) = match s.split_once(':') {
        Some((e, r)) => (Some(e), r),
        None => (None, s),
    };
    if epoch.is_some_and(|e| e.is_empty() || !e.chars().all(|c| c.is_ascii_digit())) {
        return false;
    }
    let (upstream, revision) = match rest.rsplit_once('-') {
        Some((u, r)) => (u, Some(r)),
        None => (rest, None),
    };
    let upstream_ok = upstream.starts_with(|c: char| c.is_ascii_digit())
        && upstream.chars().all(|c| c.is_ascii_alphanumeric() || ".+~-:".contains(c));
    let revision_ok =
        revision.is_none_or(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || "+.~".contains(c)));
    upstream_ok && revision_ok
}

/// Parses an image reference (after alias resolution).
pub fn parse(image: &str) -> Result<ImageRef, ImageError> {
    let image = image.trim();
    if image.is_empty() {
        return Err(invalid(image, "empty image"));
    }
    if image.starts_with('/') {
        if image.contains(['\n', '\0']) {
            return Err(invalid(image, "a path may not contain newlines or NUL"));
        }
        return Ok(ImageRef::Path(image.to_owned()));
    }
    if let Some(rest) = image.strip_prefix("https://") {
        let (url, fragment) = match image.split_once('#') {
            Some((u, f)) => (u, Some(f)),
            None => (image, None),
        };
        if rest.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(image, "not a valid https URL"));
        }
        if !url.ends_with(".deb") {
            return Err(invalid(image, "an https image must name a .deb file (…/name_version_arch.deb)"));
        }
        let sha256 = match fragment {
            None => None,
            Some(f) => match f.strip_prefix("sha256=") {
                Some(h) if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) => Some(h.to_ascii_lowercase()),
                _ => return Err(invalid(image, "the URL fragment must be #sha256=<64 hex digits>")),
            },
        };
        return Ok(ImageRef::Url { url: url.to_owned(), sha256 });
    }
    if image.contains("://") {
        return Err(invalid(image, "only https URLs of .deb files can be downloaded"));
    }
    // Package names contain neither ':' nor '=': the first of them starts the version.
    let (name, version) = match image.find([':', '=']) {
        Some(i) => (&image[..i], Some(&image[i + 1..])),
        None => (image, None),
    };
    if !valid_package_name(name) {
        return Err(invalid(
            image,
            "not a Debian package name (lowercase letters, digits, '+', '-', '.'), an absolute path or an \
             https URL of a .deb; map container image names to packages with [images] aliases in config.toml",
        ));
    }
    let version = match version {
        None | Some("latest") => None,
        Some(v) if valid_version(v) => Some(v.to_owned()),
        Some(v) => return Err(invalid(image, &format!("{v:?} is not a Debian version"))),
    };
    Ok(ImageRef::Package { name: name.to_owned(), version })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: Option<&str>) -> ImageRef {
        ImageRef::Package { name: name.into(), version: version.map(Into::into) }
    }

    #[test]
    fn packages_and_versions() {
        assert_eq!(parse("uptimed").unwrap(), pkg("uptimed", None));
        assert_eq!(parse("uptimed:latest").unwrap(), pkg("uptimed", None));
        assert_eq!(parse("uptimed:1:0.4.6-3").unwrap(), pkg("uptimed", Some("1:0.4.6-3")));
        assert_eq!(parse("uptimed=1:0.4.6-3").unwrap(), pkg("uptimed", Some("1:0.4.6-3")));
        assert_eq!(parse("libc6=2.36-9+deb12u10").unwrap(), pkg("libc6", Some("2.36-9+deb12u10")));
        assert_eq!(parse("g++:4.2~rc1").unwrap(), pkg("g++", Some("4.2~rc1")));
        for bad in ["Uptimed", "a", "busybox:", "x:abc", "x=1:", "docker.io/library/busybox:1.36", "nginx@sha256:ab"] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.reason, WaitingReason::InvalidImageName, "{bad}");
            assert!(e.message.contains(bad), "{}", e.message);
        }
    }

    #[test]
    fn paths_and_urls() {
        assert_eq!(parse("/usr/bin/sleep").unwrap(), ImageRef::Path("/usr/bin/sleep".into()));
        let h = "a".repeat(64);
        assert_eq!(
            parse(&format!("https://x.example/p/tool_1.0_amd64.deb#sha256={}", h.to_uppercase())).unwrap(),
            ImageRef::Url { url: "https://x.example/p/tool_1.0_amd64.deb".into(), sha256: Some(h) }
        );
        assert_eq!(
            parse("https://x.example/t.deb").unwrap(),
            ImageRef::Url { url: "https://x.example/t.deb".into(), sha256: None }
        );
        for bad in ["http://x.example/t.deb", "https://x.example/t.deb#md5=1", "https://x.example/t.tar", "https://"] {
            assert_eq!(parse(bad).unwrap_err().reason, WaitingReason::InvalidImageName, "{bad}");
        }
    }
}
