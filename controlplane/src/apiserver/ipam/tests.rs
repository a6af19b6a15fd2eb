//! Unit tests of the Service address allocator.

use super::*;
use serde_json::json;

fn ipam() -> ServiceIpam {
    ServiceIpam {
        cidrs: vec!["10.96.0.0/28".parse().unwrap()],
        state: Mutex::new(State::default()),
    }
}

fn dual_stack() -> ServiceIpam {
    ServiceIpam {
        cidrs: vec![
            "10.96.0.0/28".parse().unwrap(),
            "fd00:10:96::/112".parse().unwrap(),
        ],
        state: Mutex::new(State::default()),
    }
}

fn family_of(svc: &Value, i: usize) -> IpFamily {
    IpFamily::of(
        &svc["spec"]["clusterIPs"][i]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
    )
}

#[test]
fn dual_stack_follows_ip_families_and_policy() {
    let ipam = dual_stack();
    // SingleStack: the primary family, or the one asked for.
    let mut v4 = json!({"spec": {"ipFamilyPolicy": "SingleStack", "ports": [{"port": 80}]}});
    ipam.allocate(&mut v4).unwrap();
    assert_eq!(v4["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(family_of(&v4, 0), IpFamily::V4);
    let mut v6 = json!({"spec": {"ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"}});
    let a = ipam.allocate(&mut v6).unwrap();
    assert_eq!(a.ips.len(), 1);
    assert_eq!(v6["spec"]["clusterIPs"].as_array().unwrap().len(), 1);
    assert_eq!(family_of(&v6, 0), IpFamily::V6);
    assert_eq!(v6["spec"]["clusterIP"], v6["spec"]["clusterIPs"][0]);
    // A requested IPv6 address picks its family.
    let mut asked = json!({"spec": {"clusterIP": "fd00:10:96::50"}});
    ipam.allocate(&mut asked).unwrap();
    assert_eq!(asked["spec"]["ipFamilies"], json!(["IPv6"]));
    // PreferDualStack: both, IPv6 first when asked so.
    let mut both = json!({"spec": {"ipFamilies": ["IPv6"], "ipFamilyPolicy": "PreferDualStack"}});
    let a = ipam.allocate(&mut both).unwrap();
    assert_eq!(a.ips.len(), 2);
    assert_eq!(both["spec"]["ipFamilies"], json!(["IPv6", "IPv4"]));
    assert_eq!(family_of(&both, 0), IpFamily::V6);
    assert_eq!(family_of(&both, 1), IpFamily::V4);
    // Two families with SingleStack is refused on create.
    let mut bad =
        json!({"spec": {"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "SingleStack"}});
    assert_eq!(
        ipam.allocate(&mut bad).unwrap_err()[0].field,
        "spec.ipFamilyPolicy"
    );
    // A requested address of the wrong family for its position.
    let mut wrong = json!({"spec": {"clusterIPs": ["10.96.0.7"], "ipFamilies": ["IPv6"]}});
    let errs = ipam.allocate(&mut wrong).unwrap_err();
    assert!(
        errs[0].message.contains("not in the valid range"),
        "{errs:?}"
    );
}

#[test]
fn single_stack_cluster_refuses_what_it_does_not_have() {
    let ipam = ipam();
    let mut require = json!({"spec": {"ipFamilyPolicy": "RequireDualStack"}});
    let errs = ipam.allocate(&mut require).unwrap_err();
    assert!(
        errs[0].message.contains("not configured for dual-stack"),
        "{errs:?}"
    );
    let mut v6 = json!({"spec": {"ipFamilies": ["IPv6"]}});
    assert_eq!(
        ipam.allocate(&mut v6).unwrap_err()[0].field,
        "spec.ipFamilies[0]"
    );
    // PreferDualStack quietly gets what there is.
    let mut prefer = json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}});
    assert_eq!(ipam.allocate(&mut prefer).unwrap().ips.len(), 1);
    assert_eq!(prefer["spec"]["ipFamilies"], json!(["IPv4"]));
}

#[test]
fn upgrade_to_dual_stack_adds_the_secondary_and_downgrade_frees_it() {
    let ipam = dual_stack();
    let mut old = json!({"spec": {"ipFamilyPolicy": "SingleStack"}});
    ipam.allocate(&mut old).unwrap();
    let mut new = old.clone();
    new["spec"]["ipFamilyPolicy"] = json!("PreferDualStack");
    let pending = ipam.reallocate(&old, &mut new).unwrap();
    assert_eq!(pending.taken.ips.len(), 1, "only the IPv6 address is new");
    assert_eq!(new["spec"]["clusterIPs"][0], old["spec"]["clusterIPs"][0]);
    assert_eq!(family_of(&new, 1), IpFamily::V6);
    pending.commit();
    let v6: IpAddr = new["spec"]["clusterIPs"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut down = new.clone();
    down["spec"]["ipFamilyPolicy"] = json!("SingleStack");
    let pending = ipam.reallocate(&new, &mut down).unwrap();
    assert_eq!(down["spec"]["clusterIPs"], old["spec"]["clusterIPs"]);
    assert_eq!(pending.freed.ips, vec![v6]);
    pending.commit();
}

#[test]
fn allocates_distinct_ips_until_full_and_releases() {
    let ipam = ipam();
    let mut seen = HashSet::new();
    // /28 = 16 addresses: minus network, .1, .10 and the last = 12.
    for _ in 0..12 {
        let mut svc = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
        let a = ipam.allocate(&mut svc).unwrap();
        assert!(seen.insert(a.ips[0]));
        assert_eq!(svc["spec"]["clusterIP"], json!(a.ips[0].to_string()));
    }
    let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
    let errs = ipam.allocate(&mut svc).unwrap_err();
    assert_eq!(errs[0].field, "spec.clusterIPs");
    let first = *seen.iter().next().unwrap();
    ipam.release(&Allocation {
        ips: vec![first],
        node_ports: vec![],
    });
    let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
    assert_eq!(ipam.allocate(&mut svc).unwrap().ips, vec![first]);
}

#[test]
fn requested_ip_must_be_free_and_in_range() {
    let ipam = ipam();
    let mut a = json!({"spec": {"clusterIP": "10.96.0.10"}});
    ipam.allocate(&mut a).unwrap();
    let mut b = json!({"spec": {"clusterIP": "10.96.0.10"}});
    assert!(ipam.allocate(&mut b).unwrap_err()[0]
        .message
        .contains("already allocated"));
    let mut c = json!({"spec": {"clusterIP": "10.97.0.1"}});
    assert!(ipam.allocate(&mut c).unwrap_err()[0]
        .message
        .contains("not in the valid range"));
    let mut headless = json!({"spec": {"clusterIP": "None"}});
    assert!(ipam.allocate(&mut headless).unwrap().ips.is_empty());
}

#[test]
fn node_ports_are_allocated_for_nodeport_services() {
    let ipam = ipam();
    let mut svc = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81, "nodePort": 30080}]}});
    let a = ipam.allocate(&mut svc).unwrap();
    assert_eq!(a.node_ports.len(), 2);
    let p = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
    assert!(NODE_PORT_RANGE.contains(&p));
    let mut dup = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}});
    assert!(ipam.allocate(&mut dup).is_err());
}

