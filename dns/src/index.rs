//! The record index: every name the cluster zone holds, the reverse names of
//! cluster IPs, and the rules for answering from them (answer, NODATA,
//! NXDOMAIN, CNAME) — or saying the name is not ours so it goes upstream.
//!
//! Records arrive per *source* (one Service with its slices, one Pod); a new
//! set from a source replaces its old one, so an update is proportional to the
//! size of that object, not of the cluster. Empty non-terminals (`ns.svc.zone`,
//! `_tcp.svc.ns.svc.zone`) are tracked by reference counts so they answer NODATA
//! rather than NXDOMAIN, as the specification requires.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::key::{is_under, parent, Key, Wire};
use crate::records::Zone;

/// The schema version answered at `dns-version.<zone>`.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// How many CNAMEs inside the zone an answer follows.
const MAX_CNAME_CHAIN: usize = 8;

/// What contributed a set of records.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// A Service, with its EndpointSlices.
    Service { namespace: String, name: String },
    /// A Pod.
    Pod { namespace: String, name: String },
}

/// The index's answer for one question.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// The name is ours: answer with these sections.
    Authoritative {
        rcode: ResponseCode,
        answers: Vec<Record>,
        authorities: Vec<Record>,
    },
    /// The name is outside what the index knows: forward it upstream.
    Forward,
    /// A CNAME to a name outside the zone: answer with it and resolve the
    /// target upstream.
    Chase { answers: Vec<Record>, target: Name },
}

/// The data of one stored record. The owner is the name it is filed under
/// and the TTL the zone's, so a cluster record keeps only what differs: a
/// hickory `Record` is 272 bytes, and with 10k Services the index held 30k
/// of them.
#[derive(Clone, Debug, PartialEq)]
enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Ptr(Key),
    Cname(Key),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Key,
    },
    /// Anything else (the apex SOA and NS, TXT) or a record whose TTL or
    /// class is not the zone's: kept whole.
    Whole(Box<Record>),
}

impl Data {
    /// `record`'s data, its target names made keys by `key`.
    fn of(record: Record, ttl: u32, mut key: impl FnMut(&Name) -> Key) -> Data {
        if record.ttl != ttl || record.dns_class != DNSClass::IN {
            return Data::Whole(Box::new(record));
        }
        match record.data {
            RData::A(a) => Data::A(a.0),
            RData::AAAA(aaaa) => Data::Aaaa(aaaa.0),
            RData::PTR(ptr) => Data::Ptr(key(&ptr.0)),
            RData::CNAME(cname) => Data::Cname(key(&cname.0)),
            RData::SRV(srv) => Data::Srv {
                priority: srv.priority,
                weight: srv.weight,
                port: srv.port,
                target: key(&srv.target),
            },
            _ => Data::Whole(Box::new(record)),
        }
    }

    /// The address of an A or AAAA record.
    fn ip(&self) -> Option<IpAddr> {
        match self {
            Data::A(ip) => Some(IpAddr::V4(*ip)),
            Data::Aaaa(ip) => Some(IpAddr::V6(*ip)),
            _ => None,
        }
    }

    fn record_type(&self) -> RecordType {
        match self {
            Data::A(_) => RecordType::A,
            Data::Aaaa(_) => RecordType::AAAA,
            Data::Ptr(_) => RecordType::PTR,
            Data::Cname(_) => RecordType::CNAME,
            Data::Srv { .. } => RecordType::SRV,
            Data::Whole(record) => record.record_type(),
        }
    }

    /// The record, owned by `owner` (the name as asked) with TTL `ttl`.
    fn record(&self, owner: &Name, ttl: u32) -> Record {
        let data = match self {
            Data::A(ip) => RData::A(A(*ip)),
            Data::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            Data::Ptr(target) => RData::PTR(PTR(target.name())),
            Data::Cname(target) => RData::CNAME(CNAME(target.name())),
            Data::Srv {
                priority,
                weight,
                port,
                target,
            } => RData::SRV(SRV::new(*priority, *weight, *port, target.name())),
            Data::Whole(record) => return Record::clone(record),
        };
        Record::from_rdata(owner.clone(), ttl, data)
    }
}

/// One record a source contributed: where it is filed and its data.
#[derive(Debug, PartialEq)]
struct Entry {
    owner: Key,
    data: Data,
}

