//! Which iptables implementation programs the rules: `iptables-legacy-*`
//! (x_tables, the whole table replaced per commit) or `iptables-nft-*`
//! (nf_tables, incremental). Both kinds of rules can live in one namespace
//! and both are evaluated, so the choice must follow what the node already
//! uses for Kubernetes.
//!
//! `auto` decides, in this order (the rule of upstream's iptables-wrapper,
//! narrowed to Kubernetes chains, then a performance default):
//! 1. `KUBE-*` chains (ours from an earlier run, kube-proxy's, or the
//!    kubelet's `KUBE-IPTABLES-HINT` / `KUBE-KUBELET-CANARY`) exist in only
//!    one implementation → that one; in both → the one with more such lines.
//!    A restarted proxy so never leaves a stale copy of its rules in the
//!    other implementation, and it never splits from the kubelet.
//! 2. None anywhere → legacy when `iptables-legacy-restore` and
//!    `ip6tables-legacy-restore` are installed and the kernel has legacy
//!    tables (`iptables-legacy-save` works): its full syncs are several times
//!    faster (`proxy-bench`), which counts because the runner resyncs fully
//!    every sync period; nft's partial syncs are faster at scale, as legacy
//!    replaces the whole table on every commit. Other programs' nftables
//!    rules (a host firewall, a CNI's masquerade) do not prevent legacy: both
//!    sets of hooks run (each NAT hook only binds a connection its own rules
//!    translate), and the proxy's rules only DNAT service addresses and
//!    masquerade packets it marked.
//! 3. Otherwise nft.
//!
//! Rules this proxy left in an implementation it no longer uses (another
//! `--iptables-backend`, or `--mode ebpf` after iptables) would still
//! DNAT service traffic to stale endpoints, since both sets of hooks run:
//! [`remove_leftovers`] takes them out at start, as kube-proxy cleans up
//! the other modes' rules.

use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;

use skiff_cni::Netns;

use super::exec::ExecError;

/// An iptables implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-legacy-restore` (x_tables).
    Legacy,
    /// `iptables-nft-restore` (nf_tables).
    Nft,
}

impl Backend {
    /// `legacy` or `nft`, as in the program names.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        }
    }
}

/// `--iptables-backend`: a fixed implementation or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// Detect (see the module documentation).
    #[default]
    Auto,
    /// Always this one.
    Fixed(Backend),
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "legacy" => Ok(BackendChoice::Fixed(Backend::Legacy)),
            "nft" => Ok(BackendChoice::Fixed(Backend::Nft)),
            other => Err(format!(
                "unknown iptables backend {other:?}: expected auto, legacy or nft"
            )),
        }
    }
}

/// What `auto` found in the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Survey {
    /// The legacy tools are installed and the kernel lists legacy tables.
    pub legacy_usable: bool,
    /// `KUBE-*` chain and rule lines in the legacy tables (both families).
    pub legacy_kube_lines: usize,
    /// `KUBE-*` chain and rule lines in nftables (both families).
    pub nft_kube_lines: usize,
}

impl Survey {
    /// The decision of `auto` and why.
    pub fn decide(&self) -> (Backend, &'static str) {
        match (self.legacy_kube_lines, self.nft_kube_lines) {
            (0, 0) if self.legacy_usable => (
                Backend::Legacy,
                "no Kubernetes chains yet and the legacy tools are installed (faster restores)",
            ),
            (0, 0) => (
                Backend::Nft,
                "no Kubernetes chains yet and the legacy tools or tables are missing",
            ),
            (l, 0) if l > 0 => (
                Backend::Legacy,
                "Kubernetes chains are in the legacy tables",
            ),
            (0, _) => (Backend::Nft, "Kubernetes chains are in nftables"),
            (l, n) if l > n => (
                Backend::Legacy,
                "Kubernetes chains in both; the legacy tables hold more",
            ),
            _ => (
                Backend::Nft,
                "Kubernetes chains in both; nftables holds as many or more",
            ),
        }
    }
}

/// Lines of an `iptables-save` dump that declare or fill a `KUBE-*` chain.
pub fn kube_lines(save: &str) -> usize {
    save.lines()
        .filter(|l| l.starts_with(":KUBE-") || l.starts_with("-A KUBE-"))
        .count()
}

fn installed(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(program).is_file())
}

