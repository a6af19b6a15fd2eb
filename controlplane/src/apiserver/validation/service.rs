//! Service and EndpointSlice validation (`ValidateService`,
//! `ValidateEndpointSlice` and their update rules).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::{json, Value};

use super::meta::labels;
use super::names::{dns1123_label, dns1123_subdomain};
use super::pod::{port_num_or_name, protocol};
use super::{arr_at, at, idx, int_at, str_at, Errors, FieldError};

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const NODE_PORT_RANGE: std::ops::RangeInclusive<i64> = 30000..=32767;
const VALID_IP: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";

/// Validates a Service's spec.
pub(super) fn service(spec: &Value, errs: &mut Errors) {
    let ty = str_at(spec, "type");
    match ty {
        "" => errs.push(FieldError::required("spec.type", "")),
        t if SERVICE_TYPES.contains(&t) => {}
        t => errs.push(FieldError::not_supported(
            "spec.type",
            &t.into(),
            SERVICE_TYPES,
        )),
    }
    let cluster_ip = str_at(spec, "clusterIP");
    if ty == "ExternalName" {
        for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            let set = spec.get(field).is_some_and(|v| match v {
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                v => !v.is_null(),
            });
            if set {
                errs.push(FieldError::forbidden(
                    format!("spec.{field}"),
                    "may not be set for ExternalName services",
                ));
            }
        }
        let name = str_at(spec, "externalName");
        let cname = name.strip_suffix('.').unwrap_or(name);
        if cname.is_empty() {
            errs.push(FieldError::required("spec.externalName", ""));
        }
        for msg in if cname.is_empty() {
            Vec::new()
        } else {
            dns1123_subdomain(cname)
        } {
            errs.push(FieldError::invalid(
                "spec.externalName",
                &cname.into(),
                &msg,
            ));
        }
    } else {
        cluster_ips(spec, ty, errs);
    }
    let ports = arr_at(spec, "ports");
    if ports.is_empty() && cluster_ip != "None" && ty != "ExternalName" {
        errs.push(FieldError::required("spec.ports", ""));
    }
    service_ports(ports, ty, errs);
    match str_at(spec, "sessionAffinity") {
        "" => errs.push(FieldError::required("spec.sessionAffinity", "")),
        "None" => {}
        "ClientIP" => {
            let timeout = spec.pointer("/sessionAffinityConfig/clientIP/timeoutSeconds");
            if let Some(t) = timeout
                .and_then(Value::as_i64)
                .filter(|t| !(1..=86400).contains(t))
            {
                errs.push(FieldError::invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    &t.into(),
                    "must be greater than 0 and less than 86400",
                ));
            }
        }
        a => errs.push(FieldError::not_supported(
            "spec.sessionAffinity",
            &a.into(),
            &["ClientIP", "None"],
        )),
    }
    for (field, allowed) in [
        ("externalTrafficPolicy", &["Cluster", "Local"][..]),
        ("internalTrafficPolicy", &["Cluster", "Local"][..]),
        (
            "ipFamilyPolicy",
            &["SingleStack", "PreferDualStack", "RequireDualStack"][..],
        ),
    ] {
        let value = str_at(spec, field);
        if !value.is_empty() && !allowed.contains(&value) {
            errs.push(FieldError::not_supported(
                format!("spec.{field}"),
                &value.into(),
                allowed,
            ));
        }
    }
    if ty != "ExternalName" {
        labels(spec.get("selector"), "spec.selector", errs);
    }
    for (i, ip) in arr_at(spec, "externalIPs").iter().enumerate() {
        let ip = ip.as_str().unwrap_or("");
        if ip.parse::<IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                idx("spec.externalIPs", i),
                &ip.into(),
                VALID_IP,
            ));
        }
    }
}

fn cluster_ips(spec: &Value, ty: &str, errs: &mut Errors) {
    let cluster_ip = str_at(spec, "clusterIP");
    if !cluster_ip.is_empty() && cluster_ip != "None" && cluster_ip.parse::<IpAddr>().is_err() {
        let msg = "must be empty, 'None', or a valid IP address";
        errs.push(FieldError::invalid(
            "spec.clusterIP",
            &cluster_ip.into(),
            msg,
        ));
    }
    if cluster_ip == "None" && (ty == "NodePort" || ty == "LoadBalancer") {
        let msg = format!("may not be set to 'None' for {ty} services");
        errs.push(FieldError::invalid(
            "spec.clusterIP",
            &cluster_ip.into(),
            &msg,
        ));
    }
    for (i, ip) in arr_at(spec, "clusterIPs").iter().enumerate().skip(1) {
        let ip = ip.as_str().unwrap_or("");
        let msg = if ip == "None" {
            "'None' must be the first and only value"
        } else {
            VALID_IP
        };
        if ip == "None" || ip.parse::<IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                idx("spec.clusterIPs", i),
                &ip.into(),
                msg,
            ));
        }
    }
}

