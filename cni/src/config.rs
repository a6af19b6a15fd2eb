//! The network configuration read from stdin: parsed strictly (an unknown key
//! is an error, not a silent default), validated, and turned into typed values
//! the rest of the plugin can trust. Every key is documented in `cni/README.md`.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use crate::errors::{CniError, Code};
use crate::result::{CniResult, Dns};
use crate::version::CniVersion;

/// Bridge used when the config names none.
pub const DEFAULT_BRIDGE: &str = "skiff0";
/// Where the built-in IPAM keeps its per-network state by default.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/skiff";

/// A validated network configuration.
#[derive(Clone, Debug)]
pub struct NetConf {
    /// The spec version results and errors are printed in.
    pub cni_version: CniVersion,
    /// Network name; also names the IPAM store and tags host objects.
    pub name: String,
    /// Plugin type (the executable name), usually `skiff`.
    pub plugin_type: String,
    /// Node bridge name.
    pub bridge: String,
    /// MTU for the bridge and both veth ends; kernel default when absent.
    pub mtu: Option<u32>,
    /// Masquerade pod traffic that leaves the cluster CIDRs.
    pub ip_masq: bool,
    /// Hairpin mode on the host-side bridge port.
    pub hairpin_mode: bool,
    /// Add `0.0.0.0/0` / `::/0` via the gateway in the pod.
    pub is_default_gateway: bool,
    /// Destinations not masqueraded (at most one per family).
    pub cluster_cidrs: Vec<IpNetwork>,
    /// Address management.
    pub ipam: Ipam,
    /// DNS settings copied into the result.
    pub dns: Dns,
    /// The previous plugin's (or previous ADD's) result.
    pub prev_result: Option<CniResult>,
    /// GC: attachments that must survive.
    pub valid_attachments: Option<Vec<AttachmentId>>,
    /// Static addresses requested by runtimeConfig `ips` (the `ips`
    /// capability) or `args.cni.ips`.
    pub requested_ips: Vec<IpAddr>,
    /// The config exactly as received, handed to a delegated IPAM plugin.
    pub raw: Vec<u8>,
}

/// A (container, interface) pair, as GC's `cni.dev/valid-attachments` lists them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentId {
    /// Container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name inside the container.
    pub ifname: String,
}

/// How addresses are managed.
#[derive(Clone, Debug)]
pub enum Ipam {
    /// The built-in allocator (`"type": "skiff"`).
    Builtin(BuiltinIpam),
    /// Another IPAM plugin executed from `CNI_PATH`.
    Delegate {
        /// Its executable name.
        plugin: String,
        /// Where skiff keeps its ledger of delegated attachments: the ipam
        /// section's `dataDir` if it has one, else skiff's default.
        data_dir: PathBuf,
    },
}

/// Built-in IPAM settings (host-local's format).
#[derive(Clone, Debug)]
pub struct BuiltinIpam {
    /// One address is allocated from each range set.
    pub range_sets: Vec<RangeSet>,
    /// Routes to install in the pod.
    pub routes: Vec<RouteConf>,
    /// Root of the per-network state directories.
    pub data_dir: PathBuf,
}

/// Ranges of one family; one address is allocated from the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet(pub Vec<Range>);

/// A range of allocatable addresses inside a subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    /// The subnet (network address and prefix).
    pub subnet: IpNetwork,
    /// First allocatable address.
    pub start: IpAddr,
    /// Last allocatable address.
    pub end: IpAddr,
    /// The gateway, held by the bridge and never allocated.
    pub gateway: IpAddr,
}

/// A route from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConf {
    /// Destination.
    pub dst: IpNetwork,
    /// Next hop; the range set's gateway when absent.
    pub gw: Option<IpAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    bridge: Option<String>,
    mtu: Option<u32>,
    ip_masq: Option<bool>,
    hairpin_mode: Option<bool>,
    is_default_gateway: Option<bool>,
    #[serde(rename = "clusterCIDRs")]
    cluster_cidrs: Option<Vec<String>>,
    ipam: Option<Value>,
    dns: Option<Dns>,
    // Keys a runtime adds for every plugin; skiff reads prevResult and the GC list.
    args: Option<Value>,
    runtime_config: Option<Value>,
    #[serde(rename = "capabilities")]
    _capabilities: Option<Value>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<AttachmentId>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type")]
    _type: String,
    ranges: Option<Vec<Vec<RawRange>>>,
    routes: Option<Vec<RawRoute>>,
    data_dir: Option<String>,
    // host-local's older single-range form.
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRange {
    subnet: String,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    dst: String,
    gw: Option<String>,
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidConfig, msg)
}

