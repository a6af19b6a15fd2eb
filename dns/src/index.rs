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
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{NS, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

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

#[derive(Default, Debug)]
struct Node {
    /// Shared with `Index::sources`, so each record is stored once.
    records: Vec<Arc<Record>>,
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
    names: HashMap<Name, Node>,
    sources: HashMap<Source, Vec<Arc<Record>>>,
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
        index.names.insert(
            origin.clone(),
            Node {
                records: vec![Arc::new(soa), Arc::new(ns)],
                descendants: 0,
            },
        );
        if let Ok(version) = Name::from_ascii("dns-version").and_then(|n| n.append_domain(&origin))
        {
            let txt = TXT::new(vec![SCHEMA_VERSION.to_string()]);
            let record = Record::from_rdata(version, index.zone.ttl, RData::TXT(txt));
            index.add(Arc::new(record));
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

    /// Replaces the records `source` contributes (an empty set removes it).
    pub fn set(&mut self, source: Source, records: Vec<Record>) {
        let unchanged = self.sources.get(&source).is_some_and(|old| {
            old.len() == records.len() && old.iter().zip(&records).all(|(a, b)| **a == *b)
        });
        if unchanged {
            return;
        }
        let shared: Vec<Arc<Record>> = records.into_iter().map(Arc::new).collect();
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

    fn add(&mut self, record: Arc<Record>) {
        let name = record.name.clone();
        let created = !self.names.contains_key(&name);
        self.names
            .entry(name.clone())
            .or_default()
            .records
            .push(record);
        if created && self.in_zone(&name) {
            let mut parent = name.base_name();
            while self.zone.origin.zone_of(&parent) {
                self.names.entry(parent.clone()).or_default().descendants += 1;
                if parent == self.zone.origin {
                    break;
                }
                parent = parent.base_name();
            }
        }
    }

    fn remove(&mut self, record: &Arc<Record>) {
        let name = record.name.clone();
        let Some(node) = self.names.get_mut(&name) else {
            return;
        };
        if let Some(pos) = node.records.iter().position(|r| Arc::ptr_eq(r, record)) {
            node.records.swap_remove(pos);
        }
        if !node.records.is_empty() || node.descendants > 0 {
            return;
        }
        self.names.remove(&name);
        if !self.in_zone(&name) {
            return;
        }
        let mut parent = name.base_name();
        while self.zone.origin.zone_of(&parent) {
            let Some(node) = self.names.get_mut(&parent) else {
                break;
            };
            node.descendants = node.descendants.saturating_sub(1);
            if node.descendants == 0 && node.records.is_empty() {
                self.names.remove(&parent);
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
        let Some(node) = self.names.get(name) else {
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
        let answers: Vec<Record> = node
            .records
            .iter()
            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
            .map(|r| Record::clone(r))
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
            .find(|r| r.record_type() == RecordType::CNAME)
        {
            return self.follow(Record::clone(cname), qtype);
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
            let Some(node) = self.names.get(&target) else {
                return Resolution::Authoritative {
                    rcode: ResponseCode::NXDomain,
                    answers,
                    authorities: vec![self.soa.clone()],
                };
            };
            let direct: Vec<Record> = node
                .records
                .iter()
                .filter(|r| r.record_type() == qtype)
                .map(|r| Record::clone(r))
                .collect();
            if !direct.is_empty() {
                answers.extend(direct);
                break;
            }
            match node
                .records
                .iter()
                .find(|r| r.record_type() == RecordType::CNAME)
            {
                Some(next) if !answers.contains(next) => answers.push(Record::clone(next)),
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
