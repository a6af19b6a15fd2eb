//! The record index: every name the cluster zone holds, the reverse names of
//! cluster IPs, and the rules for answering from them (answer, NODATA,
//! NXDOMAIN, CNAME) — or saying the name is not ours so it goes upstream.
//!
//! Records arrive per *source* (one Service with its slices, one Pod); a new
//! set from a source replaces its old one, so an update is proportional to the
//! size of that object, not of the cluster. Empty non-terminals (`ns.svc.zone`,
//! `_tcp.svc.ns.svc.zone`) are tracked by reference counts so they answer NODATA
//! rather than NXDOMAIN, as the specification requires.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

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

/// A name as the index keys it: its labels in wire form, lowercased. A
/// `Name` is 80 bytes inline; with 10k Services the table holds 40k names,
/// and the keys alone were 5 MB of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key(Box<[u8]>);

impl Key {
    fn of(name: &Name) -> Key {
        let mut wire = Vec::with_capacity(name.len() + 1);
        for label in name.iter() {
            // Labels are at most 63 bytes: the length fits in one byte.
            wire.push(label.len() as u8);
            wire.extend(label.iter().map(u8::to_ascii_lowercase));
        }
        Key(wire.into_boxed_slice())
    }

    /// The name this key was made from, lowercased.
    fn name(&self) -> Name {
        let mut labels = Vec::new();
        let mut rest = &self.0[..];
        while let Some((&len, tail)) = rest.split_first() {
            let (label, tail) = tail.split_at(usize::from(len).min(tail.len()));
            labels.push(label);
            rest = tail;
        }
        let mut name = Name::from_labels(labels).unwrap_or_default();
        name.set_fqdn(true);
        name
    }
}

/// The data of one stored record. The owner is the name it is filed under
/// and the TTL the zone's, so a cluster record keeps only what differs: a
/// hickory `Record` is 272 bytes, and with 10k Services the index held 30k
/// of them.
#[derive(Clone, Debug, PartialEq)]
enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Ptr(Name),
    Cname(Name),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Name,
    },
    /// Anything else (the apex SOA and NS, TXT) or a record whose TTL or
    /// class is not the zone's: kept whole.
    Whole(Box<Record>),
}