/// One name of the index: its records (shared with `Index::sources`, so
/// each is stored once) and how many names below it exist (so a name
/// without records is an empty non-terminal). Most names hold exactly one
/// record: it is kept inline rather than in a one-element allocation
/// (30k of them with 10k Services), and the node stays 24 bytes.
#[derive(Debug)]
enum Node {
    Empty {
        descendants: u32,
    },
    One {
        record: Arc<Entry>,
        descendants: u32,
    },
    Many {
        records: Box<[Arc<Entry>]>,
        descendants: u32,
    },
}

impl Node {
    fn records(&self) -> &[Arc<Entry>] {
        match self {
            Node::Empty { .. } => &[],
            Node::One { record, .. } => std::slice::from_ref(record),
            Node::Many { records, .. } => records,
        }
    }

    fn descendants(&self) -> u32 {
        match self {
            Node::Empty { descendants }
            | Node::One { descendants, .. }
            | Node::Many { descendants, .. } => *descendants,
        }
    }

    fn descendants_mut(&mut self) -> &mut u32 {
        match self {
            Node::Empty { descendants }
            | Node::One { descendants, .. }
            | Node::Many { descendants, .. } => descendants,
        }
    }

    /// A node holding `records` with `descendants` names below.
    fn with(mut records: Vec<Arc<Entry>>, descendants: u32) -> Node {
        match records.len() {
            0 => Node::Empty { descendants },
            1 => match records.pop() {
                Some(record) => Node::One {
                    record,
                    descendants,
                },
                None => Node::Empty { descendants },
            },
            _ => Node::Many {
                records: records.into_boxed_slice(),
                descendants,
            },
        }
    }

    fn push(&mut self, record: Arc<Entry>) {
        let mut records = self.records().to_vec();
        records.push(record);
        *self = Node::with(records, self.descendants());
    }

    /// Drops `record` (this very entry, not an equal one).
    fn remove(&mut self, record: &Arc<Entry>) {
        let mut records = self.records().to_vec();
        if let Some(pos) = records.iter().position(|r| Arc::ptr_eq(r, record)) {
            records.swap_remove(pos);
            *self = Node::with(records, self.descendants());
        }
    }
}

/// A [`Source`] as the index keys it: one allocation (`namespace/name`)
/// instead of two `String`s.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SourceKey {
    pod: bool,
    path: Box<str>,
}

impl SourceKey {
    fn of(source: &Source) -> SourceKey {
        let (pod, namespace, name) = match source {
            Source::Service { namespace, name } => (false, namespace, name),
            Source::Pod { namespace, name } => (true, namespace, name),
        };
        SourceKey {
            pod,
            path: format!("{namespace}/{name}").into_boxed_str(),
        }
    }

    fn source(&self) -> Source {
        // Namespaces cannot contain '/': the first one separates.
        let (namespace, name) = self.path.split_once('/').unwrap_or(("", &self.path));
        let (namespace, name) = (namespace.to_string(), name.to_string());
        if self.pod {
            Source::Pod { namespace, name }
        } else {
            Source::Service { namespace, name }
        }
    }
}

/// Every record of the cluster zone and its reverse names.
#[derive(Debug)]
pub struct Index {
    zone: Zone,
    /// The zone apex's key.
    apex: Key,
    soa: Record,
    in_addr: Name,
    ip6: Name,
    names: HashMap<Key, Node>,
    sources: HashMap<SourceKey, Box<[Arc<Entry>]>>,
    /// Pod IP → the Pod holding it (autopath finds a client's namespace here).
    clients: HashMap<IpAddr, SourceKey>,
}

impl Index {
    /// An index holding only the zone apex (SOA, NS) and `dns-version`.
    pub fn new(zone: Zone) -> Index {
        let origin = zone.origin.clone();
        let ns_name = Name::from_ascii("ns.dns")
            .ok()
            .and_then(|n| n.append_domain(&origin).ok())
            .unwrap_or_else(|| origin.clone());
        let hostmaster = Name::from_ascii("hostmaster")
            .ok()
            .and_then(|n| n.append_domain(&origin).ok())
            .unwrap_or_else(|| origin.clone());
        let soa = SOA::new(ns_name.clone(), hostmaster, 1, 7200, 1800, 86400, zone.ttl);
        let soa = Record::from_rdata(origin.clone(), zone.ttl, RData::SOA(soa));
        let apex = Key(Wire::of(&origin).bytes().into());
        let mut index = Index {
            soa: soa.clone(),
            in_addr: Name::from_ascii("in-addr.arpa.").unwrap_or_default(),
            ip6: Name::from_ascii("ip6.arpa.").unwrap_or_default(),
            names: HashMap::new(),
            sources: HashMap::new(),
            clients: HashMap::new(),
            apex: apex.clone(),
            zone,
        };
        let ns = Record::from_rdata(origin.clone(), index.zone.ttl, RData::NS(NS(ns_name)));
        let records = [soa, ns].map(|record| {
            Arc::new(Entry {
                owner: apex.clone(),
                data: Data::Whole(Box::new(record)),
            })
        });
        index.names.insert(apex, Node::with(records.into(), 0));
        if let Ok(version) = Name::from_ascii("dns-version").and_then(|n| n.append_domain(&origin))
        {
            let txt = TXT::new(vec![SCHEMA_VERSION.to_string()]);
            let record = Record::from_rdata(version, index.zone.ttl, RData::TXT(txt));
            let entries = index.entries(vec![record]);
            for entry in entries {
                index.add(Arc::new(entry));
            }
        }
        index
    }

