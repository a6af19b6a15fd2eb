//! Service address allocation done by the API server on create and update, as upstream:
//! ClusterIPs from the service CIDR(s) and NodePorts from 30000-32767. The
//! allocated sets are rebuilt from stored Services at start, so they survive
//! restarts without a separate allocation table.
//!
//! A dual-stack cluster has one service CIDR per family (the first is the
//! primary). As upstream, a Service gets one ClusterIP per family it asks for
//! with `ipFamilies` / `ipFamilyPolicy`: SingleStack (the default) takes its
//! requested address's family or the primary one, PreferDualStack adds every
//! configured family, RequireDualStack needs two.

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
    /// One range per family, the primary first.
    cidrs: Vec<IpNetwork>,
    state: Mutex<State>,
}

/// An IP family as `spec.ipFamilies` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    fn of(ip: &IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    fn of_net(net: &IpNetwork) -> IpFamily {
        IpFamily::of(&net.ip())
    }

    fn name(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
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

    /// Builds the allocator for `cidrs` (the primary first, at most one per
    /// family) from every stored Service.
    pub async fn load(cidrs: Vec<IpNetwork>, store: &dyn Store) -> Result<Self, StoreError> {
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
            cidrs,
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

    fn cidr_of(&self, family: IpFamily) -> Option<&IpNetwork> {
        self.cidrs.iter().find(|c| IpFamily::of_net(c) == family)
    }

    /// The families a Service gets addresses of, in order: its `ipFamilies`
    /// (else the families of its requested addresses, else the primary), plus
    /// every other configured family unless it is SingleStack.
    fn families(
        &self,
        spec: &serde_json::Map<String, Value>,
        requested: &[IpAddr],
        updating: bool,
        errors: &mut Vec<FieldError>,
    ) -> Vec<IpFamily> {
        let policy = spec
            .get("ipFamilyPolicy")
            .and_then(Value::as_str)
            .unwrap_or("SingleStack");
        let mut families = Vec::new();
        let given = spec.get("ipFamilies").and_then(Value::as_array);
        for (i, f) in given.into_iter().flatten().enumerate() {
            match f.as_str() {
                Some("IPv4") => families.push(IpFamily::V4),
                Some("IPv6") => families.push(IpFamily::V6),
                _ => errors.push(field(
                    "FieldValueNotSupported",
                    &format!("spec.ipFamilies[{i}]"),
                    format!("Unsupported value: {f}: supported values: \"IPv4\", \"IPv6\""),
                )),
            }
        }
        if families.is_empty() {
            families = requested.iter().map(IpFamily::of).collect();
        }
        if families.is_empty() {
            families.extend(self.cidrs.first().map(IpFamily::of_net));
        }
        let primary = families.first().copied();
        if policy != "SingleStack" {
            for c in &self.cidrs {
                let f = IpFamily::of_net(c);
                if !families.contains(&f) {
                    families.push(f);
                }
            }
        }
        // PreferDualStack takes what the cluster has beyond its first family.
        if policy == "PreferDualStack" {
            families.retain(|f| Some(*f) == primary || self.cidr_of(*f).is_some());
        }
        if policy == "SingleStack" && families.len() > 1 {
            // A downgrade keeps the primary address (upstream trims on update).
            if updating {
                families.truncate(1);
            } else {
                errors.push(field(
                    "FieldValueInvalid",
                    "spec.ipFamilyPolicy",
                    "Invalid value: \"SingleStack\": must be RequireDualStack or PreferDualStack when multiple 'ipFamilies' are specified".into(),
                ));
            }
        }
        if policy == "RequireDualStack" && self.cidrs.len() < 2 {
            errors.push(field(
                "FieldValueInvalid",
                "spec.ipFamilyPolicy",
                "Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services".into(),
            ));
        }
        for (i, f) in families.iter().enumerate() {
            if self.cidr_of(*f).is_none() {
                errors.push(field(
                    "FieldValueInvalid",
                    &format!("spec.ipFamilies[{i}]"),
                    format!(
                        "Invalid value: \"{}\": not configured on this cluster",
                        f.name()
                    ),
                ));
            }
        }
        families
    }

    /// Keeps, reserves or picks the ClusterIP(s) of a Service that needs them.
    fn cluster_ip(
        &self,
        state: &State,
        held: &Allocation,
        spec: &mut serde_json::Map<String, Value>,
        taken: &mut Allocation,
        errors: &mut Vec<FieldError>,
    ) {
        let text = |v: &Value| v.as_str().unwrap_or("").to_string();
        let mut wanted: Vec<String> = spec
            .get("clusterIPs")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default();
        let single = spec.get("clusterIP").map(text).unwrap_or_default();
        if wanted.is_empty() && !single.is_empty() {
            wanted.push(single);
        }
        if wanted.first().map(String::as_str) == Some("None") {
            spec.insert("clusterIPs".into(), serde_json::json!(["None"]));
            return;
        }
        let before = errors.len();
        let mut requested = Vec::new();
        for t in &wanted {
            match t.parse::<IpAddr>() {
                Ok(ip) => requested.push(ip),
                Err(_) => errors.push(field(
                    "FieldValueInvalid",
                    "spec.clusterIPs",
                    format!("Invalid value: \"{t}\": must be a valid IP address or \"None\""),
                )),
            }
        }
        let families = self.families(spec, &requested, !held.ips.is_empty(), errors);
        if errors.len() > before {
            return;
        }
        let mut ips = Vec::new();
        for (i, family) in families.iter().enumerate() {
            let Some(cidr) = self.cidr_of(*family) else {
                continue;
            };
            let ip = match requested.get(i) {
                None => match self.random_free_ip(state, cidr) {
                    Some(ip) => {
                        taken.ips.push(ip);
                        ip
                    }
                    None => {
                        errors.push(field(
                            "FieldValueInvalid",
                            "spec.clusterIPs",
                            format!("failed to allocate IP: range {cidr} is full"),
                        ));
                        continue;
                    }
                },
                Some(ip) if held.ips.contains(ip) => *ip,
                Some(ip) if !cidr.contains(*ip) => {
                    let valid = if IpFamily::of(ip) == *family {
                        cidr.to_string()
                    } else {
                        format!("{cidr} (ipFamilies[{i}] is {})", family.name())
                    };
                    errors.push(field(
                        "FieldValueInvalid",
                        "spec.clusterIPs",
                        format!("Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {valid}"),
                    ));
                    continue;
                }
                Some(ip) if state.ips.contains(ip) => {
                    errors.push(field(
                        "FieldValueInvalid",
                        "spec.clusterIPs",
                        format!("Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: provided IP is already allocated"),
                    ));
                    continue;
                }
                Some(ip) => {
                    taken.ips.push(*ip);
                    *ip
                }
            };
            ips.push(ip);
        }
        if errors.len() > before {
            return;
        }
        let Some(first) = ips.first() else {
            return;
        };
        let names: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        let families: Vec<&str> = ips.iter().map(|ip| IpFamily::of(ip).name()).collect();
        spec.insert("clusterIP".into(), Value::String(first.to_string()));
        spec.insert("clusterIPs".into(), serde_json::json!(names));
        spec.insert("ipFamilies".into(), serde_json::json!(families));
        spec.entry("ipFamilyPolicy")
            .or_insert_with(|| Value::String("SingleStack".into()));
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

    fn random_free_ip(&self, state: &State, cidr: &IpNetwork) -> Option<IpAddr> {
        let size: u128 = match cidr {
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
            .filter_map(|off| nth(cidr, off))
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
mod tests;
