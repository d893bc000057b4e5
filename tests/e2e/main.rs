//! End-to-end tests: the real control plane (`k3s/cluster`), real systemd nodes (`k3s/node`),
//! the vks built from this checkout installed in them, and the real `kubectl`. No fakes.
//!
//! They are `#[ignore]`d so that a plain `cargo test` needs no cluster; `tests/run` starts the
//! cluster and runs them with `--ignored`. Each test boots its own node(s), so they can run in
//! parallel; tests that disturb the whole cluster live in `tests/e2e_exclusive/`.

// These tests measure real elapsed time against real processes: std's clock is the right one.
#![allow(clippy::disallowed_methods)]

mod data;
mod data_volumes;
mod debs;
mod exec;
mod images;
mod k3s_join;
mod kubelet_api;
mod kubelet_api_auth;
mod kubelet_api_overload;
mod limits;
mod node;
mod package;
mod pods;
mod probes;
mod static_pods;
mod supervision;
mod support;
mod unit_roundtrip;
mod upgrade;
