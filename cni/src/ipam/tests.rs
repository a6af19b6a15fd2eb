use super::*;
use crate::config::{Ipam, NetConf};

fn conf(dir: &Path, ranges: &str) -> BuiltinIpam {
    let text = format!(
        r#"{{"cniVersion":"1.1.0","name":"n","type":"skiff","ipam":{{"type":"skiff","dataDir":"{}","ranges":{ranges}}}}}"#,
        dir.display()
    );
    match NetConf::parse(text.as_bytes()).unwrap().ipam {
        Ipam::Builtin(b) => b,
        Ipam::Delegate { .. } => unreachable!(),
    }
}

fn id(c: &str) -> AttachmentId {
    AttachmentId {
        container_id: c.into(),
        ifname: "eth0".into(),
    }
}

#[test]
fn allocates_distinct_addresses_skipping_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(
        dir.path(),
        r#"[[{"subnet":"10.9.0.0/29"}],[{"subnet":"fd00::/125"}]]"#,
    );
    let s = Store::new(&c, "n");
    let (a, existed) = s.allocate(&c, &id("a")).unwrap();
    assert!(!existed);
    assert_eq!(a[0].address.to_string(), "10.9.0.2/29");
    assert_eq!(a[0].gateway.to_string(), "10.9.0.1");
    assert_eq!(a[1].address.to_string(), "fd00::2/125");
    // Same owner again: same addresses, no new allocation.
    let (again, existed) = s.allocate(&c, &id("a")).unwrap();
    assert!(existed);
    assert_eq!(again, a);
    let mut seen = HashSet::new();
    seen.insert(a[0].address.ip());
    for i in 0..4 {
        let (got, _) = s.allocate(&c, &id(&format!("c{i}"))).unwrap();
        assert!(seen.insert(got[0].address.ip()));
    }
    // /29: .1 gateway, .2-.6 usable (5), .7 broadcast: all used now.
    let e = s.allocate(&c, &id("full")).unwrap_err();
    assert!(matches!(e, IpamError::Exhausted { size: 6, .. }), "{e}");
    assert!(e.to_string().contains("10.9.0.1-10.9.0.6"), "{e}");
    assert_eq!(s.usage(&c).unwrap()[0].free, 0);
}

#[test]
fn release_and_round_robin() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(
        dir.path(),
        r#"[[{"subnet":"10.9.0.0/24","rangeStart":"10.9.0.10","rangeEnd":"10.9.0.12"}]]"#,
    );
    let s = Store::new(&c, "n");
    let first = s.allocate(&c, &id("a")).unwrap().0[0].address.ip();
    assert_eq!(first.to_string(), "10.9.0.10");
    assert_eq!(s.release(&id("a")).unwrap().len(), 1);
    assert!(s.release(&id("a")).unwrap().is_empty());
    // The next allocation moves on instead of reusing the address just freed.
    let second = s.allocate(&c, &id("b")).unwrap().0[0].address.ip();
    assert_eq!(second.to_string(), "10.9.0.11");
    assert_eq!(s.lookup(&id("b")).unwrap(), vec![second]);
}

#[test]
fn gc_keeps_only_valid_attachments() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), r#"[[{"subnet":"10.9.0.0/24"}]]"#);
    let s = Store::new(&c, "n");
    for n in ["a", "b", "c"] {
        s.allocate(&c, &id(n)).unwrap();
    }
    let valid: HashSet<_> = [id("b")].into_iter().collect();
    let gone = s.gc(&valid).unwrap();
    assert_eq!(gone.len(), 2);
    assert_eq!(s.allocations().unwrap().len(), 1);
}

#[test]
fn multi_range_sets_wrap_between_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(
        dir.path(),
        r#"[[{"subnet":"10.9.0.0/30"},{"subnet":"10.9.1.0/30"}]]"#,
    );
    let s = Store::new(&c, "n");
    let a = s.allocate(&c, &id("a")).unwrap().0[0].address.ip();
    let b = s.allocate(&c, &id("b")).unwrap().0[0].address.ip();
    assert_eq!(
        (a.to_string(), b.to_string()),
        ("10.9.0.2".into(), "10.9.1.2".into())
    );
    assert!(s.allocate(&c, &id("c")).is_err());
}

#[test]
fn stores_of_older_versions_and_long_owners_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(
        dir.path(),
        r#"[[{"subnet":"10.9.0.0/24","rangeStart":"10.9.0.10","rangeEnd":"10.9.0.20"}]]"#,
    );
    let s = Store::new(&c, "n");
    fs::create_dir_all(s.dir()).unwrap();
    // The older format: owner only in the symlink target, pointer as a symlink.
    std::os::unix::fs::symlink("old/eth0", s.dir().join("ip-10.9.0.10")).unwrap();
    std::os::unix::fs::symlink("10.9.0.10", s.dir().join("last-0")).unwrap();
    assert_eq!(
        s.lookup(&id("old")).unwrap(),
        vec!["10.9.0.10".parse::<IpAddr>().unwrap()]
    );
    // Round robin continues after the old pointer; the old pointer file goes.
    let long = "x".repeat(240);
    let got = s.allocate(&c, &id(&long)).unwrap().0[0].address.ip();
    assert_eq!(got.to_string(), "10.9.0.11");
    assert!(!s.dir().join("last-0").exists());
    assert_eq!(s.lookup(&id(&long)).unwrap(), vec![got]);
    let next = s.allocate(&c, &id("new")).unwrap().0[0].address.ip();
    assert_eq!(next.to_string(), "10.9.0.12");
    // Every format is released by its owner.
    for owner in ["old", long.as_str(), "new"] {
        assert_eq!(s.release(&id(owner)).unwrap().len(), 1, "{owner}");
    }
    let left: Vec<_> = fs::read_dir(s.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, vec!["lock"]);
}

#[test]
fn corrupt_state_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let c = conf(dir.path(), r#"[[{"subnet":"10.9.0.0/24"}]]"#);
    let s = Store::new(&c, "n");
    fs::create_dir_all(s.dir()).unwrap();
    fs::write(s.dir().join("ip-10.9.0.7"), b"oops").unwrap();
    assert!(matches!(
        s.allocate(&c, &id("a")),
        Err(IpamError::Corrupt { .. })
    ));
}

#[test]
fn address_arithmetic() {
    assert_eq!(
        add("10.0.0.255".parse().unwrap(), 1).to_string(),
        "10.0.1.0"
    );
    assert_eq!(
        add("fd00::".parse().unwrap(), -1).to_string(),
        "fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    );
    assert_eq!(
        last_addr(&"fd00::/64".parse().unwrap()).to_string(),
        "fd00::ffff:ffff:ffff:ffff"
    );
}