/// Reads just `cniVersion` from stdin, for printing errors in the right version.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

impl NetConf {
    /// Parses and validates a network config.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                Code::Decode,
                format!("the network config on stdin is not valid JSON: {e}"),
            )
        })?;
        if !value.is_object() {
            return Err(CniError::new(
                Code::Decode,
                "the network config on stdin must be a JSON object",
            ));
        }
        let raw: RawConf = strict("", value)?;
        let version = raw.cni_version.as_deref().ok_or_else(|| {
            invalid("the network config has no cniVersion; add e.g. \"cniVersion\": \"1.1.0\"")
        })?;
        let cni_version = CniVersion::parse(version)?;
        let name = raw
            .name
            .ok_or_else(|| invalid("the network config has no name"))?;
        if !valid_name(&name) {
            return Err(invalid(format!(
                "network name {name:?} is invalid: start with a letter or digit, then use letters, digits, '_', '.' or '-'"
            )));
        }
        let plugin_type = raw
            .plugin_type
            .ok_or_else(|| invalid("the network config has no type"))?;
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        if let Err(why) = check_ifname(&bridge) {
            return Err(invalid(format!("bridge name {bridge:?} is invalid: {why}")));
        }
        let ipam = match raw.ipam {
            None => return Err(invalid("the network config has no ipam section; add e.g. \"ipam\": {\"type\": \"skiff\", \"ranges\": [[{\"subnet\": \"10.244.1.0/24\"}]]}")),
            Some(v) => parse_ipam(v)?,
        };
        let mut cluster_cidrs: Vec<IpNetwork> = Vec::new();
        for c in raw.cluster_cidrs.unwrap_or_default() {
            let net = parse_subnet("clusterCIDRs", &c)?;
            if cluster_cidrs.iter().any(|o| o.is_ipv4() == net.is_ipv4()) {
                return Err(invalid(
                    "clusterCIDRs may hold at most one IPv4 and one IPv6 CIDR",
                ));
            }
            cluster_cidrs.push(net);
        }
        if let Some(mtu) = raw.mtu {
            let has_v6 = match &ipam {
                Ipam::Builtin(b) => b.range_sets.iter().any(|s| s.0[0].subnet.is_ipv6()),
                Ipam::Delegate { .. } => false,
            };
            let min = if has_v6 { 1280 } else { 68 };
            if !(min..=65535).contains(&mtu) {
                return Err(invalid(format!(
                    "mtu {mtu} is out of range: use {min}..=65535"
                )));
            }
        }
        let prev_result = raw
            .prev_result
            .map(|v| CniResult::from_json(&v))
            .transpose()
            .map_err(|e| invalid(format!("prevResult is not a CNI result: {e}")))?;
        let mut requested_ips = requested_ips_of(
            "runtimeConfig.ips",
            raw.runtime_config.as_ref().and_then(|v| v.get("ips")),
        )?;
        requested_ips.extend(requested_ips_of(
            "args.cni.ips",
            raw.args
                .as_ref()
                .and_then(|v| v.get("cni"))
                .and_then(|v| v.get("ips")),
        )?);
        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            bridge,
            mtu: raw.mtu,
            ip_masq: raw.ip_masq.unwrap_or(false),
            hairpin_mode: raw.hairpin_mode.unwrap_or(false),
            is_default_gateway: raw.is_default_gateway.unwrap_or(false),
            cluster_cidrs,
            ipam,
            dns: raw.dns.unwrap_or_default(),
            prev_result,
            valid_attachments: raw.valid_attachments,
            requested_ips,
            raw: stdin.to_vec(),
        })
    }

    /// The CIDR of `addr`'s family that masquerading leaves alone.
    pub fn masq_exclude(&self, addr: &IpNetwork) -> IpNetwork {
        self.cluster_cidrs
            .iter()
            .find(|c| c.is_ipv4() == addr.is_ipv4())
            .copied()
            .unwrap_or_else(|| IpNetwork::new(addr.network(), addr.prefix()).unwrap_or(*addr))
    }
}

