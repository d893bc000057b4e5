//! `securityContext` and vks's hardening as systemd sandboxing. Pure: the pod, the container,
//! the package unit's settings and the node's policy come in; unit settings come out.
//!
//! Three layers, in this order (README.md "Security" lists the same):
//! 1. **Isolation** (every pod unless it is `privileged` or its namespace is in
//!    `[security] unconfined_namespaces`): vks's credentials and state, the pod directories of
//!    other pods, systemd's and D-Bus's control sockets, the unit files and the journal files are
//!    inaccessible (`InaccessiblePaths=`); the other containers' attach inputs are under an
//!    empty tmpfs (`TemporaryFileSystem=/run/vks-stdin`); other users' processes are invisible
//!    (`ProtectProc=invisible`, unless `hostPID`); the capability bounding set is the container
//!    runtimes' default set without `CAP_KILL` ([`DEFAULT_CAPS`]), changed by
//!    `capabilities.add/drop`. Annotations cannot switch this layer off.
//! 2. **Hardening profile** ([`PROFILE`]; node: `[security] hardening`, `hardening_disable`; pod:
//!    annotations [`HARDENING_ANNOTATION`] and [`HARDENING_DISABLE_ANNOTATION`]).
//! 3. **securityContext**, pod and container level (the container's wins): `runAsUser` →
//!    `User=`, `runAsGroup` → `Group=`, `supplementalGroups` and `fsGroup` →
//!    `SupplementaryGroups=`, `runAsNonRoot` refuses root, `readOnlyRootFilesystem` →
//!    `ProtectSystem=strict`, `allowPrivilegeEscalation: false` → `NoNewPrivileges=yes`,
//!    `seccompProfile: RuntimeDefault` → the profile's `SystemCallFilter=`, `Unconfined` → none,
//!    `appArmorProfile: Localhost` → `AppArmorProfile=`, `privileged` → no layer 1 or 2 and every
//!    capability; pod `hostIPC: false` (the default) → a private IPC namespace shared by the
//!    pod's containers (`PrivateIPC=yes`, `JoinsNamespaceOf=` the pod's other units, which
//!    shares `/tmp` between them as well).
//!
//! How the package's own unit (the container's base, see `images::unitfile`) combines with the
//! profile: for a setting both set, the stricter value wins (`ProtectSystem=`: no < yes < full <
//! strict; `ProtectHome=`: no < read-only < tmpfs < yes; `ProtectProc=`: default < ptraceable <
//! invisible < noaccess; booleans: yes is stricter). A package's own `SystemCallFilter=`,
//! `RestrictAddressFamilies=`, `RestrictNamespaces=` and `SystemCallArchitectures=` replace the
//! profile's (they list what its daemon needs). The capability bounding set is the intersection
//! of the package's and vks's. A securityContext field the pod sets explicitly decides the
//! settings it maps to, also where that relaxes the package: `capabilities.add` adds back,
//! `allowPrivilegeEscalation: true` drops `NoNewPrivileges=`, `seccompProfile: Unconfined` drops
//! the system call filter, `runAsUser` replaces `User=`/`Group=`/`DynamicUser=`.
//!
//! `runAsNonRoot: true` when neither the pod nor the package names a user makes the container
//! run as a user allocated for the pod (`DynamicUser=yes`, `User=vks-<uid>`), shared by its
//! containers; the kubelet would refuse such a pod. Numeric IDs the node's user database lacks
//! are registered by the worker (see [`Ids`]): systemd runs services only as known users.
//!
//! Refused with the field named (`CreateContainerConfigError`): `sysctls` (pods share the node's
//! network namespace, and systemd cannot set the IPC ones), `procMount: Unmasked`,
//! `seLinuxOptions`, `seccompProfile: Localhost`, `supplementalGroupsPolicy: Strict` (systemd
//! always adds the user's groups), `privileged` when `[security] allow_privileged = false`.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, Pod, PodSecurityContext, SecurityContext};

use super::{SpecError, escape, name};

mod tables;

use tables::*;
pub use tables::{DEFAULT_CAPS, PROFILE};

/// Annotation naming the user a pod's containers run as (Debian daemons run as named users):
/// `www-data` for every container, or `web=www-data,helper=nobody` per container.
pub const USER_ANNOTATION: &str = "vks.io/user";
/// Annotation switching the hardening profile (layer 2) off for a pod: `off`.
pub const HARDENING_ANNOTATION: &str = "vks.io/hardening";
/// Annotation leaving settings out of the hardening profile for a pod: `ProtectHome,PrivateDevices`.
pub const HARDENING_DISABLE_ANNOTATION: &str = "vks.io/hardening-disable";

