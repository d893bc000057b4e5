//! `[resources]` and `[security]`: reservations, allocatable enforcement and pod confinement.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use toml::Value;

use super::{Errors, Section, show};
use crate::config::{Reserved, ResourcesConfig, SecurityConfig, validate_dns_label};
use crate::unit::{resources, security};

impl Section {
    fn strings(&mut self, key: &str, errs: &mut Errors) -> Vec<String> {
        let mut out = Vec::new();
        for (i, v) in self.array(key, "an array of strings", errs).into_iter().enumerate() {
            match v {
                Value::String(s) if !s.trim().is_empty() => out.push(s.trim().to_owned()),
                other => {
                    errs.push(format!("{}[{i}]: expected a non-empty string, got {}", self.key(key), show(&other)))
                }
            }
        }
        out
    }

    /// A table of quantities: `{ cpu = "500m", memory = "1Gi", ephemeral-storage = "2Gi" }`.
    fn reserved(&mut self, key: &str, errs: &mut Errors) -> Reserved {
        let mut r = Reserved::default();
        let table = match self.get(key) {
            None => return r,
            Some(Value::Table(t)) => t,
            Some(other) => {
                errs.push(format!("{}: expected a table of quantities, got {}", self.key(key), show(&other)));
                return r;
            }
        };
        for (k, v) in table {
            let full = format!("{}.{k}", self.key(key));
            let text = match &v {
                Value::String(s) => s.clone(),
                Value::Integer(i) if *i >= 0 => i.to_string(),
                other => {
                    errs.push(format!("{full}: expected a quantity like \"500m\" or \"1Gi\", got {}", show(other)));
                    continue;
                }
            };
            let q = Quantity(text.clone());
            let parsed = match k.as_str() {
                "cpu" => resources::millis(&q).map(|m| r.cpu = m),
                "memory" => resources::units(&q).map(|b| r.memory = b),
                "ephemeral-storage" => resources::units(&q).map(|b| r.ephemeral_storage = b),
                _ => {
                    errs.push(format!("{full}: unknown resource (cpu, memory or ephemeral-storage)"));
                    continue;
                }
            };
            if parsed.is_none() {
                errs.push(format!("{full}: {text:?} is not a quantity like \"500m\" or \"1Gi\""));
            }
        }
        r
    }

    pub(super) fn resources(&mut self, errs: &mut Errors) -> ResourcesConfig {
        ResourcesConfig {
            system_reserved: self.reserved("system_reserved", errs),
            kube_reserved: self.reserved("kube_reserved", errs),
            enforce_allocatable: self.boolean("enforce_allocatable", errs).unwrap_or(true),
        }
    }

    pub(super) fn security(&mut self, errs: &mut Errors) -> SecurityConfig {
        let hardening_disable = self.strings("hardening_disable", errs);
        for k in &hardening_disable {
            if !security::PROFILE.iter().any(|(p, _)| p == k) {
                let names: Vec<&str> = security::PROFILE.iter().map(|(k, _)| *k).collect();
                errs.push(format!(
                    "{}: {k:?} is not a setting of the hardening profile ({})",
                    self.key("hardening_disable"),
                    names.join(", ")
                ));
            }
        }
        let unconfined_namespaces = self.strings("unconfined_namespaces", errs);
        for n in &unconfined_namespaces {
            if let Err(e) = validate_dns_label(n) {
                errs.push(format!("{}: {n:?} is not a namespace name: {e}", self.key("unconfined_namespaces")));
            }
        }
        SecurityConfig {
            hardening: self.boolean("hardening", errs).unwrap_or(true),
            hardening_disable,
            allow_privileged: self.boolean("allow_privileged", errs).unwrap_or(true),
            unconfined_namespaces,
            report_exposure: self.boolean("report_exposure", errs).unwrap_or(true),
        }
    }
}
