//! A container's command line with Kubernetes semantics: `command`/`args` against the image's
//! defaults, and finding the program like execvp. Pure: file-system questions are passed in.

use k8s_openapi::api::core::v1::Container;

use super::env::{Piece, ResolvedEnv, expand_pieces, join_pieces};
use super::{Arg, ImageInfo, SpecError};

/// `PATH` used to find a bare command name when the container sets none (runc's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One argument, `$(VAR)`-expanded: a literal, or (when a value from a Secret went into it) the
/// pieces, so that the unit file refers to the secret variable instead of holding its value.
fn expanded_arg(s: &str, env: &ResolvedEnv) -> Arg {
    let pieces = expand_pieces(s, |n| env.lookup(n));
    match join_pieces(&pieces) {
        (text, true) => Arg::WithSecret { text, pieces },
        (text, false) => Arg::Lit(text),
    }
}

/// The argument vector with Kubernetes semantics: `command` replaces the image's entrypoint,
/// `args` its arguments; both are `$(VAR)`-expanded with the container's environment.
pub fn container_argv(c: &Container, image: &ImageInfo, env: &ResolvedEnv) -> Result<Vec<Arg>, SpecError> {
    let command = c.command.as_ref().filter(|v| !v.is_empty());
    let args = c.args.as_ref().filter(|v| !v.is_empty());
    let mut argv: Vec<Arg> = match command {
        Some(cmd) => cmd.iter().map(|s| expanded_arg(s, env)).collect(),
        None => image.entrypoint.iter().cloned().map(Arg::Lit).collect(),
    };
    if let Some(Arg::WithSecret { pieces, .. }) = argv.first() {
        let names: Vec<&str> = pieces
            .iter()
            .filter_map(|p| if let Piece::Secret { name, .. } = p { Some(name.as_str()) } else { None })
            .collect();
        return Err(SpecError::config(format!(
            "container {}: command[0] uses a value from a Secret ({}): the program path must not be secret",
            c.name,
            names.join(", ")
        )));
    }
    match args {
        Some(a) => argv.extend(a.iter().map(|s| expanded_arg(s, env))),
        None if command.is_none() => argv.extend(image.args.iter().cloned()),
        None => {}
    }
    if argv.first().is_none_or(|a| a.text().is_empty()) {
        return Err(SpecError::create(format!(
            "container {}: no command to run: the image {:?} has no default command{} and the container sets none",
            c.name,
            c.image.as_deref().unwrap_or(""),
            image.no_command.as_deref().map(|w| format!(" ({w})")).unwrap_or_default()
        )));
    }
    Ok(argv)
}

/// Finds the program for `argv0` like execvp: a name with a `/` must be an absolute path; a bare
/// name is looked up in `PATH` (the container's, else [`DEFAULT_PATH`]).
pub fn resolve_executable(
    container: &str,
    argv0: &str,
    env: &[(String, String)],
    is_executable: impl Fn(&str) -> bool,
) -> Result<String, SpecError> {
    if argv0.contains('/') {
        if !argv0.starts_with('/') {
            return Err(SpecError::create(format!(
                "container {container}: command {argv0:?} is a relative path; use an absolute path or a bare name found in PATH"
            )));
        }
        return if is_executable(argv0) {
            Ok(argv0.to_owned())
        } else {
            Err(SpecError::create(format!("container {container}: {argv0:?} does not exist or is not executable")))
        };
    }
    let path = env.iter().rev().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| format!("{}/{argv0}", d.trim_end_matches('/')))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            SpecError::create(format!("container {container}: executable {argv0:?} not found in PATH ({path})"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(json: serde_json::Value) -> Container {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn command_and_args_semantics() {
        let image = ImageInfo {
            entrypoint: vec!["/img".into()],
            args: vec![Arg::Lit("--default".into())],
            ..ImageInfo::default()
        };
        let env = ResolvedEnv {
            vars: vec![super::super::env::Var { name: "X".into(), value: "1".into(), secret: false }],
            ..ResolvedEnv::default()
        };
        let argv = |j| {
            container_argv(&container(j), &image, &env).unwrap().iter().map(|a| a.text().to_owned()).collect::<Vec<_>>()
        };
        assert_eq!(argv(serde_json::json!({"name": "c"})), ["/img", "--default"]);
        assert_eq!(argv(serde_json::json!({"name": "c", "args": ["a$(X)"]})), ["/img", "a1"]);
        assert_eq!(argv(serde_json::json!({"name": "c", "command": ["sh", "-c"]})), ["sh", "-c"]);
        assert_eq!(
            argv(serde_json::json!({"name": "c", "command": ["sh"], "args": ["$(X)", "$$(X)"]})),
            ["sh", "1", "$(X)"]
        );
        let none = ImageInfo::default();
        let e = container_argv(&container(serde_json::json!({"name": "c", "image": "x"})), &none, &env).unwrap_err();
        assert!(e.message.contains("no command to run"), "{e}");
    }

    #[test]
    fn executables_resolve_like_execvp() {
        let exists = |p: &str| p == "/usr/bin/sleep" || p == "/opt/bin/tool";
        assert_eq!(resolve_executable("c", "sleep", &[], exists).unwrap(), "/usr/bin/sleep");
        assert_eq!(resolve_executable("c", "/usr/bin/sleep", &[], exists).unwrap(), "/usr/bin/sleep");
        let path = vec![("PATH".to_owned(), "/opt/bin:relative".to_owned())];
        assert_eq!(resolve_executable("c", "tool", &path, exists).unwrap(), "/opt/bin/tool");
        assert!(resolve_executable("c", "tool", &[], exists).unwrap_err().message.contains("not found in PATH"));
        assert!(resolve_executable("c", "./sleep", &[], exists).unwrap_err().message.contains("relative path"));
        assert!(resolve_executable("c", "/nope", &[], exists).unwrap_err().message.contains("does not exist"));
    }
}