/// Deserializes `value` strictly, mapping unknown keys to code 2 and other
/// mismatches to code 7, both naming the offending path.
fn strict<T: for<'de> Deserialize<'de>>(prefix: &str, value: Value) -> Result<T, CniError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let at = match (prefix.is_empty(), path.as_str()) {
            (true, ".") => "the network config".to_string(),
            (true, p) => format!("network config key {p}"),
            (false, ".") => prefix.to_string(),
            (false, p) => format!("{prefix}.{p}"),
        };
        if inner.starts_with("unknown field") {
            CniError::new(
                Code::UnsupportedField,
                format!(
                    "{at}: {inner}; remove it or fix its spelling (cni/README.md lists every key)"
                ),
            )
        } else {
            invalid(format!("{at}: {inner}"))
        }
    })
}

fn parse_ipam(v: Value) -> Result<Ipam, CniError> {
    let ty = v
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid("ipam.type is missing: use \"skiff\" or the name of an IPAM plugin in CNI_PATH")
        })?
        .to_string();
    if ty != "skiff" {
        if ty.is_empty() || ty.contains('/') || ty.starts_with('.') {
            return Err(invalid(format!(
                "ipam.type {ty:?} is not a plugin name: it must be a file name in CNI_PATH"
            )));
        }
        let data_dir = v
            .get("dataDir")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .unwrap_or(DEFAULT_DATA_DIR);
        return Ok(Ipam::Delegate {
            plugin: ty,
            data_dir: PathBuf::from(data_dir),
        });
    }
    let raw: RawIpam = strict("ipam", v)?;
    let mut raw_sets = raw.ranges.unwrap_or_default();
    if let Some(subnet) = raw.subnet {
        raw_sets.push(vec![RawRange {
            subnet,
            range_start: raw.range_start,
            range_end: raw.range_end,
            gateway: raw.gateway,
        }]);
    } else if raw.range_start.is_some() || raw.range_end.is_some() || raw.gateway.is_some() {
        return Err(invalid(
            "ipam.rangeStart/rangeEnd/gateway need ipam.subnet; or put them in ipam.ranges",
        ));
    }
    if raw_sets.is_empty() {
        return Err(invalid("ipam.ranges is empty: add at least one range, e.g. [[{\"subnet\": \"10.244.1.0/24\"}]]"));
    }
    let mut range_sets = Vec::new();
    for (i, set) in raw_sets.into_iter().enumerate() {
        if set.is_empty() {
            return Err(invalid(format!("ipam.ranges[{i}] is empty")));
        }
        let mut ranges: Vec<Range> = Vec::new();
        for (j, r) in set.into_iter().enumerate() {
            let range = parse_range(&format!("ipam.ranges[{i}][{j}]"), r)?;
            if let Some(first) = ranges.first() {
                if first.subnet.is_ipv4() != range.subnet.is_ipv4() {
                    return Err(invalid(format!(
                        "ipam.ranges[{i}] mixes IPv4 and IPv6; put each family in its own range set"
                    )));
                }
            }
            ranges.push(range);
        }
        range_sets.push(RangeSet(ranges));
    }
    let all: Vec<&Range> = range_sets.iter().flat_map(|s| s.0.iter()).collect();
    for (a, ra) in all.iter().enumerate() {
        for rb in &all[a + 1..] {
            if ra.overlaps(rb) {
                return Err(invalid(format!(
                    "ipam ranges {}-{} and {}-{} overlap",
                    ra.start, ra.end, rb.start, rb.end
                )));
            }
        }
    }
    let mut routes = Vec::new();
    for (i, r) in raw.routes.unwrap_or_default().into_iter().enumerate() {
        let field = format!("ipam.routes[{i}].dst");
        let dst = parse_subnet(&field, &r.dst)?;
        if !range_sets
            .iter()
            .any(|s| s.0[0].subnet.is_ipv4() == dst.is_ipv4())
        {
            return Err(invalid(format!(
                "{field} {dst} has no range of its family to route from; add a range or drop the route"
            )));
        }
        let gw =
            r.gw.map(|g| parse_ip(&format!("ipam.routes[{i}].gw"), &g))
                .transpose()?;
        if gw.is_some_and(|g| g.is_ipv4() != dst.is_ipv4()) {
            return Err(invalid(format!(
                "ipam.routes[{i}]: gw and dst are of different families"
            )));
        }
        routes.push(RouteConf { dst, gw });
    }
    Ok(Ipam::Builtin(BuiltinIpam {
        range_sets,
        routes,
        data_dir: PathBuf::from(raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.to_string())),
    }))
}