/// The node's security policy, from `[security]` and `[paths]` of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePolicy {
    /// Whether pods get the hardening profile (layer 2).
    pub hardening: bool,
    /// Settings of [`PROFILE`] left out on this node.
    pub hardening_disable: Vec<String>,
    /// Whether pods may run `privileged`.
    pub allow_privileged: bool,
    /// Namespaces whose pods get the host as it is (no layers 1 and 2).
    pub unconfined_namespaces: Vec<String>,
    /// vks's credentials and state, inaccessible to confined pods.
    pub protected_paths: Vec<String>,
}

impl Default for NodePolicy {
    fn default() -> NodePolicy {
        NodePolicy {
            hardening: true,
            hardening_disable: Vec::new(),
            allow_privileged: true,
            unconfined_namespaces: Vec::new(),
            protected_paths: vec!["/etc/vks".into(), "/var/lib/vks".into()],
        }
    }
}

/// Numeric IDs a container runs with that must exist in the node's user database.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ids {
    /// A user ID (`runAsUser`); registered with group 0 when missing, as container runtimes
    /// give a UID their image's /etc/passwd lacks.
    pub user: Option<u32>,
    /// Group IDs (`runAsGroup`, `supplementalGroups`, `fsGroup`).
    pub groups: Vec<u32>,
}

/// What a container runs as and how it is confined.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Security {
    /// `[Service]` settings, values ready to write.
    pub lines: Vec<(String, String)>,
    /// `[Unit]` settings (`JoinsNamespaceOf=`).
    pub unit_lines: Vec<(String, String)>,
    /// Settings of the package's unit that are decided here instead (not written from the base).
    pub replaced: BTreeSet<String>,
    /// A user name that must not be root (`runAsNonRoot`), checked against the node's user
    /// database when the container starts.
    pub non_root_name: Option<String>,
    /// IDs that must exist on the node.
    pub ids: Ids,
    /// The user the container runs as, for volume ownership: `uid`, a name, or `dynamic`.
    pub user: Option<String>,
    /// The group (`runAsGroup`), and the supplementary groups (`fsGroup` first).
    pub group: Option<u32>,
    /// `fsGroup` and `supplementalGroups`.
    pub supplementary_groups: Vec<u32>,
    /// How the container is confined, for events: `default profile`, `host (privileged)`...
    pub summary: String,
}

/// The container's and the pod's securityContext, merged: the container's fields win.
#[derive(Debug, Default)]
struct Merged {
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    run_as_non_root: Option<bool>,
    seccomp: Option<(String, Option<String>)>,
    app_armor: Option<(String, Option<String>)>,
    se_linux: bool,
    fs_group: Option<i64>,
    supplemental_groups: Vec<i64>,
    supplemental_policy: Option<String>,
    sysctls: Vec<String>,
    c: SecurityContext,
}

fn merge(p: Option<&PodSecurityContext>, c: Option<&SecurityContext>) -> Merged {
    let pd = PodSecurityContext::default();
    let cd = SecurityContext::default();
    let (p, c) = (p.unwrap_or(&pd), c.unwrap_or(&cd));
    let nonempty_se = |o: &Option<k8s_openapi::api::core::v1::SELinuxOptions>| {
        o.as_ref().is_some_and(|s| s.user.is_some() || s.role.is_some() || s.type_.is_some() || s.level.is_some())
    };
    Merged {
        run_as_user: c.run_as_user.or(p.run_as_user),
        run_as_group: c.run_as_group.or(p.run_as_group),
        run_as_non_root: c.run_as_non_root.or(p.run_as_non_root),
        seccomp: c
            .seccomp_profile
            .as_ref()
            .or(p.seccomp_profile.as_ref())
            .map(|s| (s.type_.clone(), s.localhost_profile.clone())),
        app_armor: c
            .app_armor_profile
            .as_ref()
            .or(p.app_armor_profile.as_ref())
            .map(|s| (s.type_.clone(), s.localhost_profile.clone())),
        se_linux: nonempty_se(&c.se_linux_options) || nonempty_se(&p.se_linux_options),
        fs_group: p.fs_group,
        supplemental_groups: p.supplemental_groups.clone().unwrap_or_default(),
        supplemental_policy: p.supplemental_groups_policy.clone(),
        sysctls: p.sysctls.iter().flatten().map(|s| s.name.clone()).collect(),
        c: c.clone(),
    }
}

