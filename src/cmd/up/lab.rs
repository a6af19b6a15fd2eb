//! The lab of DESIGN §6 that `skiff up` builds: an underlay namespace whose
//! bridge plays the L2 network between nodes, and one namespace per node,
//! joined to that bridge by a veth (`eth0` in the node) with an underlay
//! address from 192.168.77.0/24 (`.1` on the bridge, `.10+i` on node i) and
//! a default route to the bridge's address.
//!
//! Everything is made inside namespaces created here, named like `ip netns`
//! names them (`/var/run/netns/<name>`), so `ip netns exec` reaches them. The
//! root namespace gets no link, address or route; deleting the namespaces
//! removes every link (and the agents' iptables rules) with them.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use skiff_cni::ipnetwork::{IpNetwork, Ipv4Network};
use skiff_cni::{bridge, netlink, routes, veth, Netns};

/// Where named network namespaces are bind-mounted (as `ip netns` does).
pub const NETNS_DIR: &str = "/var/run/netns";
/// The bridge in the underlay namespace.
pub const UNDERLAY_BRIDGE: &str = "br0";
/// Prefix length of the underlay network.
const UNDERLAY_PREFIX: u8 = 24;
/// The node's end of its underlay veth.
const NODE_IFNAME: &str = "eth0";

/// The underlay bridge's own address (what NodePort clients "outside" use).
pub fn underlay_gateway() -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 77, 1)
}

/// The underlay address of node `index` (1-based): 192.168.77.(10 + index).
pub fn node_address(index: usize) -> Ipv4Addr {
    let last = u8::try_from(10 + index).unwrap_or(u8::MAX);
    Ipv4Addr::new(192, 168, 77, last)
}

/// `/var/run/netns/<name>`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates the named network namespace `name`, like `ip netns add`.
pub fn create_netns(name: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(NETNS_DIR).with_context(|| format!("creating {NETNS_DIR}"))?;
    let path = netns_path(name);
    if path.exists() {
        bail!(
            "network namespace {name} already exists ({}): another cluster uses this \
             --prefix, or one was left behind (`skiff down --data-dir DIR` removes it)",
            path.display()
        );
    }
    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let target = path.clone();
    // unshare() changes the namespace of the calling thread only, so a
    // short-lived thread does it and pins the new namespace with a bind mount.
    let made = std::thread::spawn(move || -> nix::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    })
    .join()
    .map_err(|_| anyhow!("the thread creating network namespace {name} panicked"))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        bail!("creating network namespace {name}: {e} (skiff up needs root)");
    }
    Ok(path)
}

/// Removes the named namespace `name` if it exists (its links go with it).
pub fn delete_netns(name: &str) -> Result<()> {
    let path = netns_path(name);
    if !path.exists() {
        return Ok(());
    }
    match umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => bail!("unmounting {}: {e}", path.display()),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Brings link `name` up.
async fn set_up(h: &rtnetlink::Handle, name: &str, ns: &str) -> Result<u32> {
    let link = netlink::link_by_name(h, name)
        .await
        .with_context(|| format!("looking up {name} in {ns}"))?
        .ok_or_else(|| anyhow!("no link {name} in {ns}"))?;
    let index = link.header.index;
    h.link()
        .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .with_context(|| format!("bringing {name} up in {ns}"))?;
    Ok(index)
}

fn v4(addr: Ipv4Addr) -> Result<IpNetwork> {
    Ok(IpNetwork::V4(Ipv4Network::new(addr, UNDERLAY_PREFIX)?))
}

/// Creates the underlay namespace `name` with its bridge.
pub async fn create_underlay(name: &str) -> Result<()> {
    let path = create_netns(name)?;
    let ns = Netns::open(&path)?;
    let h = ns.netlink()?;
    set_up(&h, "lo", name).await?;
    bridge::ensure(&h, UNDERLAY_BRIDGE, None, &[v4(underlay_gateway())?], name).await?;
    Ok(())
}

/// Creates node namespace `name`, joined to `underlay`'s bridge with
/// [`node_address`]`(index)`; returns that address.
pub async fn create_node(underlay: &str, name: &str, index: usize) -> Result<IpAddr> {
    let path = create_netns(name)?;
    let node = Netns::open(&path)?;
    let under = Netns::open(netns_path(underlay))?;
    let uh = under.netlink()?;
    let br = bridge::find(&uh, UNDERLAY_BRIDGE, underlay)
        .await?
        .ok_or_else(|| anyhow!("no bridge {UNDERLAY_BRIDGE} in {underlay}"))?;
    let spec = veth::VethSpec {
        // Only this cluster's links live in its underlay namespace, so short names do.
        host: format!("node{index}"),
        ifname: NODE_IFNAME,
        mtu: None,
        pod_mac: netlink::derived_mac(&["skiff-up", name, NODE_IFNAME]),
        host_mac: netlink::derived_mac(&["skiff-up", name, "port"]),
        bridge_index: br.index,
        pod_ns_fd: node
            .raw_fd()
            .ok_or_else(|| anyhow!("namespace {name} has no descriptor"))?,
        pod_ns: path.display().to_string(),
        hairpin: false,
        alias: format!("skiff-up/{name}"),
    };
    veth::create(&uh, &spec, underlay).await?;
    let nh = node.netlink()?;
    set_up(&nh, "lo", name).await?;
    let eth0 = set_up(&nh, NODE_IFNAME, name).await?;
    let addr = node_address(index);
    netlink::add_address(&nh, eth0, v4(addr)?, name).await?;
    // Like a machine's default gateway. The kernel needs a route for a
    // ClusterIP before the proxy's OUTPUT rules rewrite it; anything not for
    // the cluster ends in the underlay namespace, which routes nowhere else.
    let default = IpNetwork::V4(Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0)?);
    routes::add_pod_route(
        &nh,
        eth0,
        default,
        Some(IpAddr::V4(underlay_gateway())),
        name,
    )
    .await?;
    Ok(IpAddr::V4(addr))
}
