//! Service address allocation done by the API server on create, as upstream:
//! ClusterIPs from the service CIDR and NodePorts from 30000-32767. The
//! allocated sets are rebuilt from stored Services at start, so they survive
//! restarts without a separate allocation table.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Mutex;

use ipnetwork::IpNetwork;
use rand::Rng;
use serde_json::Value;

use super::validation::FieldError;
use crate::store::{Store, StoreError};

/// The NodePort range, as upstream's default `--service-node-port-range`.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u16> = 30000..=32767;

/// What a Service holds, to be released when it goes away.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// ClusterIPs taken by this Service.
    pub ips: Vec<IpAddr>,
    /// NodePorts taken by this Service.
    pub node_ports: Vec<u16>,
}

/// Allocator of ClusterIPs and NodePorts.
pub struct ServiceIpam {
    cidr: IpNetwork,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    ips: HashSet<IpAddr>,
    ports: HashSet<u16>,
}

fn field(reason: &'static str, path: &str, message: String) -> FieldError {
    FieldError {
        reason,
        field: path.to_string(),
        message,
    }
}

impl ServiceIpam {
    /// The address of the `kubernetes` Service: the first in the range.
    pub fn kubernetes_ip(cidr: &IpNetwork) -> Option<IpAddr> {
        nth(cidr, 1)
    }

    /// Builds the allocator from every stored Service.
    pub async fn load(cidr: IpNetwork, store: &dyn Store) -> Result<Self, StoreError> {
        let mut state = State::default();
        let list = store.list("/registry/services/", None, 0).await?;
        for kv in list.items {
            if let Ok(svc) = serde_json::from_slice::<Value>(&kv.value) {
                let a = allocation_of(&svc);
                state.ips.extend(a.ips);
                state.ports.extend(a.node_ports);
            }
        }
        Ok(ServiceIpam {
            cidr,
            state: Mutex::new(state),
        })
    }

    /// Fills `spec.clusterIP(s)` and missing NodePorts of a new Service,
    /// reserving them. On error nothing stays reserved.
    pub fn allocate(&self, svc: &mut Value) -> Result<Allocation, Vec<FieldError>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let spec = match svc.get_mut("spec").and_then(Value::as_object_mut) {
            Some(s) => s,
            None => return Ok(Allocation::default()),
        };
        let svc_type = spec
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        let mut taken = Allocation::default();
        let mut errors = Vec::new();
        if svc_type != "ExternalName" {
            let requested = spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            match requested.as_str() {
                "None" => {
                    spec.insert("clusterIPs".into(), serde_json::json!(["None"]));
                }
                "" => match self.random_free_ip(&state) {
                    Some(ip) => taken.ips.push(ip),
                    None => errors.push(field(
                        "FieldValueInvalid",
                        "spec.clusterIPs",
                        format!("failed to allocate IP: range {} is full", self.cidr),
                    )),
                },
                text => match text.parse::<IpAddr>() {
                    Ok(ip) if !self.cidr.contains(ip) => errors.push(field(
                        "FieldValueInvalid",
                        "spec.clusterIPs",
                        format!("Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}", self.cidr),
                    )),
                    Ok(ip) if state.ips.contains(&ip) => errors.push(field(
                        "FieldValueInvalid",
                        "spec.clusterIPs",
                        format!("Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: provided IP is already allocated"),
                    )),
                    Ok(ip) => taken.ips.push(ip),
                    Err(_) => errors.push(field(
                        "FieldValueInvalid",
                        "spec.clusterIPs",
                        format!("Invalid value: \"{text}\": must be a valid IP address or \"None\""),
                    )),
                },
            }
        }
        if let Some(ip) = taken.ips.first() {
            spec.insert("clusterIP".into(), Value::String(ip.to_string()));
            spec.insert("clusterIPs".into(), serde_json::json!([ip.to_string()]));
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            spec.insert("ipFamilies".into(), serde_json::json!([family]));
            spec.entry("ipFamilyPolicy")
                .or_insert_with(|| Value::String("SingleStack".into()));
        }
        if svc_type == "NodePort" || svc_type == "LoadBalancer" {
            let mut local: HashSet<u16> = HashSet::new();
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for (i, port) in ports.iter_mut().enumerate() {
                    let path = format!("spec.ports[{i}].nodePort");
                    let want = port.get("nodePort").and_then(Value::as_u64).unwrap_or(0);
                    if want == 0 {
                        match random_free_port(&state, &local) {
                            Some(p) => {
                                local.insert(p);
                                port["nodePort"] = Value::from(p);
                            }
                            None => errors.push(field(
                                "FieldValueInvalid",
                                &path,
                                "failed to allocate a node port: range is full".into(),
                            )),
                        }
                    } else {
                        let p = u16::try_from(want)
                            .ok()
                            .filter(|p| NODE_PORT_RANGE.contains(p));
                        match p {
                            None => errors.push(field(
                                "FieldValueInvalid",
                                &path,
                                format!("Invalid value: {want}: provided port is not in the valid range. The range of valid ports is 30000-32767"),
                            )),
                            Some(p) if state.ports.contains(&p) => errors.push(field(
                                "FieldValueInvalid",
                                &path,
                                format!("Invalid value: {p}: provided port is already allocated"),
                            )),
                            Some(p) => {
                                local.insert(p);
                            }
                        }
                    }
                }
            }
            taken.node_ports = local.into_iter().collect();
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        state.ips.extend(taken.ips.iter().copied());
        state.ports.extend(taken.node_ports.iter().copied());
        Ok(taken)
    }

    /// Returns addresses and ports to the pool.
    pub fn release(&self, a: &Allocation) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for ip in &a.ips {
            state.ips.remove(ip);
        }
        for p in &a.node_ports {
            state.ports.remove(p);
        }
    }

    fn random_free_ip(&self, state: &State) -> Option<IpAddr> {
        let size: u128 = match self.cidr {
            IpNetwork::V4(n) => 1u128 << (32 - n.prefix()),
            IpNetwork::V6(n) => 1u128 << (128 - n.prefix()).min(64),
        };
        // Skip the network address, the `kubernetes` address (offset 1) and
        // the last address; offset 10 is upstream's conventional DNS address
        // and is only handed out on request.
        let usable = size.checked_sub(3)?;
        let mut rng = rand::rng();
        let start = rng.random_range(0..usable.max(1));
        (0..usable.min(1 << 20))
            .map(|i| 2 + (start + i) % usable)
            .filter(|&off| off != 10)
            .filter_map(|off| nth(&self.cidr, off))
            .find(|ip| !state.ips.contains(ip))
    }
}

