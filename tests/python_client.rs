//! The official Kubernetes Python client (`kubernetes` from PyPI) against
//! `skiff server` on both stores: tests/python/client_scenario.py lists,
//! creates, patches, watches and deletes pods and services.

mod common;

use common::{expect_success, StoreKind, TestServer};

fn run_scenario(store: StoreKind) {
    let server = TestServer::start(store);
    let out = expect_success(
        "tests/python/client_scenario.py",
        server.python("client_scenario.py", &[]),
    );
    assert!(
        out.lines().any(|l| l.ends_with("] OK")),
        "the Python scenario did not finish:\n{out}"
    );
}

#[test]
fn python_client_redb() {
    run_scenario(StoreKind::Redb);
}

#[test]
fn python_client_etcd() {
    run_scenario(StoreKind::Etcd);
}
