use super::*;

fn parse(s: &str) -> Result<NetConf, CniError> {
    NetConf::parse(s.as_bytes())
}

const GOOD: &str = r#"{"cniVersion":"1.1.0","name":"skiff","type":"skiff","bridge":"skiff0","mtu":1500,"ipMasq":true,"hairpinMode":true,"ipam":{"type":"skiff","ranges":[[{"subnet":"10.244.1.0/24"}],[{"subnet":"fd00:10:244:1::/64"}]],"routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0"}],"dataDir":"/tmp/x"}}"#;

#[test]
fn parses_the_issue_example() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.bridge, "skiff0");
    assert!(c.ip_masq && c.hairpin_mode);
    let Ipam::Builtin(b) = &c.ipam else { panic!() };
    assert_eq!(b.range_sets.len(), 2);
    let r = &b.range_sets[0].0[0];
    assert_eq!(r.gateway, "10.244.1.1".parse::<IpAddr>().unwrap());
    assert_eq!(r.start, "10.244.1.1".parse::<IpAddr>().unwrap());
    assert_eq!(r.end, "10.244.1.254".parse::<IpAddr>().unwrap());
    assert_eq!(b.routes.len(), 2);
    assert_eq!(b.data_dir, PathBuf::from("/tmp/x"));
}

#[test]
fn defaults_and_legacy_subnet() {
    let c = parse(r#"{"cniVersion":"0.3.1","name":"n","type":"skiff","ipam":{"type":"skiff","subnet":"10.1.2.3/16","gateway":"10.1.0.254"}}"#).unwrap();
    assert_eq!(c.bridge, DEFAULT_BRIDGE);
    assert!(!c.ip_masq);
    let Ipam::Builtin(b) = &c.ipam else { panic!() };
    assert_eq!(b.range_sets[0].0[0].subnet.to_string(), "10.1.0.0/16");
    assert_eq!(b.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
}

#[test]
fn unknown_keys_are_code_2_with_path() {
    let e = parse(&GOOD.replace("\"hairpinMode\"", "\"hairpinMod\"")).unwrap_err();
    assert_eq!(e.code, Code::UnsupportedField);
    assert!(e.msg.contains("hairpinMod"), "{}", e.msg);
    let e = parse(&GOOD.replace("\"dataDir\"", "\"datadir\"")).unwrap_err();
    assert_eq!(e.code, Code::UnsupportedField);
    assert!(e.msg.contains("ipam"), "{}", e.msg);
}

#[test]
fn bad_input_codes() {
    assert_eq!(parse("{not json").unwrap_err().code, Code::Decode);
    assert_eq!(
        parse(&GOOD.replace("1.1.0", "7.0.0")).unwrap_err().code,
        Code::IncompatibleVersion
    );
    let e = parse(&GOOD.replace("10.244.1.0/24", "10.244.1.0/33")).unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig);
    assert!(e.msg.contains("not a valid subnet"), "{}", e.msg);
    let e = parse(&GOOD.replace("10.244.1.0/24", "10.244.1.0/31")).unwrap_err();
    assert!(e.msg.contains("too small"), "{}", e.msg);
    assert_eq!(
        parse(&GOOD.replace("\"mtu\":1500", "\"mtu\":\"big\""))
            .unwrap_err()
            .code,
        Code::InvalidConfig
    );
    assert_eq!(
        parse(&GOOD.replace("\"mtu\":1500", "\"mtu\":1000"))
            .unwrap_err()
            .code,
        Code::InvalidConfig
    );
    assert_eq!(
        parse(&GOOD.replace("skiff0", "a-very-long-bridge-name"))
            .unwrap_err()
            .code,
        Code::InvalidConfig
    );
    assert_eq!(
        parse(&GOOD.replace("\"name\":\"skiff\"", "\"name\":\"-x\""))
            .unwrap_err()
            .code,
        Code::InvalidConfig
    );
}

#[test]
fn overlapping_ranges_and_orphan_routes_are_rejected() {
    let e = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"skiff","ipam":{"type":"skiff","ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.0/25"}]]}}"#).unwrap_err();
    assert!(e.msg.contains("overlap"), "{}", e.msg);
    let e = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"skiff","ipam":{"type":"skiff","ranges":[[{"subnet":"10.0.0.0/24"}]],"routes":[{"dst":"::/0"}]}}"#).unwrap_err();
    assert!(e.msg.contains("no range of its family"), "{}", e.msg);
}

#[test]
fn delegated_ipam_accepts_its_own_keys() {
    let c = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"skiff","ipam":{"type":"host-local","whatever":1}}"#).unwrap();
    assert!(matches!(c.ipam, Ipam::Delegate { ref plugin, .. } if plugin == "host-local"));
    let e = parse(r#"{"cniVersion":"1.0.0","name":"n","type":"skiff","ipam":{"type":"../x"}}"#)
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig);
}

#[test]
fn runtime_keys_and_gc_list_are_accepted() {
    let c = parse(r#"{"cniVersion":"1.1.0","name":"n","type":"skiff","args":{"a":1},"runtimeConfig":{},"capabilities":{},"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}],"ipam":{"type":"skiff","ranges":[[{"subnet":"10.0.0.0/24"}]]}}"#).unwrap();
    assert_eq!(c.valid_attachments.unwrap()[0].container_id, "c1");
}

#[test]
fn masq_exclude_defaults_to_the_subnet() {
    let c = parse(GOOD).unwrap();
    let a: IpNetwork = "10.244.1.7/24".parse().unwrap();
    assert_eq!(c.masq_exclude(&a).to_string(), "10.244.1.0/24");
    let c = parse(&GOOD.replace(
        "\"ipMasq\":true",
        "\"ipMasq\":true,\"clusterCIDRs\":[\"10.244.0.0/16\"]",
    ))
    .unwrap();
    assert_eq!(c.masq_exclude(&a).to_string(), "10.244.0.0/16");
}

#[test]
fn static_ip_requests_from_runtime_config_and_args() {
    let conf = |extra: &str| {
        format!(
            r#"{{"cniVersion":"1.1.0","name":"n","type":"skiff",{extra}"ipam":{{"type":"skiff","ranges":[[{{"subnet":"10.0.0.0/24"}}]]}}}}"#
        )
    };
    let c = parse(&conf(
        r#""runtimeConfig":{"ips":["10.0.0.9/24"],"portMappings":[]},"args":{"cni":{"ips":["10.0.0.10"]}},"#,
    ))
    .unwrap();
    let want: Vec<std::net::IpAddr> =
        vec!["10.0.0.9".parse().unwrap(), "10.0.0.10".parse().unwrap()];
    assert_eq!(c.requested_ips, want);
    assert!(parse(&conf("")).unwrap().requested_ips.is_empty());
    let e = parse(&conf(r#""runtimeConfig":{"ips":["10.0.0.300"]},"#)).unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig);
    assert!(e.msg.contains("runtimeConfig.ips[0]"), "{}", e.msg);
    let e = parse(&conf(r#""runtimeConfig":{"ips":"10.0.0.9"},"#)).unwrap_err();
    assert!(e.msg.contains("must be a list"), "{}", e.msg);
}