impl Data {
    fn of(record: Record, ttl: u32) -> Data {
        if record.ttl != ttl || record.dns_class != DNSClass::IN {
            return Data::Whole(Box::new(record));
        }
        match record.data {
            RData::A(a) => Data::A(a.0),
            RData::AAAA(aaaa) => Data::Aaaa(aaaa.0),
            RData::PTR(ptr) => Data::Ptr(ptr.0),
            RData::CNAME(cname) => Data::Cname(cname.0),
            RData::SRV(srv) => Data::Srv {
                priority: srv.priority,
                weight: srv.weight,
                port: srv.port,
                target: srv.target,
            },
            _ => Data::Whole(Box::new(record)),
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
            Data::Ptr(target) => RData::PTR(PTR(target.clone())),
            Data::Cname(target) => RData::CNAME(CNAME(target.clone())),
            Data::Srv {
                priority,
                weight,
                port,
                target,
            } => RData::SRV(SRV::new(*priority, *weight, *port, target.clone())),
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

#[derive(Default, Debug)]
struct Node {
    /// Shared with `Index::sources`, so each record is stored once.
    records: Vec<Arc<Entry>>,
    /// Names below this one that exist (so this one is at least an empty non-terminal).
    descendants: u32,
}

/// Every record of the cluster zone and its reverse names.
#[derive(Debug)]
pub struct Index {
    zone: Zone,
    soa: Record,
    in_addr: Name,
    ip6: Name,
    names: HashMap<Key, Node>,
    sources: HashMap<Source, Vec<Arc<Entry>>>,
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
        let mut index = Index {
            soa: soa.clone(),
            in_addr: Name::from_ascii("in-addr.arpa.").unwrap_or_default(),
            ip6: Name::from_ascii("ip6.arpa.").unwrap_or_default(),
            names: HashMap::new(),
            sources: HashMap::new(),
            zone,
        };
        let ns = Record::from_rdata(origin.clone(), index.zone.ttl, RData::NS(NS(ns_name)));
        let owner = Key::of(&origin);
        let apex = [soa, ns].map(|record| {
            Arc::new(Entry {
                owner: owner.clone(),
                data: Data::Whole(Box::new(record)),
            })
        });
        index.names.insert(
            owner,
            Node {
                records: apex.into(),
                descendants: 0,
            },
        );
        if let Ok(version) = Name::from_ascii("dns-version").and_then(|n| n.append_domain(&origin))
        {
            let txt = TXT::new(vec![SCHEMA_VERSION.to_string()]);
            let record = Record::from_rdata(version, index.zone.ttl, RData::TXT(txt));
            let entry = index.entry(record);
            index.add(Arc::new(entry));
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

    fn entry(&self, record: Record) -> Entry {
        Entry {
            owner: Key::of(&record.name),
            data: Data::of(record, self.zone.ttl),
        }
    }

    /// Replaces the records `source` contributes (an empty set removes it).
    pub fn set(&mut self, source: Source, records: Vec<Record>) {
        let entries: Vec<Entry> = records.into_iter().map(|r| self.entry(r)).collect();
        let unchanged = self.sources.get(&source).is_some_and(|old| {
            old.len() == entries.len() && old.iter().zip(&entries).all(|(a, b)| **a == *b)
        });
        if unchanged {
            return;
        }
        let shared: Vec<Arc<Entry>> = entries.into_iter().map(Arc::new).collect();
        let old = if shared.is_empty() {
            self.sources.remove(&source).unwrap_or_default()
        } else {
            self.sources
                .insert(source, shared.clone())
                .unwrap_or_default()
        };
        for record in old {
            self.remove(&record);
        }
        for record in shared {
            self.add(record);
        }
    }

    /// Drops every source of one kind not in `keep` (after a re-list).
    pub fn retain_sources(&mut self, mut keep: impl FnMut(&Source) -> bool) {
        let gone: Vec<Source> = self.sources.keys().filter(|s| !keep(s)).cloned().collect();
        for source in gone {
            self.set(source, Vec::new());
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
        let key = record.owner.clone();
        let created = !self.names.contains_key(&key);
        self.names
            .entry(key)
            .or_default()
            .records
            .push(record.clone());
        let name = record.owner.name();
        if created && self.in_zone(&name) {
            let mut parent = name.base_name();
            while self.zone.origin.zone_of(&parent) {
                self.names.entry(Key::of(&parent)).or_default().descendants += 1;
                if parent == self.zone.origin {
                    break;
                }
                parent = parent.base_name();
            }
        }
    }

    fn remove(&mut self, record: &Arc<Entry>) {
        let key = &record.owner;
        let Some(node) = self.names.get_mut(key) else {
            return;
        };
        if let Some(pos) = node.records.iter().position(|r| Arc::ptr_eq(r, record)) {
            node.records.swap_remove(pos);
        }
        if !node.records.is_empty() || node.descendants > 0 {
            return;
        }
        self.names.remove(key);
        let name = key.name();
        if !self.in_zone(&name) {
            return;
        }
        let mut parent = name.base_name();
        while self.zone.origin.zone_of(&parent) {
            let parent_key = Key::of(&parent);
            let Some(node) = self.names.get_mut(&parent_key) else {
                break;
            };
            node.descendants = node.descendants.saturating_sub(1);
            if node.descendants == 0 && node.records.is_empty() {
                self.names.remove(&parent_key);
            }
            if parent == self.zone.origin {
                break;
            }
            parent = parent.base_name();
        }
    }

    /// Answers `qtype` for `name` (any case) from the index, or says to forward it.
    pub fn resolve(&self, name: &Name, qtype: RecordType) -> Resolution {
        let in_zone = self.in_zone(name);
        let reverse = self.in_addr.zone_of(name) || self.ip6.zone_of(name);
        let Some(node) = self.names.get(&Key::of(name)) else {
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
            .records
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
            .records
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
            let Some(node) = self.names.get(&Key::of(&target)) else {
                return Resolution::Authoritative {
                    rcode: ResponseCode::NXDomain,
                    answers,
                    authorities: vec![self.soa.clone()],
                };
            };
            let ttl = self.zone.ttl;
            let direct: Vec<Record> = node
                .records
                .iter()
                .filter(|r| r.data.record_type() == qtype)
                .map(|r| r.data.record(&target, ttl))
                .collect();
            if !direct.is_empty() {
                answers.extend(direct);
                break;
            }
            match node
                .records
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