    /// The zone this index serves.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// The SOA record placed in the authority section of negative answers.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// `records` as entries, every name a key shared with the same name
    /// already held (or made once for this set).
    fn entries(&self, records: Vec<Record>) -> Vec<Entry> {
        let mut made: HashSet<Key> = HashSet::new();
        let mut key = |name: &Name| -> Key {
            let wire = Wire::of(name);
            if let Some((held, _)) = self.names.get_key_value(wire.bytes()) {
                return held.clone();
            }
            if let Some(held) = made.get(wire.bytes()) {
                return held.clone();
            }
            let new = Key(wire.bytes().into());
            made.insert(new.clone());
            new
        };
        records
            .into_iter()
            .map(|record| {
                let owner = key(&record.name);
                Entry {
                    owner,
                    data: Data::of(record, self.zone.ttl, &mut key),
                }
            })
            .collect()
    }

    /// Replaces the records `source` contributes (an empty set removes it).
    pub fn set(&mut self, source: Source, records: Vec<Record>) {
        self.set_key(SourceKey::of(&source), records);
    }

    fn set_key(&mut self, source: SourceKey, records: Vec<Record>) {
        let entries = self.entries(records);
        let unchanged = self.sources.get(&source).is_some_and(|old| {
            old.len() == entries.len() && old.iter().zip(&entries).all(|(a, b)| **a == *b)
        });
        if unchanged {
            return;
        }
        let shared: Box<[Arc<Entry>]> = entries.into_iter().map(Arc::new).collect();
        let old = if shared.is_empty() {
            self.sources.remove(&source).unwrap_or_default()
        } else {
            self.sources
                .insert(source.clone(), shared.clone())
                .unwrap_or_default()
        };
        if source.pod {
            for ip in old.iter().filter_map(|r| r.data.ip()) {
                if self.clients.get(&ip) == Some(&source) {
                    self.clients.remove(&ip);
                }
            }
            for ip in shared.iter().filter_map(|r| r.data.ip()) {
                self.clients.insert(ip, source.clone());
            }
        }
        for record in old {
            self.remove(&record);
        }
        for record in shared {
            self.add(record);
        }
    }

    /// The namespace of the Pod holding `ip`, if one does.
    pub fn client_namespace(&self, ip: IpAddr) -> Option<&str> {
        let pod = self.clients.get(&ip)?;
        pod.path.split_once('/').map(|(namespace, _)| namespace)
    }

    /// Drops every source of one kind not in `keep` (after a re-list).
    pub fn retain_sources(&mut self, mut keep: impl FnMut(&Source) -> bool) {
        let gone: Vec<SourceKey> = self
            .sources
            .keys()
            .filter(|s| !keep(&s.source()))
            .cloned()
            .collect();
        for source in gone {
            self.set_key(source, Vec::new());
        }
    }

    /// Number of names held (including empty non-terminals).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when nothing but the apex is held.
    pub fn is_empty(&self) -> bool {
        self.names.len() <= 1
    }

    /// Whether names under `name` would be tracked with ancestors (zone) or alone (reverse).
    fn in_zone(&self, name: &Name) -> bool {
        self.zone.origin.zone_of(name)
    }