fn service_ports(ports: &[Value], ty: &str, errs: &mut Errors) {
    let require_name = ports.len() > 1;
    let mut names = HashSet::new();
    let mut seen = HashSet::new();
    let mut node_ports = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = idx("spec.ports", i);
        let name = str_at(port, "name");
        if name.is_empty() {
            if require_name {
                errs.push(FieldError::required(at(&p, "name"), ""));
            }
        } else {
            for msg in dns1123_label(name) {
                errs.push(FieldError::invalid(at(&p, "name"), &name.into(), &msg));
            }
            if !names.insert(name) {
                errs.push(FieldError::duplicate(at(&p, "name"), &name.into()));
            }
        }
        let number = int_at(port, "port");
        port_num_or_name(Some(&json!(number.unwrap_or(0))), &at(&p, "port"), errs);
        protocol(port, &at(&p, "protocol"), errs);
        port_num_or_name(port.get("targetPort"), &at(&p, "targetPort"), errs);
        let proto = str_at(port, "protocol");
        if !seen.insert((number, proto)) {
            errs.push(FieldError::duplicate(
                p.clone(),
                &json!({"port": number, "protocol": proto}),
            ));
        }
        let Some(node_port) = int_at(port, "nodePort").filter(|n| *n != 0) else {
            continue;
        };
        let node_port_path = at(&p, "nodePort");
        if ty != "NodePort" && ty != "LoadBalancer" {
            let msg = format!("may not be used when `type` is '{ty}'");
            errs.push(FieldError::forbidden(node_port_path, &msg));
            continue;
        }
        if !NODE_PORT_RANGE.contains(&node_port) {
            let msg =
                "provided port is not in the valid range. The range of valid ports is 30000-32767";
            errs.push(FieldError::invalid(
                node_port_path.clone(),
                &node_port.into(),
                msg,
            ));
        }
        if !node_ports.insert((node_port, proto)) {
            errs.push(FieldError::duplicate(node_port_path, &node_port.into()));
        }
    }
}

/// A Service's ClusterIP cannot change once allocated.
pub(super) fn service_update(spec: &Value, old: &Value, errs: &mut Errors) {
    let was = str_at(old, "clusterIP");
    let now = str_at(spec, "clusterIP");
    let external = |s: &Value| str_at(s, "type") == "ExternalName";
    if !was.is_empty() && !external(old) && !external(spec) && now != was {
        errs.push(FieldError::invalid(
            "spec.clusterIP",
            &now.into(),
            "field is immutable",
        ));
    }
}

/// Validates an EndpointSlice (its fields are top-level, there is no spec).
pub(super) fn endpoint_slice(obj: &Value, errs: &mut Errors) {
    let address_type = str_at(obj, "addressType");
    match address_type {
        "" => errs.push(FieldError::required("addressType", "")),
        "IPv4" | "IPv6" | "FQDN" => {}
        t => errs.push(FieldError::not_supported(
            "addressType",
            &t.into(),
            &["FQDN", "IPv4", "IPv6"],
        )),
    }
    for (i, endpoint) in arr_at(obj, "endpoints").iter().enumerate() {
        let path = at(&idx("endpoints", i), "addresses");
        let addresses = arr_at(endpoint, "addresses");
        if addresses.is_empty() {
            errs.push(FieldError::required(
                path.clone(),
                "must contain at least 1 address",
            ));
        }
        for (j, address) in addresses.iter().enumerate() {
            let address = address.as_str().unwrap_or("");
            let msg = match address_type {
                "IPv4" if address.parse::<Ipv4Addr>().is_err() => "must be a valid IPv4 address",
                "IPv6" if address.parse::<Ipv6Addr>().is_err() => "must be a valid IPv6 address",
                "FQDN" if !dns1123_subdomain(address).is_empty() => {
                    "should be a domain with at least two segments separated by dots"
                }
                _ => continue,
            };
            errs.push(FieldError::invalid(idx(&path, j), &address.into(), msg));
        }
    }
    let mut names = HashSet::new();
    for (i, port) in arr_at(obj, "ports").iter().enumerate() {
        let p = idx("ports", i);
        let name = str_at(port, "name");
        if !name.is_empty() {
            for msg in dns1123_label(name) {
                errs.push(FieldError::invalid(at(&p, "name"), &name.into(), &msg));
            }
        }
        if !names.insert(name) {
            errs.push(FieldError::duplicate(at(&p, "name"), &name.into()));
        }
        protocol(port, &at(&p, "protocol"), errs);
        if port.get("port").is_some_and(Value::is_number) {
            port_num_or_name(port.get("port"), &at(&p, "port"), errs);
        }
    }
}

/// An EndpointSlice's addressType cannot change.
pub(super) fn endpoint_slice_update(obj: &Value, old: &Value, errs: &mut Errors) {
    let now = str_at(obj, "addressType");
    if now != str_at(old, "addressType") {
        errs.push(FieldError::invalid(
            "addressType",
            &now.into(),
            "field is immutable",
        ));
    }
}
