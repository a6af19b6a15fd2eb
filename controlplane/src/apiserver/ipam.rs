//! Service address allocation done by the API server on create and update, as upstream:
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

/// Reservations made for a write that is not stored yet.
#[must_use = "dropping a Pending returns its reservations; commit it once the write is stored"]
pub struct Pending<'a> {
    ipam: &'a ServiceIpam,
    /// Newly reserved: returned to the pool if the write fails.
    pub taken: Allocation,
    /// Held before, not any more: returned to the pool once the write succeeds.
    pub freed: Allocation,
}

impl Pending<'_> {
    /// The write is stored: keep the new reservations, free the old ones.
    pub fn commit(mut self) {
        self.taken = Allocation::default();
        self.ipam.release(&self.freed);
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.ipam.release(&self.taken);
    }
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

    /// The address of the `kube-dns` Service: the tenth in the range.
    pub fn dns_ip(cidr: &IpNetwork) -> Option<IpAddr> {
        nth(cidr, 10)
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
        let mut pending = self.reallocate(&Value::Null, svc)?;
        let taken = std::mem::take(&mut pending.taken);
        pending.commit();
        Ok(taken)
    }

    /// As upstream's Service update: reserves what `svc` newly needs (a
    /// NodePort for each port once the type becomes NodePort/LoadBalancer or
    /// a port is added, a ClusterIP when it stops being ExternalName) and
    /// notes what `old` held that `svc` no longer does. Requested values
    /// held by another Service are 422s naming the field. Nothing is freed
    /// until [`Pending::commit`]; dropping the result uncommitted returns
    /// the new reservations.
    pub fn reallocate(&self, old: &Value, svc: &mut Value) -> Result<Pending<'_>, Vec<FieldError>> {
        let held = allocation_of(old);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut taken = Allocation::default();
        let mut errors = Vec::new();
        let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(self.pending(taken, held));
        };
        let svc_type = spec
            .get("type")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .unwrap_or("ClusterIP")
            .to_string();
        if svc_type != "ExternalName" {
            self.cluster_ip(&state, &held, spec, &mut taken, &mut errors);
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
                                taken.node_ports.push(p);
                                port["nodePort"] = Value::from(p);
                            }
                            None => errors.push(field(
                                "FieldValueInvalid",
                                &path,
                                "failed to allocate a node port: range is full".into(),
                            )),
                        }
                        continue;
                    }
                    let p = u16::try_from(want)
                        .ok()
                        .filter(|p| NODE_PORT_RANGE.contains(p));
                    match p {
                        None => errors.push(field(
                            "FieldValueInvalid",
                            &path,
                            format!("Invalid value: {want}: provided port is not in the valid range. The range of valid ports is 30000-32767"),
                        )),
                        // Validation reports a port used twice in one Service.
                        Some(p) if !local.insert(p) => {}
                        Some(p) if held.node_ports.contains(&p) => {}
                        Some(p) if state.ports.contains(&p) => errors.push(field(
                            "FieldValueInvalid",
                            &path,
                            format!("Invalid value: {p}: provided port is already allocated"),
                        )),
                        Some(p) => taken.node_ports.push(p),
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        state.ips.extend(taken.ips.iter().copied());
        state.ports.extend(taken.node_ports.iter().copied());
        let now = allocation_of(svc);
        let freed = Allocation {
            ips: held
                .ips
                .into_iter()
                .filter(|ip| !now.ips.contains(ip))
                .collect(),
            node_ports: held
                .node_ports
                .into_iter()
                .filter(|p| !now.node_ports.contains(p))
                .collect(),
        };
        Ok(self.pending(taken, freed))
    }

    fn pending(&self, taken: Allocation, freed: Allocation) -> Pending<'_> {
        Pending {
            ipam: self,
            taken,
            freed,
        }
    }

    /// Keeps, reserves or picks the ClusterIP of a Service that needs one.
    fn cluster_ip(
        &self,
        state: &State,
        held: &Allocation,
        spec: &mut serde_json::Map<String, Value>,
        taken: &mut Allocation,
        errors: &mut Vec<FieldError>,
    ) {
        let requested = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match requested.as_str() {
            "None" => {
                spec.insert("clusterIPs".into(), serde_json::json!(["None"]));
            }
            "" => match self.random_free_ip(state) {
                Some(ip) => taken.ips.push(ip),
                None => errors.push(field(
                    "FieldValueInvalid",
                    "spec.clusterIPs",
                    format!("failed to allocate IP: range {} is full", self.cidr),
                )),
            },
            text => match text.parse::<IpAddr>() {
                Ok(ip) if held.ips.contains(&ip) => {}
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
        if let Some(ip) = taken.ips.first() {
            spec.insert("clusterIP".into(), Value::String(ip.to_string()));
            spec.insert("clusterIPs".into(), serde_json::json!([ip.to_string()]));
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            spec.insert("ipFamilies".into(), serde_json::json!([family]));
            spec.entry("ipFamilyPolicy")
                .or_insert_with(|| Value::String("SingleStack".into()));
        }
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

    fn taken_ports(ipam: &ServiceIpam) -> HashSet<u16> {
        ipam.state.lock().unwrap().ports.clone()
    }

    #[test]
    fn type_change_to_node_port_allocates_and_back_releases() {
        let ipam = ipam();
        let mut old = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        ipam.allocate(&mut old).unwrap();
        let mut new = old.clone();
        new["spec"]["type"] = json!("NodePort");
        let pending = ipam.reallocate(&old, &mut new).unwrap();
        let p = new["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
        assert!(NODE_PORT_RANGE.contains(&p));
        assert_eq!(pending.taken.node_ports, vec![p]);
        // The ClusterIP is kept, not re-reserved.
        assert!(pending.taken.ips.is_empty());
        assert_eq!(new["spec"]["clusterIP"], old["spec"]["clusterIP"]);
        pending.commit();
        assert!(taken_ports(&ipam).contains(&p));

        // Back to ClusterIP (the strategy dropped the nodePort): released on commit.
        let mut back = old.clone();
        let pending = ipam.reallocate(&new, &mut back).unwrap();
        assert_eq!(pending.freed.node_ports, vec![p]);
        assert!(taken_ports(&ipam).contains(&p), "freed only on commit");
        pending.commit();
        assert!(!taken_ports(&ipam).contains(&p));
    }

    #[test]
    fn added_port_gets_a_node_port_and_conflicts_name_the_field() {
        let ipam = ipam();
        let mut other =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30100}]}});
        ipam.allocate(&mut other).unwrap();
        let mut old =
            json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30200}]}});
        ipam.allocate(&mut old).unwrap();

        let mut new = old.clone();
        new["spec"]["ports"]
            .as_array_mut()
            .unwrap()
            .push(json!({"port": 81}));
        let pending = ipam.reallocate(&old, &mut new).unwrap();
        assert_eq!(new["spec"]["ports"][0]["nodePort"], json!(30200));
        let added = new["spec"]["ports"][1]["nodePort"].as_u64().unwrap() as u16;
        assert_eq!(pending.taken.node_ports, vec![added]);
        // Dropped uncommitted (the store write failed): the new port is returned.
        drop(pending);
        assert!(!taken_ports(&ipam).contains(&added));

        let mut clash = old.clone();
        clash["spec"]["ports"]
            .as_array_mut()
            .unwrap()
            .push(json!({"port": 81, "nodePort": 30100}));
        let errs = ipam.reallocate(&old, &mut clash).err().unwrap();
        assert_eq!(errs[0].field, "spec.ports[1].nodePort");
        assert!(
            errs[0].message.contains("already allocated"),
            "{}",
            errs[0].message
        );
    }
}
