//! Real Debian packages for the image tests: small .debs built with dpkg-deb, a signed flat apt
//! repository served over http on loopback, and an https server (with a test CA) for .deb URLs.
//! The test nodes share the host's network namespace and see the host's files through their
//! overlay, so they reach both servers and read the keyring and CA from the fixture directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sha2::{Digest, Sha256};

use super::support::check;

/// A package to build.
pub struct Deb<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// (path inside the package, mode, content)
    pub files: Vec<(&'a str, u32, String)>,
    /// DEBIAN/postinst, when any.
    pub postinst: Option<String>,
}

/// A daemon with its own unit and a debhelper-like postinst that enables and starts it; it
/// appends "<version> <args> OPT=<OPT> user=<user> unit=<unit>" to
/// /var/lib/vks-test-daemon/runs each time it starts.
pub fn daemon(version: &str) -> Deb<'_> {
    let script = format!(
        "#!/bin/sh\necho \"{version} $* OPT=$OPT user=$(id -un) unit=$(sed -n 's|^0::.*/||p' /proc/self/cgroup)\" \
         >> /var/lib/vks-test-daemon/runs\nexec sleep 3600\n"
    );
    let unit = "[Unit]\nDescription=vks test daemon\n\n[Service]\nType=exec\nEnvironment=OPT=from-unit\n\
                ExecStart=/usr/sbin/vks-test-daemon --from-unit $OPT\nUser=daemon\nStateDirectory=vks-test-daemon\n\
                Restart=always\n\n[Install]\nWantedBy=multi-user.target\n";
    // What dh_installsystemd generates (unmask, enable, daemon-reload, start via policy-rc.d).
    let postinst = "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n\
                    deb-systemd-helper unmask vks-test-daemon.service >/dev/null || true\n\
                    if deb-systemd-helper --quiet was-enabled vks-test-daemon.service; then\n\
                    deb-systemd-helper enable vks-test-daemon.service >/dev/null || true\nelse\n\
                    deb-systemd-helper update-state vks-test-daemon.service >/dev/null || true\nfi\n\
                    if [ -d /run/systemd/system ]; then\nsystemctl --system daemon-reload >/dev/null || true\n\
                    deb-systemd-invoke start vks-test-daemon.service >/dev/null || true\nfi\nfi\n";
    Deb {
        name: "vks-test-daemon",
        version,
        files: vec![
            ("usr/sbin/vks-test-daemon", 0o755, script),
            ("lib/systemd/system/vks-test-daemon.service", 0o644, unit.to_owned()),
        ],
        postinst: Some(postinst.to_owned()),
    }
}

/// A tool without a unit: `/usr/bin/<name>` prints its arguments and sleeps.
pub fn tool<'a>(name: &'a str, version: &'a str, path: &'a str) -> Deb<'a> {
    Deb {
        name,
        version,
        files: vec![(path, 0o755, format!("#!/bin/sh\necho \"{name} {version} $*\"\nexec sleep 3600\n"))],
        postinst: None,
    }
}

/// Builds `deb` into `dir`; returns the file.
pub fn build(dir: &Path, deb: &Deb) -> PathBuf {
    let root = dir.join(format!("build-{}-{}", deb.name, deb.version));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    let control = format!(
        "Package: {}\nVersion: {}\nArchitecture: all\nMaintainer: vks tests <tests@vks.invalid>\n\
         Description: vks test package\n",
        deb.name, deb.version
    );
    std::fs::write(root.join("DEBIAN/control"), control).unwrap();
    if let Some(p) = &deb.postinst {
        write_mode(&root.join("DEBIAN/postinst"), p, 0o755);
    }
    for (path, mode, content) in &deb.files {
        let f = root.join(path);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        write_mode(&f, content, *mode);
    }
    let out = dir.join(format!("{}_{}_all.deb", deb.name, deb.version));
    check(Command::new("dpkg-deb").args(["--root-owner-group", "-Zgzip", "--build"]).arg(&root).arg(&out));
    std::fs::remove_dir_all(&root).unwrap();
    out
}

fn write_mode(path: &Path, content: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A loopback web server over a directory (killed when dropped, or with the test process).
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT` or `https://localhost:PORT`.
    pub base: String,
}

const SERVE: &str = r#"
import functools, http.server, ssl, sys
d = sys.argv[1]
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=d)
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), h)
if len(sys.argv) > 2:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