/// `<family>-<backend>-save` of both families inside `netns`; `None` when a
/// tool is missing or fails.
fn save_all(netns: &Netns, backend: Backend) -> Result<Option<String>, ExecError> {
    let mut all = String::new();
    for family in ["iptables", "ip6tables"] {
        let program = format!("{family}-{}-save", backend.as_str());
        if !installed(&format!("{family}-{}-restore", backend.as_str())) || !installed(&program) {
            return Ok(None);
        }
        let out = netns.run(|| Command::new(&program).output())?;
        match out {
            Ok(o) if o.status.success() => all.push_str(&String::from_utf8_lossy(&o.stdout)),
            _ => return Ok(None),
        }
    }
    Ok(Some(all))
}

/// Whether `backend`'s tables in `netns` hold this proxy's base chain in
/// either family (`false` when its tools are missing).
fn holds_our_chains(netns: &Netns, backend: Backend) -> Result<bool, ExecError> {
    let ours = format!(":{} ", super::chains::SERVICES);
    Ok(save_all(netns, backend)?.is_some_and(|s| s.lines().any(|l| l.starts_with(&ours))))
}

/// Removes this proxy's chains and jumps from every implementation but
/// `keep` (all of them for `None`) in `netns`; returns those it cleaned.
/// Other programs' rules, the kubelet's chains included, stay.
pub fn remove_leftovers(
    netns: &Netns,
    keep: Option<Backend>,
) -> Result<Vec<Backend>, super::IptablesError> {
    let mut cleaned = Vec::new();
    for backend in [Backend::Legacy, Backend::Nft] {
        if Some(backend) == keep || !holds_our_chains(netns, backend)? {
            continue;
        }
        let handle = match netns.path() {
            Some(p) => Netns::open(p).map_err(ExecError::from)?,
            None => Netns::current(),
        };
        let mut old = super::Iptables::new(
            handle,
            super::RuleOptions::default(),
            vec![super::Family::V4, super::Family::V6],
            backend,
        );
        old.remove_all()?;
        cleaned.push(backend);
    }
    Ok(cleaned)
}

/// Looks at `netns` and applies the `auto` rule.
pub fn survey(netns: &Netns) -> Result<Survey, ExecError> {
    let legacy = save_all(netns, Backend::Legacy)?;
    let nft = save_all(netns, Backend::Nft)?;
    Ok(Survey {
        legacy_usable: legacy.is_some(),
        legacy_kube_lines: legacy.as_deref().map_or(0, kube_lines),
        nft_kube_lines: nft.as_deref().map_or(0, kube_lines),
    })
}

impl BackendChoice {
    /// The implementation to use in `netns`, with the reason.
    pub fn resolve(self, netns: &Netns) -> Result<(Backend, String), ExecError> {
        match self {
            BackendChoice::Fixed(b) => Ok((b, "chosen with --iptables-backend".to_string())),
            BackendChoice::Auto => {
                let s = survey(netns)?;
                let (b, why) = s.decide();
                Ok((
                    b,
                    format!(
                        "{why} (KUBE- lines: legacy {}, nft {})",
                        s.legacy_kube_lines, s.nft_kube_lines
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn survey(usable: bool, legacy: usize, nft: usize) -> Backend {
        Survey {
            legacy_usable: usable,
            legacy_kube_lines: legacy,
            nft_kube_lines: nft,
        }
        .decide()
        .0
    }

    #[test]
    fn auto_follows_existing_kubernetes_chains_then_prefers_legacy() {
        assert_eq!(survey(true, 0, 0), Backend::Legacy);
        assert_eq!(survey(false, 0, 0), Backend::Nft);
        // The kubelet's hint chain in nftables wins over the faster default.
        assert_eq!(survey(true, 0, 1), Backend::Nft);
        assert_eq!(survey(true, 40, 0), Backend::Legacy);
        assert_eq!(survey(true, 40, 3), Backend::Legacy);
        assert_eq!(survey(true, 3, 40), Backend::Nft);
        assert_eq!(survey(true, 5, 5), Backend::Nft);
    }

    #[test]
    fn counts_only_kubernetes_lines() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n\
            :SKIFF-MASQ - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n\
            -A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-X\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n";
        assert_eq!(kube_lines(save), 2);
        assert_eq!(kube_lines(""), 0);
    }

    #[test]
    fn parses_choices_and_rejects_unknown() {
        assert_eq!("auto".parse(), Ok(BackendChoice::Auto));
        assert_eq!("legacy".parse(), Ok(BackendChoice::Fixed(Backend::Legacy)));
        assert_eq!("nft".parse(), Ok(BackendChoice::Fixed(Backend::Nft)));
        assert!("ipvs"
            .parse::<BackendChoice>()
            .unwrap_err()
            .contains("ipvs"));
    }
}