/// The user named for container `c` by the [`USER_ANNOTATION`] of `pod`.
fn annotated_user(pod: &Pod, c: &str) -> Result<Option<String>, SpecError> {
    let Some(v) = pod.metadata.annotations.as_ref().and_then(|a| a.get(USER_ANNOTATION)) else { return Ok(None) };
    let v = v.trim();
    let name = if v.contains('=') {
        let mut found = None;
        for part in v.split(',') {
            match part.split_once('=') {
                Some((k, n)) if k.trim() == c => found = Some(n.trim()),
                Some(_) => {}
                None => {
                    return Err(SpecError::config(format!(
                        "annotation {USER_ANNOTATION} {v:?}: expected a user name or container=user pairs"
                    )));
                }
            }
        }
        match found {
            Some(n) => n,
            None => return Ok(None),
        }
    } else {
        v
    };
    let valid = name.len() <= 32
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        return Err(SpecError::config(format!(
            "annotation {USER_ANNOTATION}: {name:?} is not a user name (letters, digits, '_', '-', '.', starting \
             with a letter or '_', at most 32 characters); use runAsUser for numeric IDs"
        )));
    }
    Ok(Some(name.to_owned()))
}

fn id(field: &str, v: i64) -> Result<u32, SpecError> {
    u32::try_from(v)
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| SpecError::config(format!("securityContext.{field} {v} is not a valid ID (0 to 4294967294)")))
}

/// Which settings of the profile apply to `pod` on this node: none when hardening is off.
/// The settings of [`PROFILE`] that apply, and how to describe them.
type Profile = (Vec<(&'static str, &'static str)>, String);

fn profile_for(pod: &Pod, policy: &NodePolicy) -> Result<Profile, SpecError> {
    let ann = pod.metadata.annotations.as_ref();
    let off = ann.and_then(|a| a.get(HARDENING_ANNOTATION)).map(|v| v.trim().to_owned());
    match off.as_deref() {
        None | Some("default") | Some("on") => {}
        Some("off") => return Ok((Vec::new(), "hardening profile off (annotation)".into())),
        Some(v) => {
            return Err(SpecError::config(format!(
                "annotation {HARDENING_ANNOTATION} {v:?}: expected \"off\" or \"default\""
            )));
        }
    }
    if !policy.hardening {
        return Ok((Vec::new(), "hardening profile off on this node".into()));
    }
    let mut disabled: BTreeSet<String> = policy.hardening_disable.iter().cloned().collect();
    if let Some(v) = ann.and_then(|a| a.get(HARDENING_DISABLE_ANNOTATION)) {
        for k in v.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            if !PROFILE.iter().any(|(p, _)| *p == k) {
                let names: Vec<&str> = PROFILE.iter().map(|(k, _)| *k).collect();
                return Err(SpecError::config(format!(
                    "annotation {HARDENING_DISABLE_ANNOTATION}: {k:?} is not a setting of the profile ({})",
                    names.join(", ")
                )));
            }
            disabled.insert(k.to_owned());
        }
    }
    let profile: Vec<_> = PROFILE.iter().copied().filter(|(k, _)| !disabled.contains(*k)).collect();
    let summary = if disabled.is_empty() {
        "default hardening profile".to_owned()
    } else {
        format!("default hardening profile without {}", disabled.into_iter().collect::<Vec<_>>().join(", "))
    };
    Ok((profile, summary))
}

/// Refusals of fields systemd cannot honour.
fn refusals(m: &Merged, policy: &NodePolicy) -> Result<(), SpecError> {
    let refuse = |why: String| Err(SpecError::config(why));
    if !m.sysctls.is_empty() {
        return refuse(format!(
            "pod securityContext.sysctls ({}) are not supported by vks: pods share the node's network namespace, \
             and systemd cannot set sysctls inside a unit's IPC namespace",
            m.sysctls.join(", ")
        ));
    }
    if m.c.proc_mount.as_deref() == Some("Unmasked") {
        return refuse("securityContext.procMount Unmasked is not supported by vks (it needs user namespaces)".into());
    }
    if m.se_linux {
        return refuse("securityContext.seLinuxOptions are not supported by vks (no SELinux on Debian nodes)".into());
    }
    if let Some((t, _)) = &m.seccomp
        && t == "Localhost"
    {
        return refuse(
            "securityContext.seccompProfile Localhost is not supported by vks: use RuntimeDefault (systemd's \
             @system-service filter) or Unconfined"
                .into(),
        );
    }
    if m.supplemental_policy.as_deref() == Some("Strict") {
        return refuse(
            "pod securityContext.supplementalGroupsPolicy Strict is not supported by vks: systemd always adds the \
             groups the user has in /etc/group"
                .into(),
        );
    }
    if m.c.privileged == Some(true) && !policy.allow_privileged {
        return refuse("securityContext.privileged is not allowed on this node ([security] allow_privileged)".into());
    }
    if let Some((t, p)) = &m.app_armor
        && t == "Localhost"
        && p.as_deref().is_none_or(|p| p.is_empty() || p.contains(|c: char| c.is_whitespace() || c.is_control()))
    {
        return refuse(format!("securityContext.appArmorProfile.localhostProfile {p:?} is not a profile name"));
    }
    Ok(())
}