fn parse_range(field: &str, r: RawRange) -> Result<Range, CniError> {
    let subnet = parse_subnet(&format!("{field}.subnet"), &r.subnet)?;
    let (max_prefix, v4) = if subnet.is_ipv4() {
        (30, true)
    } else {
        (126, false)
    };
    if subnet.prefix() > max_prefix {
        return Err(invalid(format!(
            "{field}.subnet {subnet} is too small: use a /{max_prefix} or larger so it holds a gateway and a pod"
        )));
    }
    let first = crate::ipam::add(subnet.network(), 1);
    let last = if v4 {
        crate::ipam::add(subnet.broadcast(), -1)
    } else {
        crate::ipam::last_addr(&subnet)
    };
    let inside = |what: &str, ip: IpAddr| -> Result<IpAddr, CniError> {
        if ip < first || ip > last {
            Err(invalid(format!(
                "{field}.{what} {ip} is outside the usable addresses {first}-{last} of {subnet}"
            )))
        } else {
            Ok(ip)
        }
    };
    let get = |what: &str, v: Option<String>, default: IpAddr| -> Result<IpAddr, CniError> {
        match v {
            Some(s) => inside(what, parse_ip(&format!("{field}.{what}"), &s)?),
            None => Ok(default),
        }
    };
    let start = get("rangeStart", r.range_start, first)?;
    let end = get("rangeEnd", r.range_end, last)?;
    let gateway = get("gateway", r.gateway, first)?;
    if start > end {
        return Err(invalid(format!(
            "{field}: rangeStart {start} is after rangeEnd {end}"
        )));
    }
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

fn parse_subnet(field: &str, s: &str) -> Result<IpNetwork, CniError> {
    let net: IpNetwork = s.parse().map_err(|_| {
        invalid(format!(
            "{field} {s:?} is not a valid subnet: write it in CIDR form such as 10.244.1.0/24 or fd00:10:244:1::/64"
        ))
    })?;
    IpNetwork::new(net.network(), net.prefix()).map_err(|e| invalid(format!("{field} {s:?}: {e}")))
}

/// Parses a list of static address requests (`"10.244.1.50/24"` or
/// `"10.244.1.50"`; the prefix length comes from the range's subnet).
fn requested_ips_of(field: &str, v: Option<&Value>) -> Result<Vec<IpAddr>, CniError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let list = v
        .as_array()
        .ok_or_else(|| invalid(format!("{field} must be a list of addresses")))?;
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{field}[{i}]");
            let s = item
                .as_str()
                .ok_or_else(|| invalid(format!("{at} must be a string such as \"10.244.1.50/24\"")))?;
            match s.parse::<IpNetwork>() {
                Ok(net) => Ok(net.ip()),
                Err(_) => Err(invalid(format!(
                    "{at} {s:?} is not an IP address (write e.g. \"10.244.1.50/24\" or \"10.244.1.50\")"
                ))),
            }
        })
        .collect()
}

fn parse_ip(field: &str, s: &str) -> Result<IpAddr, CniError> {
    s.parse()
        .map_err(|_| invalid(format!("{field} {s:?} is not an IP address")))
}

impl Range {
    /// Whether `ip` is allocatable in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip >= self.start && ip <= self.end && ip.is_ipv4() == self.start.is_ipv4()
    }

    fn overlaps(&self, other: &Range) -> bool {
        self.start.is_ipv4() == other.start.is_ipv4()
            && self.start <= other.end
            && other.start <= self.end
    }
}

/// Whether `name` is a valid network name per the spec.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks a Linux interface name; returns why it is invalid.
pub fn check_ifname(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 15 {
        return Err("Linux interface names are at most 15 bytes");
    }
    if name == "." || name == ".." {
        return Err("it cannot be . or ..");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("it cannot contain '/', ':' or whitespace");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
