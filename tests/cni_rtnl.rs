//! The blocking netlink socket the plugin's ADD runs on sends requests in
//! batches. What the plugin relies on: every request is applied in order,
//! each gets its own answer (an error is reported for the request that
//! caused it, and does not stop the ones behind it), and a socket made for a
//! namespace acts there, not in the namespace of the thread using it.

#[path = "cni_support/mod.rs"]
mod cni_support;

use cni_support::*;
use rtnetlink::packet_route::RouteNetlinkMessage;
use skiff_cni::ipnetwork::IpNetwork;
use skiff_cni::netlink::{self, ENODEV};
use skiff_cni::rtnl::Rtnl;

fn bridge(name: &str) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewLink(rtnetlink::LinkBridge::new(name).build())
}

#[test]
fn a_batch_answers_each_request_in_order_inside_its_namespace() {
    let p = unique("rtnl");
    let ns = NetnsGuard::new(&format!("{p}-ns"));
    let mut nl = Rtnl::open_in(&ns.netns()).expect("socket in the namespace");
    let gw: IpNetwork = "10.86.0.1/24".parse().unwrap();
    let answers = nl
        .batch(vec![
            netlink::create_request(bridge("skd1")),
            netlink::create_request(bridge("skd1")),
            netlink::create_request(RouteNetlinkMessage::NewAddress(netlink::address_message(
                99_999, gw,
            ))),
            netlink::create_request(bridge("skd2")),
        ])
        .expect("the batch went out");
    assert_eq!(answers.len(), 4);
    assert!(answers[0].result.is_ok(), "{:?}", answers[0].result);
    let again = answers[1].result.as_ref().unwrap_err();
    assert!(netlink::is_exists(again), "second create: {again}");
    let missing = answers[2].result.as_ref().unwrap_err();
    assert_eq!(netlink::errno(missing), Some(ENODEV), "{missing}");
    assert!(
        answers[3].result.is_ok(),
        "a failure must not stop later requests: {:?}",
        answers[3].result
    );

    // Both links exist where the socket was made, seen by iproute2.
    let links = ns.links();
    assert!(links.iter().any(|l| l == "skd1"), "{links:?}");
    assert!(links.iter().any(|l| l == "skd2"), "{links:?}");

    // A lookup returns the object with its answer; a missing one is None.
    let l = netlink::link_by_name_blocking(&mut nl, "skd2")
        .expect("lookup")
        .expect("skd2 exists");
    assert_eq!(netlink::name(&l), Some("skd2"));
    assert!(netlink::link_by_name_blocking(&mut nl, "skd9")
        .expect("lookup")
        .is_none());
    assert!(netlink::delete_link_blocking(&mut nl, "skd2", "test").unwrap());
    assert!(!netlink::delete_link_blocking(&mut nl, "skd2", "test").unwrap());
    assert!(!ns.links().iter().any(|l| l == "skd2"));
}