/// The confinement of container `c` of `pod`, whose package unit contributes `base`.
pub fn plan(pod: &Pod, c: &Container, base: &[(String, String)], policy: &NodePolicy) -> Result<Security, SpecError> {
    let spec = pod.spec.as_ref();
    let m = merge(spec.and_then(|s| s.security_context.as_ref()), c.security_context.as_ref());
    refusals(&m, policy).map_err(|e| SpecError::config(format!("container {}: {}", c.name, e.message)))?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let privileged = m.c.privileged == Some(true);
    let unconfined = policy.unconfined_namespaces.iter().any(|n| n == namespace);
    let confined = !privileged && !unconfined;
    let mut s = Security::default();
    let set = |s: &mut Security, k: &str, v: String| s.lines.push((k.to_owned(), v));
    let base_has = |k: &str| base.iter().any(|(bk, _)| bk == k);
    let base_last = |k: &str| base.iter().rev().find(|(bk, _)| bk == k).map(|(_, v)| v.as_str());

    // Who the container runs as.
    let annotated = annotated_user(pod, &c.name)?;
    if annotated.is_some() && m.run_as_user.is_some() {
        return Err(SpecError::config(format!(
            "container {}: both securityContext.runAsUser and annotation {USER_ANNOTATION} name a user; set one",
            c.name
        )));
    }
    let run_as_user = m.run_as_user.map(|u| id("runAsUser", u)).transpose()?;
    let run_as_group = m.run_as_group.map(|g| id("runAsGroup", g)).transpose()?;
    let mut groups: Vec<u32> = Vec::new();
    if let Some(g) = m.fs_group {
        groups.push(id("fsGroup", g)?);
    }
    for g in &m.supplemental_groups {
        let g = id("supplementalGroups", *g)?;
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let package_user = base_last("User").filter(|u| !u.trim().is_empty()).map(|u| u.trim().to_owned());
    let package_dynamic = base_last("DynamicUser").and_then(|v| rank("DynamicUser", v)) == Some(1);
    let identity_replaced = run_as_user.is_some() || annotated.is_some();
    let non_root = m.run_as_non_root == Some(true);
    let who = format!("pod {:?}, container {}", pod.metadata.name.as_deref().unwrap_or(""), c.name);
    if identity_replaced {
        for k in ["User", "Group", "DynamicUser"] {
            s.replaced.insert(k.to_owned());
        }
    }
    if let Some(u) = run_as_user {
        if non_root && u == 0 {
            return Err(SpecError::config(format!("container's runAsUser breaks non-root policy ({who})")));
        }
        set(&mut s, "User", u.to_string());
        s.ids.user = Some(u);
        s.user = Some(u.to_string());
    } else if let Some(n) = &annotated {
        set(&mut s, "User", n.clone());
        s.user = Some(n.clone());
    } else if package_dynamic {
        s.user = Some("dynamic".into());
    } else if let Some(u) = &package_user {
        s.user = Some(u.clone());
    } else if non_root {
        // Nobody names a user: one allocated for the pod satisfies runAsNonRoot.
        let uid: String =
            pod.metadata.uid.as_deref().unwrap_or("pod").chars().filter(char::is_ascii_alphanumeric).collect();
        let name = format!("vks-{}", &uid[..uid.len().min(27)]);
        for k in ["User", "DynamicUser"] {
            s.replaced.insert(k.to_owned());
        }
        set(&mut s, "DynamicUser", "yes".into());
        set(&mut s, "User", name.clone());
        s.user = Some("dynamic".into());
    }
    if non_root {
        match s.user.as_deref() {
            None => {
                return Err(SpecError::config(format!(
                    "container has runAsNonRoot and image will run as root ({who})"
                )));
            }
            Some("0" | "root") => {
                return Err(SpecError::config(format!(
                    "container has runAsNonRoot and image will run as root ({who}): its unit runs as User=root"
                )));
            }
            Some("dynamic") => {}
            Some(n) if n.parse::<u32>().is_ok() => {}
            Some(n) => s.non_root_name = Some(n.to_owned()),
        }
    }
    if let Some(g) = run_as_group {
        s.replaced.insert("Group".into());
        set(&mut s, "Group", g.to_string());
        s.ids.groups.push(g);
        s.group = Some(g);
    }
    if !groups.is_empty() {
        set(&mut s, "SupplementaryGroups", groups.iter().map(u32::to_string).collect::<Vec<_>>().join(" "));
        s.ids.groups.extend(&groups);
        s.supplementary_groups = groups;
    }
    s.ids.groups.sort_unstable();
    s.ids.groups.dedup();

    // The hardening profile and the package's settings: the stricter wins.
    let (profile, summary) = if confined { profile_for(pod, policy)? } else { (Vec::new(), String::new()) };
    s.summary = if privileged {
        "host (privileged)".into()
    } else if unconfined {
        format!("host (namespace {namespace} is unconfined on this node)")
    } else {
        summary
    };
    let seccomp = m.seccomp.as_ref().map(|(t, _)| t.as_str());
    let package_filter = base_has("SystemCallFilter");
    for (k, v) in &profile {
        if SECCOMP.contains(k) && (seccomp == Some("Unconfined") || package_filter) {
            continue;
        }
        if PACKAGE_LISTS.contains(k) && base_has(k) {
            continue;
        }
        let value = match base_last(k) {
            Some(pv) if rank(k, pv) > rank(k, v) => pv.trim().to_owned(),
            _ => (*v).to_owned(),
        };
        s.replaced.insert((*k).to_owned());
        set(&mut s, k, value);
    }
    // An explicit RuntimeDefault outside the profile (hardening off or host mode) still filters.
    if seccomp == Some("RuntimeDefault") && !package_filter && !s.lines.iter().any(|(k, _)| k == "SystemCallFilter") {
        for (k, v) in PROFILE.iter().filter(|(k, _)| SECCOMP.contains(k)) {
            s.replaced.insert((*k).to_owned());
            set(&mut s, k, (*v).to_owned());
        }
    }
    if seccomp == Some("Unconfined") {
        for k in SECCOMP {
            s.replaced.insert((*k).to_owned());
        }
    }

    // readOnlyRootFilesystem and allowPrivilegeEscalation.
    match m.c.read_only_root_filesystem {
        Some(true) => {
            s.lines.retain(|(k, _)| k != "ProtectSystem");
            s.replaced.insert("ProtectSystem".into());
            set(&mut s, "ProtectSystem", "strict".into());
        }
        Some(false) if base_last("ProtectSystem").and_then(|v| rank("ProtectSystem", v)) == Some(3) => {
            // Explicitly writable: the package's strict becomes the profile's level.
            s.replaced.insert("ProtectSystem".into());
            if !s.lines.iter().any(|(k, _)| k == "ProtectSystem") {
                set(&mut s, "ProtectSystem", "no".into());
            }
            if let Some(l) = s.lines.iter_mut().find(|(k, _)| k == "ProtectSystem") {
                l.1 = profile.iter().find(|(k, _)| *k == "ProtectSystem").map_or("no", |(_, v)| v).into();
            }
        }
        _ => {}
    }
    match m.c.allow_privilege_escalation {
        Some(false) => {
            s.replaced.insert("NoNewPrivileges".into());
            set(&mut s, "NoNewPrivileges", "yes".into());
        }
        Some(true) => {
            s.replaced.insert("NoNewPrivileges".into());
        }
        None => {}
    }

    // Isolation from the node and from other pods.
    if confined {
        let host_pid = spec.and_then(|s| s.host_pid) == Some(true);
        if !host_pid {
            let v = match base_last("ProtectProc") {
                Some(pv) if rank("ProtectProc", pv) > rank("ProtectProc", "invisible") => pv.trim().to_owned(),
                _ => "invisible".to_owned(),
            };
            s.replaced.insert("ProtectProc".into());
            set(&mut s, "ProtectProc", v);
        }
        let mut paths: Vec<String> = Vec::new();
        for p in policy.protected_paths.iter().map(String::as_str).chain(CONTROL_PATHS.iter().copied()) {
            let v = escape::path_item(p, "-")
                .map_err(|e| SpecError::create(format!("container {}: the protected path {p:?} {e}", c.name)))?;
            paths.push(v);
        }
        set(&mut s, "InaccessiblePaths", paths.join(" "));
        // Other containers' attach inputs: an empty tmpfs over them (a container with stdin gets
        // its own directory bound back, see `unit::stdin`).
        set(&mut s, "TemporaryFileSystem", super::stdin::STDIN_ROOT.to_owned());
    }

    // Capabilities.
    let caps = m.c.capabilities.as_ref();
    let names = |l: Option<&Vec<String>>| l.cloned().unwrap_or_default();
    let (add, drop) = (names(caps.and_then(|c| c.add.as_ref())), names(caps.and_then(|c| c.drop.as_ref())));
    for n in add.iter().chain(drop.iter()) {
        if n != "ALL" && cap_index(n).is_none() {
            return Err(SpecError::config(format!(
                "container {}: securityContext.capabilities: {n:?} is not a Linux capability",
                c.name
            )));
        }
    }
    if !privileged && (confined || caps.is_some()) {
        let add_mask = if add.iter().any(|a| a == "ALL") {
            ALL_MASK
        } else {
            mask_of(&add.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let default = if confined { mask_of(DEFAULT_CAPS) } else { ALL_MASK };
        let mut bounding = if drop.iter().any(|d| d == "ALL") {
            add_mask
        } else {
            (default | add_mask) & !mask_of(&drop.iter().map(String::as_str).collect::<Vec<_>>())
        };
        if let Some(pkg) = package_caps(base, "CapabilityBoundingSet", ALL_MASK) {
            bounding = (bounding & pkg) | (add_mask & bounding);
        }
        s.replaced.insert("CapabilityBoundingSet".into());
        set(&mut s, "CapabilityBoundingSet", cap_list(bounding));
        // A non-root user holds capabilities only as ambient ones: the package's, and those
        // the pod adds.
        let root = s.user.as_deref().is_none_or(|u| u == "0" || u == "root");
        let ambient =
            (package_caps(base, "AmbientCapabilities", 0).unwrap_or(0) | if root { 0 } else { add_mask }) & bounding;
        if base_has("AmbientCapabilities") || (!root && add_mask != 0) {
            s.replaced.insert("AmbientCapabilities".into());
            set(&mut s, "AmbientCapabilities", cap_list(ambient));
        }
    }

    // AppArmor: a named profile the node has loaded.
    if let Some(("Localhost", Some(p))) = m.app_armor.as_ref().map(|(t, p)| (t.as_str(), p.as_ref())) {
        let v = escape::text(p).map_err(|e| {
            SpecError::config(format!(
                "container {}: securityContext.appArmorProfile.localhostProfile {p:?} {e}",
                c.name
            ))
        })?;
        set(&mut s, "AppArmorProfile", v);
    }

    // A private IPC namespace shared by the pod's containers (hostIPC: false, the default).
    if spec.and_then(|s| s.host_ipc) != Some(true) {
        s.replaced.insert("PrivateIPC".into());
        set(&mut s, "PrivateIPC", "yes".into());
        let ns = namespace;
        let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
        let others: Vec<String> = spec
            .map(super::pod_containers)
            .unwrap_or_default()
            .into_iter()
            .filter(|(o, _)| o.name != c.name)
            .map(|(o, _)| name::unit_name(ns, pod_name, &o.name))
            .collect();
        if !others.is_empty() {
            s.unit_lines.push(("JoinsNamespaceOf".into(), others.join(" ")));
        }
    }
    Ok(s)
}

/// Refuses a container whose `runAsNonRoot` user name resolves to root in the node's user
/// database (`uid_of`: the node's lookup).
pub fn check_non_root(sec: &Security, container: &str, uid_of: impl Fn(&str) -> Option<u32>) -> Result<(), SpecError> {
    let Some(name) = &sec.non_root_name else { return Ok(()) };
    match uid_of(name) {
        Some(0) => Err(SpecError::config(format!(
            "container {container} has runAsNonRoot and its user {name:?} is root (UID 0)"
        ))),
        Some(_) => Ok(()),
        None => Err(SpecError::config(format!(
            "container {container} has runAsNonRoot and its user {name:?} does not exist on the node, so it cannot \
             be verified as non-root"
        ))),
    }
}

#[cfg(test)]
mod tests;
