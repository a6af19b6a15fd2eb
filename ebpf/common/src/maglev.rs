//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of
//! prime size `M` in which every backend owns ≈ M/N entries, and removing one
//! backend moves few entries other than its own. User space builds the table;
//! the tc programs index it with [`crate::select::flow_hash`].

use std::vec;
use std::vec::Vec;

use crate::MAGLEV_MAX;

/// Default table size (a prime, as Maglev requires).
pub const DEFAULT_SIZE: usize = 16381;

/// Why a Maglev table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaglevError {
    /// The size is not a prime within the programs' limit.
    BadSize(usize),
    /// More backends than table entries.
    TooManyBackends {
        /// Backends given.
        backends: usize,
        /// Table size.
        size: usize,
    },
}

impl core::fmt::Display for MaglevError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MaglevError::BadSize(m) => write!(
                f,
                "maglev table size {m} must be a prime between 2 and {MAGLEV_MAX}"
            ),
            MaglevError::TooManyBackends { backends, size } => write!(
                f,
                "{backends} backends do not fit a maglev table of {size} entries; raise the table size"
            ),
        }
    }
}

impl std::error::Error for MaglevError {}

/// Whether `n` is prime.
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// 64-bit FNV-1a of `bytes` with a seed mixed into the offset basis.
fn fnv(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix finaliser: FNV alone leaves the low bits of similar names close.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Builds a table of `size` entries over `backends`, each given as
/// `(id, name)`: the id is what the table stores, the name (e.g. the
/// backend's "ip:port") decides its permutation, so the same backend set
/// yields the same table on every node regardless of order. An empty
/// backend list yields an empty table.
pub fn build(backends: &[(u32, &[u8])], size: usize) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) || size > MAGLEV_MAX {
        return Err(MaglevError::BadSize(size));
    }
    if backends.len() > size {
        return Err(MaglevError::TooManyBackends {
            backends: backends.len(),
            size,
        });
    }
    if backends.is_empty() {
        return Ok(Vec::new());
    }
    // Order by name so the result does not depend on the caller's order.
    let mut sorted: Vec<&(u32, &[u8])> = backends.iter().collect();
    sorted.sort_by(|a, b| a.1.cmp(b.1));
    let m = size as u64;
    let perm: Vec<(u64, u64)> = sorted
        .iter()
        .map(|(_, name)| (fnv(name, 1) % m, fnv(name, 2) % (m - 1) + 1))
        .collect();
    let mut next = vec![0u64; sorted.len()];
    let mut table = vec![u32::MAX; size];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in perm.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while table[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            table[c as usize] = sorted[i].0;
            next[i] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::string::String;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080", i / 250, i % 250 + 2))
            .collect()
    }

    fn build_named(names: &[String], skip: Option<usize>, size: usize) -> Vec<u32> {
        let set: Vec<(u32, &[u8])> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(i, n)| (i as u32, n.as_bytes()))
            .collect();
        build(&set, size).unwrap()
    }

    #[test]
    fn every_backend_gets_a_near_equal_share() {
        let n = names(10);
        let table = build_named(&n, None, DEFAULT_SIZE);
        assert_eq!(table.len(), DEFAULT_SIZE);
        let mut counts = [0usize; 10];
        for id in &table {
            counts[*id as usize] += 1;
        }
        // Maglev guarantees shares within one entry of each other when M is
        // large relative to N; allow a little slack.
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 2, "shares {counts:?}");
    }

    #[test]
    fn same_set_in_another_order_gives_the_same_table() {
        let n = names(7);
        let forward: Vec<(u32, &[u8])> = n
            .iter()
            .enumerate()
            .map(|(i, s)| (i as u32, s.as_bytes()))
            .collect();
        let mut reversed = forward.clone();
        reversed.reverse();
        assert_eq!(
            build(&forward, 1021).unwrap(),
            build(&reversed, 1021).unwrap()
        );
    }

    /// Removing one of N backends must move its own entries and only a small
    /// fraction of the others' (the paper's disruption bound): flows of the
    /// surviving backends keep their backend.
    #[test]
    fn removing_a_backend_disrupts_few_other_flows() {
        for (n, size) in [(10, DEFAULT_SIZE), (100, DEFAULT_SIZE), (5, 1021)] {
            let all = names(n);
            let before = build_named(&all, None, size);
            let removed = n / 2;
            let after = build_named(&all, Some(removed), size);
            assert!(!after.contains(&(removed as u32)));
            let moved_others = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| **b != removed as u32 && b != a)
                .count();
            let others = before.iter().filter(|b| **b != removed as u32).count();
            let fraction = moved_others as f64 / others as f64;
            // Ideal is 0; Maglev trades a little disruption for balance.
            // The paper measures well under 2% for M ≫ N.
            assert!(
                fraction < 0.02,
                "n={n} size={size}: {moved_others}/{others} entries of surviving backends moved"
            );
        }
    }

    #[test]
    fn rejects_bad_sizes_and_overfull_tables() {
        assert_eq!(build(&[], 1000), Err(MaglevError::BadSize(1000)));
        assert_eq!(build(&[], 65537), Err(MaglevError::BadSize(65537)));
        let n = names(5);
        let set: Vec<(u32, &[u8])> = n.iter().map(|s| (0, s.as_bytes())).collect();
        assert_eq!(
            build(&set, 3),
            Err(MaglevError::TooManyBackends {
                backends: 5,
                size: 3
            })
        );
        assert!(build(&[], 251).unwrap().is_empty());
        assert!(is_prime(16381) && is_prime(251) && !is_prime(16383));
    }
}