fn taken_ports(ipam: &ServiceIpam) -> HashSet<u16> {
    ipam.state.lock().unwrap().ports.clone()
}

#[test]
fn type_change_to_node_port_allocates_and_back_releases() {
    let ipam = ipam();
    let mut old = json!({"spec": {"type": "ClusterIP", "ports": [{"port": 80}]}});
    ipam.allocate(&mut old).unwrap();
    let mut new = old.clone();
    new["spec"]["type"] = json!("NodePort");
    let pending = ipam.reallocate(&old, &mut new).unwrap();
    let p = new["spec"]["ports"][0]["nodePort"].as_u64().unwrap() as u16;
    assert!(NODE_PORT_RANGE.contains(&p));
    assert_eq!(pending.taken.node_ports, vec![p]);
    // The ClusterIP is kept, not re-reserved.
    assert!(pending.taken.ips.is_empty());
    assert_eq!(new["spec"]["clusterIP"], old["spec"]["clusterIP"]);
    pending.commit();
    assert!(taken_ports(&ipam).contains(&p));

    // Back to ClusterIP (the strategy dropped the nodePort): released on commit.
    let mut back = old.clone();
    let pending = ipam.reallocate(&new, &mut back).unwrap();
    assert_eq!(pending.freed.node_ports, vec![p]);
    assert!(taken_ports(&ipam).contains(&p), "freed only on commit");
    pending.commit();
    assert!(!taken_ports(&ipam).contains(&p));
}

#[test]
fn added_port_gets_a_node_port_and_conflicts_name_the_field() {
    let ipam = ipam();
    let mut other =
        json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30100}]}});
    ipam.allocate(&mut other).unwrap();
    let mut old = json!({"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30200}]}});
    ipam.allocate(&mut old).unwrap();

    let mut new = old.clone();
    new["spec"]["ports"]
        .as_array_mut()
        .unwrap()
        .push(json!({"port": 81}));
    let pending = ipam.reallocate(&old, &mut new).unwrap();
    assert_eq!(new["spec"]["ports"][0]["nodePort"], json!(30200));
    let added = new["spec"]["ports"][1]["nodePort"].as_u64().unwrap() as u16;
    assert_eq!(pending.taken.node_ports, vec![added]);
    // Dropped uncommitted (the store write failed): the new port is returned.
    drop(pending);
    assert!(!taken_ports(&ipam).contains(&added));

    let mut clash = old.clone();
    clash["spec"]["ports"]
        .as_array_mut()
        .unwrap()
        .push(json!({"port": 81, "nodePort": 30100}));
    let errs = ipam.reallocate(&old, &mut clash).err().unwrap();
    assert_eq!(errs[0].field, "spec.ports[1].nodePort");
    assert!(
        errs[0].message.contains("already allocated"),
        "{}",
        errs[0].message
    );
}
