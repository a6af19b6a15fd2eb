//! The CNI result (interfaces, ips, routes, dns): one internal form, printed
//! in the shape of whichever spec version the runtime asked for, and parsed
//! back from any of them (a `prevResult` may come from another plugin).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::version::CniVersion;

/// An interface the plugin created or found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// Hardware address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// MTU (1.1.0 only).
    pub mtu: Option<u32>,
    /// Path of the network namespace holding it; `None` for host interfaces.
    pub sandbox: Option<String>,
}

/// An address assigned to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with the prefix length of its subnet, e.g. `10.244.1.5/24`.
    pub address: IpNetwork,
    /// Default gateway for this address's subnet.
    pub gateway: Option<IpAddr>,
    /// Index into [`CniResult::interfaces`].
    pub interface: Option<usize>,
}

/// A route the plugin installed in the sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub dst: IpNetwork,
    /// Next hop; absent means on-link or the family's default gateway.
    pub gw: Option<IpAddr>,
    /// Route MTU (1.1.0 only).
    pub mtu: Option<u32>,
    /// Route priority / metric (1.1.0 only).
    pub priority: Option<u32>,
}

/// DNS settings a runtime may write into the pod's resolv.conf.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Name server addresses, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains, in priority order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// A CNI result in skiff's internal (1.1.0-shaped) form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces, referenced by index from `ips`.
    pub interfaces: Vec<Interface>,
    /// Assigned addresses.
    pub ips: Vec<IpConfig>,
    /// Routes in the sandbox.
    pub routes: Vec<Route>,
    /// DNS settings.
    pub dns: Dns,
}

/// Why a result could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// The JSON does not have the result's shape.
    #[error("the result is not a CNI result: {0}")]
    Shape(#[from] serde_json::Error),
    /// An address or prefix does not parse.
    #[error("the result has an invalid address {value:?} in {field}")]
    Address {
        /// Which field.
        field: &'static str,
        /// The offending value.
        value: String,
    },
}

impl CniResult {
    /// Prints this result as the `version` runtime expects it.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if !i.mac.is_empty() {
                    o.insert("mac".into(), json!(i.mac));
                }
                if let (true, Some(mtu)) = (version.is_1_1(), i.mtu) {
                    o.insert("mtu".into(), json!(mtu));
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.has_ip_version_field() {
                    let v = if ip.address.is_ipv4() { "4" } else { "6" };
                    o.insert("version".into(), json!(v));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                Value::Object(o)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    o.insert("gw".into(), json!(gw.to_string()));
                }
                if version.is_1_1() {
                    if let Some(mtu) = r.mtu {
                        o.insert("mtu".into(), json!(mtu));
                    }
                    if let Some(p) = r.priority {
                        o.insert("priority".into(), json!(p));
                    }
                }
                Value::Object(o)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        out.insert("interfaces".into(), Value::Array(interfaces));
        out.insert("ips".into(), Value::Array(ips));
        if !routes.is_empty() {
            out.insert("routes".into(), Value::Array(routes));
        }
        if !self.dns.is_empty() {
            out.insert("dns".into(), json!(self.dns));
        }
        Value::Object(out)
    }

    /// Reads a result of any supported version (fields it does not know are ignored).
    pub fn from_json(v: &Value) -> Result<CniResult, ResultError> {
        let wire: WireResult = serde_json::from_value(v.clone())?;
        let interfaces = wire
            .interfaces
            .into_iter()
            .map(|i| Interface {
                name: i.name,
                mac: i.mac.unwrap_or_default(),
                mtu: i.mtu,
                sandbox: i.sandbox.filter(|s| !s.is_empty()),
            })
            .collect();
        let mut ips = Vec::new();
        for ip in wire.ips {
            ips.push(IpConfig {
                address: parse_net("ips[].address", &ip.address)?,
                gateway: ip
                    .gateway
                    .map(|g| parse_ip("ips[].gateway", &g))
                    .transpose()?,
                interface: ip.interface,
            });
        }
        let mut routes = Vec::new();
        for r in wire.routes {
            routes.push(Route {
                dst: parse_net("routes[].dst", &r.dst)?,
                gw: r.gw.map(|g| parse_ip("routes[].gw", &g)).transpose()?,
                mtu: r.mtu,
                priority: r.priority,
            });
        }
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns: wire.dns.map(Dns::from).unwrap_or_default(),
        })
    }
}

fn parse_net(field: &'static str, s: &str) -> Result<IpNetwork, ResultError> {
    s.parse().map_err(|_| ResultError::Address {
        field,
        value: s.to_string(),
    })
}

fn parse_ip(field: &'static str, s: &str) -> Result<IpAddr, ResultError> {
    s.parse().map_err(|_| ResultError::Address {
        field,
        value: s.to_string(),
    })
}

/// The wire shape shared by every version, read leniently.
#[derive(Deserialize)]
struct WireResult {
    #[serde(default)]
    interfaces: Vec<WireInterface>,
    #[serde(default)]
    ips: Vec<WireIp>,
    #[serde(default)]
    routes: Vec<WireRoute>,
    #[serde(default)]
    dns: Option<WireDns>,
}

#[derive(Deserialize)]
struct WireInterface {
    name: String,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Deserialize)]
struct WireIp {
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct WireRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    priority: Option<u32>,
}

#[derive(Deserialize)]
struct WireDns {
    #[serde(default)]
    nameservers: Vec<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    search: Vec<String>,
    #[serde(default)]
    options: Vec<String>,
}

impl From<WireDns> for Dns {
    fn from(d: WireDns) -> Dns {
        Dns {
            nameservers: d.nameservers,
            domain: d.domain,
            search: d.search,
            options: d.options,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::SUPPORTED;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "skiff0".into(),
                    mac: "0a:00:00:00:00:01".into(),
                    mtu: Some(1400),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:01:05".into(),
                    mtu: Some(1400),
                    sandbox: Some("/var/run/netns/p".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.1.5/24".parse().unwrap(),
                    gateway: Some("10.244.1.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: Some("fd00::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
                mtu: Some(1400),
                priority: None,
            }],
            dns: Dns {
                nameservers: vec!["10.96.0.10".into()],
                ..Dns::default()
            },
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_drop_new_fields() {
        let v = sample().to_json(CniVersion::V0_3_1);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][0].get("mtu").is_none());
        assert!(v["routes"][0].get("mtu").is_none());
        assert_eq!(v["ips"][0]["address"], "10.244.1.5/24");
        assert_eq!(v["interfaces"][1]["sandbox"], "/var/run/netns/p");
    }

    #[test]
    fn v1_drops_version_and_1_1_adds_mtu() {
        let v = sample().to_json(CniVersion::V1_0_0);
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = sample().to_json(CniVersion::V1_1_0);
        assert_eq!(v["interfaces"][0]["mtu"], 1400);
        assert_eq!(v["routes"][0]["mtu"], 1400);
        assert_eq!(v["dns"]["nameservers"][0], "10.96.0.10");
    }

    #[test]
    fn every_version_round_trips() {
        for version in SUPPORTED {
            let back = CniResult::from_json(&sample().to_json(version)).unwrap();
            assert_eq!(back.ips, sample().ips, "{version}");
            assert_eq!(back.interfaces.len(), 2);
            assert_eq!(back.dns, sample().dns);
        }
    }

    #[test]
    fn rejects_bad_addresses() {
        let v = json!({"cniVersion":"1.0.0","ips":[{"address":"10.0.0.300/24"}]});
        assert!(matches!(
            CniResult::from_json(&v),
            Err(ResultError::Address { .. })
        ));
    }
}
