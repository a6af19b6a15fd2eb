//! The cache of upstream answers, positive and negative, bounded in entries so
//! a flood of random names cannot grow memory without limit.
//!
//! An entry lives for the smallest TTL of its records (for negative answers:
//! the SOA minimum, RFC 2308), capped by [`MAX_POSITIVE_TTL`] / [`MAX_NEGATIVE_TTL`].
//! When the cache is full, expired entries go first, then arbitrary ones.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// Longest time a positive upstream answer is kept.
pub const MAX_POSITIVE_TTL: u32 = 300;
/// Longest time a negative upstream answer (NXDOMAIN/NODATA) is kept.
pub const MAX_NEGATIVE_TTL: u32 = 60;

/// An upstream answer: the parts of the message a client gets back.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

struct Entry {
    answer: Answer,
    stored: Instant,
    expires: Instant,
}

/// A bounded map (name, type) → answer with expiry.
pub struct Cache {
    capacity: usize,
    entries: Mutex<HashMap<(Name, RecordType), Entry>>,
}

impl Cache {
    /// A cache holding at most `capacity` answers.
    pub fn new(capacity: usize) -> Cache {
        Cache {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached answer with TTLs lowered by the time it spent in the cache.
    pub fn get(&self, name: &Name, qtype: RecordType, now: Instant) -> Option<Answer> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.get(&(name.clone(), qtype))?;
        if entry.expires <= now {
            return None;
        }
        let elapsed = u32::try_from(now.duration_since(entry.stored).as_secs()).unwrap_or(u32::MAX);
        let mut answer = entry.answer.clone();
        for record in answer
            .answers
            .iter_mut()
            .chain(answer.authorities.iter_mut())
        {
            record.ttl = record.ttl.saturating_sub(elapsed);
        }
        Some(answer)
    }

    /// Stores `answer` if it is cacheable (NOERROR or NXDOMAIN).
    pub fn put(&self, name: Name, qtype: RecordType, answer: Answer, now: Instant) {
        let Some(ttl) = cache_ttl(&answer) else {
            return;
        };
        if ttl == 0 || self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, e| e.expires > now);
        }
        if entries.len() >= self.capacity {
            // Still full of live entries: drop a tenth. HashMap iteration order
            // is randomly seeded, so this is random eviction.
            let drop: Vec<(Name, RecordType)> = entries
                .keys()
                .take(self.capacity / 10 + 1)
                .cloned()
                .collect();
            for key in drop {
                entries.remove(&key);
            }
        }
        entries.insert(
            (name, qtype),
            Entry {
                answer,
                stored: now,
                expires: now + Duration::from_secs(u64::from(ttl)),
            },
        );
    }

    /// Number of entries held (live or not yet evicted).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long an answer may be cached, or `None` when it must not be.
fn cache_ttl(answer: &Answer) -> Option<u32> {
    match answer.rcode {
        ResponseCode::NoError if !answer.answers.is_empty() => answer
            .answers
            .iter()
            .map(|r| r.ttl)
            .min()
            .map(|t| t.min(MAX_POSITIVE_TTL)),
        ResponseCode::NoError | ResponseCode::NXDomain => {
            let soa = answer.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            });
            // Without an SOA, RFC 2308 says do not cache negatively.
            soa.map(|t| t.min(MAX_NEGATIVE_TTL))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use std::net::Ipv4Addr;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn a(ttl: u32) -> Answer {
        Answer {
            rcode: ResponseCode::NoError,
            answers: vec![Record::from_rdata(
                name("x.example."),
                ttl,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
            )],
            authorities: vec![],
        }
    }

    #[test]
    fn positive_answers_expire_with_their_ttl_and_age() {
        let cache = Cache::new(10);
        let t0 = Instant::now();
        cache.put(name("x.example."), RecordType::A, a(30), t0);
        let hit = cache
            .get(
                &name("X.Example."),
                RecordType::A,
                t0 + Duration::from_secs(10),
            )
            .expect("cached");
        assert_eq!(hit.answers[0].ttl, 20);
        assert!(cache
            .get(&name("x.example."), RecordType::AAAA, t0)
            .is_none());
        assert!(cache
            .get(
                &name("x.example."),
                RecordType::A,
                t0 + Duration::from_secs(31)
            )
            .is_none());
    }

    #[test]
    fn negative_answers_use_the_soa_minimum_and_need_an_soa() {
        let cache = Cache::new(10);
        let t0 = Instant::now();
        let soa = SOA::new(name("ns."), name("h."), 1, 1, 1, 1, 7);
        let nx = Answer {
            rcode: ResponseCode::NXDomain,
            answers: vec![],
            authorities: vec![Record::from_rdata(name("example."), 100, RData::SOA(soa))],
        };
        cache.put(name("nope.example."), RecordType::A, nx.clone(), t0);
        assert_eq!(
            cache
                .get(
                    &name("nope.example."),
                    RecordType::A,
                    t0 + Duration::from_secs(6)
                )
                .map(|a| a.rcode),
            Some(ResponseCode::NXDomain)
        );
        assert!(cache
            .get(
                &name("nope.example."),
                RecordType::A,
                t0 + Duration::from_secs(8)
            )
            .is_none());
        let bare = Answer {
            authorities: vec![],
            ..nx
        };
        cache.put(name("bare.example."), RecordType::A, bare, t0);
        assert!(cache
            .get(&name("bare.example."), RecordType::A, t0)
            .is_none());
        let servfail = Answer {
            rcode: ResponseCode::ServFail,
            ..a(30)
        };
        cache.put(name("fail.example."), RecordType::A, servfail, t0);
        assert!(cache
            .get(&name("fail.example."), RecordType::A, t0)
            .is_none());
    }

    #[test]
    fn a_flood_of_names_stays_within_capacity() {
        let cache = Cache::new(100);
        let t0 = Instant::now();
        for i in 0..10_000 {
            cache.put(name(&format!("n{i}.example.")), RecordType::A, a(300), t0);
            assert!(cache.len() <= 100);
        }
        // The newest entry is always kept.
        assert!(cache
            .get(&name("n9999.example."), RecordType::A, t0)
            .is_some());
    }
}