    fn add(&mut self, record: Arc<Entry>) {
        let created = match self.names.get_mut(&record.owner) {
            Some(node) => {
                node.push(record.clone());
                false
            }
            None => {
                let node = Node::One {
                    record: record.clone(),
                    descendants: 0,
                };
                self.names.insert(record.owner.clone(), node);
                true
            }
        };
        let apex = self.apex.0.clone();
        if !created || record.owner.0 == apex || !is_under(&record.owner.0, &apex) {
            return;
        }
        let mut up = parent(&record.owner.0);
        // Bounded: every step drops one label, and the apex ends it.
        while let Some(key) = up {
            match self.names.get_mut(key) {
                Some(node) => *node.descendants_mut() += 1,
                None => {
                    let node = Node::Empty { descendants: 1 };
                    self.names.insert(Key(key.into()), node);
                }
            }
            if key.len() <= apex.len() {
                break;
            }
            up = parent(key);
        }
    }

    fn remove(&mut self, record: &Arc<Entry>) {
        let key = &record.owner;
        let Some(node) = self.names.get_mut(key) else {
            return;
        };
        node.remove(record);
        if !node.records().is_empty() || node.descendants() > 0 {
            return;
        }
        self.names.remove(key);
        let apex = self.apex.0.clone();
        if key.0 == apex || !is_under(&key.0, &apex) {
            return;
        }
        let mut up = parent(&key.0);
        // Bounded: every step drops one label, and the apex ends it.
        while let Some(parent_key) = up {
            let Some(node) = self.names.get_mut(parent_key) else {
                break;
            };
            let descendants = node.descendants_mut();
            *descendants = descendants.saturating_sub(1);
            if node.descendants() == 0 && node.records().is_empty() {
                self.names.remove(parent_key);
            }
            if parent_key.len() <= apex.len() {
                break;
            }
            up = parent(parent_key);
        }
    }

    /// Answers `qtype` for `name` (any case) from the index, or says to forward it.
    pub fn resolve(&self, name: &Name, qtype: RecordType) -> Resolution {
        let in_zone = self.in_zone(name);
        let reverse = self.in_addr.zone_of(name) || self.ip6.zone_of(name);
        let Some(node) = self.names.get(Wire::of(name).bytes()) else {
            if in_zone {
                return self.negative(ResponseCode::NXDomain);
            }
            // Reverse names of IPs we do not hold, and everything else, are
            // someone else's.
            return Resolution::Forward;
        };
        if !in_zone && !reverse {
            return Resolution::Forward;
        }
        let ttl = self.zone.ttl;
        let answers: Vec<Record> = node
            .records()
            .iter()
            .filter(|r| qtype == RecordType::ANY || r.data.record_type() == qtype)
            .map(|r| r.data.record(name, ttl))
            .collect();
        if !answers.is_empty() {
            return Resolution::Authoritative {
                rcode: ResponseCode::NoError,
                answers,
                authorities: Vec::new(),
            };
        }
        if let Some(cname) = node
            .records()
            .iter()
            .find(|r| r.data.record_type() == RecordType::CNAME)
        {
            return self.follow(cname.data.record(name, ttl), qtype);
        }
        self.negative(ResponseCode::NoError)
    }

    /// Answers a CNAME and, while the target stays in the zone, what it points to.
    fn follow(&self, first: Record, qtype: RecordType) -> Resolution {
        let mut answers = vec![first];
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(RData::CNAME(target)) = answers.last().map(|r| r.data.clone()) else {
                break;
            };
            let target = target.0;
            if !self.in_zone(&target) {
                return Resolution::Chase { answers, target };
            }
            let Some(node) = self.names.get(Wire::of(&target).bytes()) else {
                return Resolution::Authoritative {
                    rcode: ResponseCode::NXDomain,
                    answers,
                    authorities: vec![self.soa.clone()],
                };
            };
            let ttl = self.zone.ttl;
            let direct: Vec<Record> = node
                .records()
                .iter()
                .filter(|r| r.data.record_type() == qtype)
                .map(|r| r.data.record(&target, ttl))
                .collect();
            if !direct.is_empty() {
                answers.extend(direct);
                break;
            }
            match node
                .records()
                .iter()
                .find(|r| r.data.record_type() == RecordType::CNAME)
                .map(|r| r.data.record(&target, ttl))
            {
                Some(next) if !answers.contains(&next) => answers.push(next),
                _ => break,
            }
        }
        Resolution::Authoritative {
            rcode: ResponseCode::NoError,
            answers,
            authorities: Vec::new(),
        }
    }

    fn negative(&self, rcode: ResponseCode) -> Resolution {
        Resolution::Authoritative {
            rcode,
            answers: Vec::new(),
            authorities: vec![self.soa.clone()],
        }
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
