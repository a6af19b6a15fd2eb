//! The Service parts of the update strategy, as upstream's
//! pkg/registry/core/service: which allocated values (ClusterIPs, NodePorts,
//! healthCheckNodePort) an update carries over from the stored object, and
//! which it drops when the type no longer needs them. The allocator
//! (`ipam.rs`) then reserves and releases to match.

use serde_json::{json, Value};

/// The Service type a spec means (absent is ClusterIP, the default).
fn service_type(spec: &Value) -> &str {
    spec["type"]
        .as_str()
        .filter(|t| !t.is_empty())
        .unwrap_or("ClusterIP")
}

fn needs_cluster_ip(spec: &Value) -> bool {
    service_type(spec) != "ExternalName"
}

fn needs_node_ports(spec: &Value) -> bool {
    match service_type(spec) {
        "NodePort" => true,
        "LoadBalancer" => spec["allocateLoadBalancerNodePorts"] != json!(false),
        _ => false,
    }
}

fn needs_health_check_port(spec: &Value) -> bool {
    service_type(spec) == "LoadBalancer" && spec["externalTrafficPolicy"] == json!("Local")
}

/// The `nodePort` of each port, in order (0 when unset).
fn node_ports(spec: &Value) -> Vec<u64> {
    spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["nodePort"].as_u64().unwrap_or(0))
        .collect()
}

/// As upstream's Service update (patchAllocatedValues): a replacement that
/// leaves out the allocated ClusterIP(s), NodePorts or healthCheckNodePort
/// keeps the old ones while the new type still needs them (so `kubectl
/// replace` of the original manifest works).
pub fn keep_allocations(old: &Value, new: &mut Value) {
    let (o, n) = (&old["spec"], &mut new["spec"]);
    if !n.is_object() {
        return;
    }
    let missing = |v: &Value| v.is_null() || *v == json!("") || *v == json!(0);
    if needs_cluster_ip(o) && needs_cluster_ip(n) {
        for key in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if missing(&n[key]) && !o[key].is_null() {
                n[key] = o[key].clone();
            }
        }
    }
    if needs_health_check_port(o)
        && needs_health_check_port(n)
        && missing(&n["healthCheckNodePort"])
    {
        n["healthCheckNodePort"] = o["healthCheckNodePort"].clone();
    }
    if !(needs_node_ports(o) && needs_node_ports(n)) {
        return;
    }
    let old_ports = o["ports"].as_array().cloned().unwrap_or_default();
    let in_use = node_ports(n);
    if let Some(ports) = n["ports"].as_array_mut() {
        for p in ports.iter_mut().filter(|p| missing(&p["nodePort"])) {
            let proto = |v: &Value| v["protocol"].as_str().unwrap_or("TCP").to_string();
            let prev = old_ports
                .iter()
                .find(|q| q["port"] == p["port"] && proto(q) == proto(p))
                .and_then(|q| q["nodePort"].as_u64())
                // A port the request gives another port keeps it.
                .filter(|prev| !in_use.contains(prev));
            if let Some(prev) = prev {
                p["nodePort"] = json!(prev);
            }
        }
    }
}

/// As upstream's dropTypeDependentFields: when the type changes to one that
/// no longer needs a ClusterIP, NodePorts or a healthCheckNodePort, values
/// the request merely carried over from the old object are dropped (and
/// released by the allocator); values the user changed stay, for
/// validation to refuse.
pub fn drop_type_dependent_fields(old: &Value, new: &mut Value) {
    let (o, n) = (&old["spec"], &mut new["spec"]);
    let Some(spec) = n.as_object() else {
        return;
    };
    let same = |key: &str| spec.get(key).unwrap_or(&Value::Null) == &o[key];
    let mut drop = Vec::new();
    if needs_cluster_ip(o) && !needs_cluster_ip(n) {
        if same("clusterIP") && same("clusterIPs") {
            drop.extend(["clusterIP", "clusterIPs"]);
        }
        drop.extend(
            ["ipFamilies", "ipFamilyPolicy"]
                .into_iter()
                .filter(|k| same(k)),
        );
    }
    if needs_health_check_port(o) && !needs_health_check_port(n) && same("healthCheckNodePort") {
        drop.push("healthCheckNodePort");
    }
    let spec = n.as_object_mut().expect("checked to be an object above");
    for key in drop {
        spec.remove(key);
    }
    if needs_node_ports(o) && !needs_node_ports(n) && node_ports(o) == node_ports(n) {
        for p in n["ports"].as_array_mut().into_iter().flatten() {
            if let Some(p) = p.as_object_mut() {
                p.remove("nodePort");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(spec: Value) -> Value {
        json!({"spec": spec})
    }

    #[test]
    fn node_port_to_cluster_ip_drops_carried_node_ports_only() {
        let old = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.5",
            "ports": [{"port": 80, "nodePort": 30080}]}));
        // A patch of just the type carries the old nodePort along: dropped.
        let mut patched = old.clone();
        patched["spec"]["type"] = json!("ClusterIP");
        keep_allocations(&old, &mut patched);
        drop_type_dependent_fields(&old, &mut patched);
        assert_eq!(patched["spec"]["ports"], json!([{"port": 80}]));
        assert_eq!(patched["spec"]["clusterIP"], "10.96.0.5");
        // A nodePort the user changed stays, for validation to refuse.
        let mut changed = patched.clone();
        changed["spec"]["ports"][0]["nodePort"] = json!(30081);
        drop_type_dependent_fields(&old, &mut changed);
        assert_eq!(changed["spec"]["ports"][0]["nodePort"], json!(30081));
    }

    #[test]
    fn replace_keeps_node_ports_while_the_type_needs_them() {
        let old = svc(json!({"type": "NodePort", "clusterIP": "10.96.0.5",
            "ports": [{"port": 80, "nodePort": 30080}]}));
        let mut replaced =
            svc(json!({"type": "LoadBalancer", "ports": [{"port": 80}, {"port": 81}]}));
        keep_allocations(&old, &mut replaced);
        assert_eq!(replaced["spec"]["ports"][0]["nodePort"], json!(30080));
        assert!(replaced["spec"]["ports"][1].get("nodePort").is_none());
        assert_eq!(replaced["spec"]["clusterIP"], "10.96.0.5");
        // Without a type the default ClusterIP needs no nodePorts.
        let mut untyped = svc(json!({"ports": [{"port": 80}]}));
        keep_allocations(&old, &mut untyped);
        assert!(untyped["spec"]["ports"][0].get("nodePort").is_none());
        assert_eq!(untyped["spec"]["clusterIP"], "10.96.0.5");
    }

    #[test]
    fn to_external_name_drops_the_carried_cluster_ip() {
        let old = svc(json!({"type": "ClusterIP", "clusterIP": "10.96.0.5",
            "clusterIPs": ["10.96.0.5"], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "ports": [{"port": 80}]}));
        let mut new = old.clone();
        new["spec"]["type"] = json!("ExternalName");
        new["spec"]["externalName"] = json!("example.com");
        drop_type_dependent_fields(&old, &mut new);
        for key in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            assert!(new["spec"].get(key).is_none(), "{key} in {new}");
        }
    }
}
