//! vks: a Kubernetes node agent (a kubelet) that runs each container of a pod as a systemd unit
//! on an ordinary Debian machine.
//!
//! # Layout
//! - [`cli`], [`config`]: command line and `/etc/vks/config.toml` (validated before anything
//!   else happens).
//! - [`daemon`]: `vks run` — wires the parts below and owns the start-up order and shutdown.
//! - [`join`]: `vks join` — token discovery, node credentials, certificate renewal; [`token`]:
//!   join tokens; [`pki`]: certificates and keys; [`tunnel`]: the k3s agent tunnel.
//! - [`node`]: the Node object, its status and Lease.
//! - [`pods`]: the pods bound to this node, one worker per pod driving its units.
//! - [`probes`]: liveness, readiness and startup probes and lifecycle hooks (how one is run).
//! - [`static_pods`]: pods from manifest files (with or without a cluster), mirror pods.
//! - [`inspect`]: `vks pods` and `vks logs`, read from systemd and the journal.
//! - [`images`]: what an image names on the host.
//! - [`host`]: facts about the machine (capacity, usage, identity, addresses).
//! - [`systemd`]: the boundary to systemd (trait, D-Bus implementation, fake).
//! - [`unit`]: pure pod → unit-file translation (names, escaping, `[X-Kubernetes]`).
//! - [`kubelet_api`]: the kubelet HTTPS API; [`journal`]: reading containers' lines from the
//!   journal (for logs and termination messages).
//! - [`api`]: API server client and reachability tracking; [`events`]: Kubernetes Events.
//! - [`metrics`]: vks's own Prometheus metrics (served by the kubelet API at `/metrics`).
//! - [`notify`], [`shutdown`], [`logging`]: sd_notify, signals, journald.
//!
//! ARCHITECTURE.md at the repository root has the bird's-eye view and the invariants.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod events;
pub mod exec_helper;
pub mod fsutil;
pub mod host;
pub mod images;
pub mod inspect;
pub mod join;
pub mod journal;
pub mod kubelet_api;
pub mod logging;
pub mod metrics;
pub mod node;
pub mod notify;
pub mod objects;
pub mod pki;
pub mod pods;
pub mod policy;
pub mod probes;
pub mod quantity;
pub mod reason;
pub mod shutdown;
pub mod static_pods;
pub mod systemd;
pub mod token;
pub mod tty_shim;
pub mod tunnel;
pub mod unit;
pub mod volumes;

/// A fault-injection point for end-to-end tests: with the `failpoints` feature (never in the
/// packaged binary) it is a `fail::fail_point!` configured through the `FAILPOINTS` environment
/// variable; without it, nothing.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name);
    };
    ($name:literal, $e:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, $e);
    };
}

/// A fault-injection point that makes the calling async loop hang (await forever, without
/// blocking its thread) when `FAILPOINTS` sets it to `return`; nothing without the `failpoints`
/// feature.
#[macro_export]
macro_rules! failpoint_hang {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        if fail::eval($name, |_| ()).is_some() {
            std::future::pending::<()>().await;
        }
    };
}
