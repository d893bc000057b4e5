//! `resourceFieldRef` (env and downwardAPI volumes): a container's requests and limits as the
//! kubelet renders them (`k8s.io/kubernetes/pkg/api/v1/resource` `ExtractContainerResourceValue`,
//! `convertResourceCPUToString`, `convertResourceMemoryToString`), with unset limits meaning
//! the node's allocatable resources (`kubelet.defaultPodLimitsForDownwardAPI`). Pure.

use k8s_openapi::api::core::v1::{Container, ResourceFieldSelector};

use super::data::Allocatable;

/// A Kubernetes quantity in thousandths of its unit, rounded up (`Quantity.MilliValue`).
/// Accepts `123`, `1.5`, `250m`, `64Mi`, `1e3`, `2.5G`, `100n`.
pub fn parse_milli(s: &str) -> Option<i128> {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return None;
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits: String = format!("{int}{frac}");
    let mantissa: i128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    // value = mantissa * base^exp10 / 10^frac.len() (binary suffixes multiply by 2^n).
    let (pow2, exp10): (u32, i32) = match suffix {
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "" => (0, 0),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        e if e.starts_with(['e', 'E']) => (0, e[1..].parse::<i32>().ok().filter(|x| x.abs() <= 30)?),
        _ => return None,
    };
    // In thousandths: multiply by 1000 = 10^3.
    let exp = exp10 + 3 - frac.len() as i32;
    let scaled = mantissa.checked_mul(1i128.checked_shl(pow2)?)?;
    let v = if exp >= 0 {
        scaled.checked_mul(10i128.checked_pow(exp as u32)?)?
    } else {
        let d = 10i128.checked_pow((-exp) as u32)?;
        // Round up, as MilliValue does.
        (scaled + d - 1) / d
    };
    Some(if neg { -v } else { v })
}

fn quantity_milli(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> Option<i128> {
    q.and_then(|q| parse_milli(&q.0))
}

fn ceil_div(a: i128, b: i128) -> i128 {
    if b <= 0 {
        return 0;
    }
    if a >= 0 { (a + b - 1) / b } else { a / b }
}

/// The value of `selector` for container `c`, as the kubelet writes it into env or a file.
pub fn resource_value(c: &Container, selector: &ResourceFieldSelector, alloc: &Allocatable) -> Result<String, String> {
    let divisor = match &selector.divisor {
        Some(d) => parse_milli(&d.0).ok_or_else(|| format!("divisor {:?} is not a quantity", d.0))?,
        None => 1000,
    };
    if divisor <= 0 {
        return Err(format!("divisor {:?} must be positive", selector.divisor.as_ref().map(|d| d.0.as_str())));
    }
    let res = c.resources.as_ref();
    let limit = |name: &str| quantity_milli(res.and_then(|r| r.limits.as_ref()).and_then(|l| l.get(name)));
    let request = |name: &str| quantity_milli(res.and_then(|r| r.requests.as_ref()).and_then(|l| l.get(name)));
    let resource = selector.resource.as_str();
    let (value, cpu) = match resource {
        "limits.cpu" => (limit("cpu").unwrap_or(alloc.cpu_millis as i128), true),
        "requests.cpu" => (request("cpu").unwrap_or(0), true),
        "limits.memory" => (limit("memory").unwrap_or(alloc.memory as i128 * 1000), false),
        "requests.memory" => (request("memory").unwrap_or(0), false),
        "limits.ephemeral-storage" => {
            (limit("ephemeral-storage").unwrap_or(alloc.ephemeral_storage as i128 * 1000), false)
        }
        "requests.ephemeral-storage" => (request("ephemeral-storage").unwrap_or(0), false),
        r => {
            if let Some(h) = r.strip_prefix("limits.hugepages-") {
                (limit(&format!("hugepages-{h}")).unwrap_or(0), false)
            } else if let Some(h) = r.strip_prefix("requests.hugepages-") {
                (request(&format!("hugepages-{h}")).unwrap_or(0), false)
            } else {
                return Err(format!("unsupported container resource: {r:?}"));
            }
        }
    };
    Ok(if cpu {
        // ceil(MilliValue / divisor.MilliValue)
        ceil_div(value, divisor).to_string()
    } else {
        // ceil(Value / divisor.Value), Value being the quantity rounded up to a whole unit.
        let whole = ceil_div(value, 1000);
        let d = ceil_div(divisor, 1000).max(1);
        ceil_div(whole, d).to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_thousandths() {
        for (s, want) in [
            ("1", 1000),
            ("250m", 250),
            ("1.5", 1500),
            ("0.1", 100),
            ("64Mi", 64 * 1024 * 1024 * 1000),
            ("1Ki", 1_024_000),
            ("2G", 2_000_000_000_000),
            ("1e3", 1_000_000),
            ("100n", 1),
            ("1.5Gi", 3 * 512 * 1024 * 1024 * 1000),
        ] {
            assert_eq!(parse_milli(s), Some(want), "{s}");
        }
        for bad in ["", "x", "1Q", "1..2", "Mi"] {
            assert_eq!(parse_milli(bad), None, "{bad}");
        }
    }

    fn c(json: serde_json::Value) -> Container {
        serde_json::from_value(json).unwrap()
    }

    fn sel(resource: &str, divisor: Option<&str>) -> ResourceFieldSelector {
        ResourceFieldSelector {
            resource: resource.into(),
            divisor: divisor.map(|d| k8s_openapi::apimachinery::pkg::api::resource::Quantity(d.into())),
            container_name: None,
        }
    }

    #[test]
    fn values_follow_the_kubelet() {
        let alloc = Allocatable { cpu_millis: 2000, memory: 8 << 30, ephemeral_storage: 100 << 30 };
        let ctr = c(serde_json::json!({"name": "c", "resources": {
            "requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}}));
        let v = |r: &str, d: Option<&str>| resource_value(&ctr, &sel(r, d), &alloc).unwrap();
        assert_eq!(v("requests.cpu", None), "1", "rounded up to a whole CPU");
        assert_eq!(v("requests.cpu", Some("1m")), "250");
        assert_eq!(v("limits.cpu", None), "2", "no limit: the node's allocatable");
        assert_eq!(v("limits.cpu", Some("1m")), "2000");
        assert_eq!(v("requests.memory", None), (64u64 << 20).to_string());
        assert_eq!(v("limits.memory", Some("1Mi")), "128");
        assert_eq!(v("limits.memory", Some("1M")), "135", "ceil(134217728 / 1e6)");
        assert_eq!(v("limits.ephemeral-storage", Some("1Gi")), "100");
        assert_eq!(v("requests.ephemeral-storage", None), "0");
        assert!(resource_value(&ctr, &sel("limits.gpu", None), &alloc).is_err());
    }
}