fn random_free_port(state: &State, local: &HashSet<u16>) -> Option<u16> {
    let span = u32::from(*NODE_PORT_RANGE.end() - *NODE_PORT_RANGE.start()) + 1;
    let start = rand::rng().random_range(0..span);
    (0..span)
        .map(|i| *NODE_PORT_RANGE.start() + ((start + i) % span) as u16)
        .find(|p| !state.ports.contains(p) && !local.contains(p))
}

/// The `n`th address of a network.
fn nth(cidr: &IpNetwork, n: u128) -> Option<IpAddr> {
    match cidr {
        IpNetwork::V4(net) => {
            let base = u32::from(net.network()) as u128;
            let ip = u32::try_from(base + n).ok()?;
            Some(IpAddr::from(std::net::Ipv4Addr::from(ip))).filter(|ip| cidr.contains(*ip))
        }
        IpNetwork::V6(net) => {
            let base = u128::from(net.network());
            Some(IpAddr::from(std::net::Ipv6Addr::from(base.checked_add(n)?)))
                .filter(|ip| cidr.contains(*ip))
        }
    }
}

/// The addresses and ports a stored Service holds.
pub fn allocation_of(svc: &Value) -> Allocation {
    let spec = &svc["spec"];
    let ips = spec["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&spec["clusterIP"]))
        .filter_map(|v| v.as_str()?.parse().ok())
        .collect::<HashSet<IpAddr>>()
        .into_iter()
        .collect();
    let node_ports = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| u16::try_from(p["nodePort"].as_u64()?).ok())
        .collect();
    Allocation { ips, node_ports }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ipam() -> ServiceIpam {
        ServiceIpam {
            cidr: "10.96.0.0/28".parse().unwrap(),
            state: Mutex::new(State::default()),
        }
    }

    #[test]
    fn allocates_distinct_ips_until_full_and_releases() {
        let ipam = ipam();
        let mut seen = HashSet::new();
        // /28 = 16 addresses: minus network, .1, .10 and the last = 12.
        for _ in 0..12 {
            let mut svc = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
            let a = ipam.allocate(&mut svc).unwrap();
            assert!(seen.insert(a.ips[0]));
            assert_eq!(svc["spec"]["clusterIP"], json!(a.ips[0].to_string()));
        }
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        let errs = ipam.allocate(&mut svc).unwrap_err();
        assert_eq!(errs[0].field, "spec.clusterIPs");
        let first = *seen.iter().next().unwrap();
        ipam.release(&Allocation {
            ips: vec![first],
            node_ports: vec![],
        });
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        assert_eq!(ipam.allocate(&mut svc).unwrap().ips, vec![first]);
    }

    #[test]
    fn requested_ip_must_be_free_and_in_range() {
        let ipam = ipam();
        let mut a = json!({"spec": {"clusterIP": "10.96.0.10"}});
        ipam.allocate(&mut a).unwrap();
        let mut b = json!({"spec": {"clusterIP": "10.96.0.10"}});
        assert!(ipam.allocate(&mut b).unwrap_err()[0]
            .message
            .contains("already allocated"));
        let mut c = json!({"spec": {"clusterIP": "10.97.0.1"}});
        assert!(ipam.allocate(&mut c).unwrap_err()[0]
            .message
            .contains("not in the valid range"));
        let mut headless = json!({"spec": {"clusterIP": "None"}});
        assert!(ipam.allocate(&mut headless).unwrap().ips.is_empty());
    }

    #[test]
    fn node_ports_are_allocated_for_nodeport_services() {
        let ipam = ipam();
        let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "nodePort": 30080}]}});
        let a = ipam.allocate(&mut svc).unwrap();
        assert_eq!(a.node_ports.len(), 2);
        let p = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
        assert!(NODE_PORT_RANGE.contains(&p));
        let mut dup =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}});
        assert!(ipam.allocate(&mut dup).is_err());
    }
}