impl Server {
    fn start(dir: &Path, tls: Option<(&Path, &Path)>) -> Server {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "python3", "-c", SERVE]).arg(dir);
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("starting python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("web server said {line:?}"));
        let base = match tls {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        Server { child, base }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The signed apt repository and the https server.
pub struct Fixture {
    pub dir: PathBuf,
    /// Serves `dir/repo` (a flat repository: `URIs: <base>/repo/`, `Suites: ./`).
    pub http: Server,
    /// Serves `dir/files` over https with a certificate for localhost signed by `ca`.
    pub https: Server,
    /// The keyring (binary) that signed the repository.
    pub keyring: PathBuf,
    /// The test CA (PEM) of the https server.
    pub ca: PathBuf,
}

impl Fixture {
    /// Builds `repo_debs` into a signed repository and `files` into the https directory.
    pub fn new(test: &str, repo_debs: &[Deb], files: &[Deb]) -> Fixture {
        let dir = PathBuf::from(std::env::var("VKS_TEST_ROOT").unwrap_or_else(|_| "/var/tmp/vks-test".into()))
            .join("images")
            .join(format!("{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (repo, www) = (dir.join("repo"), dir.join("files"));
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::create_dir_all(&www).unwrap();
        for d in repo_debs {
            build(&repo, d);
        }
        for d in files {
            build(&www, d);
        }
        let keyring = sign_repo(&dir, &repo);
        let ca = make_certs(&dir);
        let http = Server::start(&dir, None);
        let https = Server::start(&www, Some((&dir.join("pki/server.crt"), &dir.join("pki/server.key"))));
        Fixture { dir, http, https, keyring, ca }
    }

    /// Copies the keyring and the CA into `node` and returns the `[images]` section pointing
    /// vks at the repository and the CA (the nodes' /var/tmp is private).
    pub fn images_config(&self, node: &super::support::Node, extra: &str) -> String {
        let (ca, key) = ("/etc/vks/test-images-ca.pem", "/etc/vks/test-repo-keyring.gpg");
        node.put_file(ca, &std::fs::read(&self.ca).unwrap());
        node.put_file(key, &std::fs::read(&self.keyring).unwrap());
        format!(
            "\n[images]\ndownload_ca_file = \"{ca}\"\n{extra}\n\n[[images.apt_sources]]\nname = \"test\"\n\
             uris = [\"{base}/repo/\"]\nsuites = [\"./\"]\nsigned_by = \"{key}\"\n",
            base = self.http.base,
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes Packages, Release and a signed InRelease; returns the keyring.
fn sign_repo(dir: &Path, repo: &Path) -> PathBuf {
    let gnupg = dir.join("gnupg");
    std::fs::create_dir_all(&gnupg).unwrap();
    std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gpg =
        |args: &[&str]| check(Command::new("gpg").arg("--homedir").arg(&gnupg).args(["--batch", "--quiet"]).args(args));
    gpg(&["--passphrase", "", "--quick-gen-key", "vks tests <tests@vks.invalid>", "ed25519", "sign", "never"]);
    let keyring = dir.join("keyring.gpg");
    gpg(&["--output", keyring.to_str().unwrap(), "--export"]);
    let packages = check(Command::new("dpkg-scanpackages").args(["-m", "."]).current_dir(repo).stderr(Stdio::null()));
    std::fs::write(repo.join("Packages"), &packages).unwrap();
    let date = check(Command::new("date").args(["-u", "-R"]));
    let release = format!(
        "Origin: vks-tests\nLabel: vks-tests\nDate: {}\nSHA256:\n {} {} Packages\n",
        date.trim(),
        hex::encode(Sha256::digest(packages.as_bytes())),
        packages.len()
    );
    std::fs::write(repo.join("Release"), release).unwrap();
    gpg(&["--output", repo.join("InRelease").to_str().unwrap(), "--clearsign", repo.join("Release").to_str().unwrap()]);
    keyring
}

/// A test CA and a server certificate for localhost/127.0.0.1; returns the CA file.
fn make_certs(dir: &Path) -> PathBuf {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let sh = format!(
        "set -e; cd {}; \
         openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -days 2 \
           -subj /CN=vks-test-images-ca 2>/dev/null; \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr \
           -subj /CN=localhost 2>/dev/null; \
         printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext; \
         openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 \
           -extfile ext 2>/dev/null",
        pki.display()
    );
    check(Command::new("sh").args(["-c", &sh]));
    pki.join("ca.crt")
}
