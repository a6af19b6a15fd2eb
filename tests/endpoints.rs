//! The EndpointSlice controller inside `skiff server`, seen from the API:
//! Services and pods are created, the test plays the kubelet by writing pod
//! status (podIP, Ready condition) through `pods/status`, and checks the
//! EndpointSlices and legacy Endpoints the controller writes.
//!
//! Each test runs its own server (`fake_cluster`) with only the
//! endpointslice controller enabled, so nothing else touches the pods.

mod fake_cluster;
#[path = "endpoints/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use fake_cluster::eventually;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_follow_readiness_and_termination() {
    let (_server, client) = start().await;
    let ns = "eps-ready";
    create_namespace(&client, ns).await;
    let svc = create_service(
        &client,
        ns,
        "web",
        json!({"selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
    )
    .await;

    // No pods yet: one empty placeholder slice, owned by the Service.
    let placeholder = eventually("a placeholder slice", || async {
        match slices(&client, ns, "web").await.as_slice() {
            [s] if s.endpoints.as_ref().is_none_or(Vec::is_empty) => Ok(s.clone()),
            other => Err(format!("{} slices", other.len())),
        }
    })
    .await;
    let owner = &placeholder
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("Service", "web", Some(true))
    );
    assert_eq!(Some(&owner.uid), svc.metadata.uid.as_ref());
    assert!(placeholder
        .metadata
        .name
        .as_deref()
        .is_some_and(|n| n.starts_with("web-")));
    assert_eq!(
        placeholder
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("tier"))
            .map(String::as_str),
        Some("test")
    );
    // Upstream's trigger time for network-programming latency: the first
    // slice of a new Service carries the Service's creation time.
    let created = svc.metadata.creation_timestamp.clone().expect("created").0;
    assert_eq!(
        trigger_time(&placeholder),
        Some(created.to_string()),
        "{:?}",
        placeholder.metadata.annotations
    );

    let pod = create_pod(
        &client,
        ns,
        "web-1",
        "node-a",
        json!({"finalizers": ["skiff.test/hold"]}),
        json!({}),
    )
    .await;
    set_pod_status(&client, ns, "web-1", "10.244.1.10", false).await;
    let ep = endpoint_with(&client, ns, "web", "10.244.1.10", (false, false, false)).await;
    assert_eq!(ep.node_name.as_deref(), Some("node-a"));
    let target = ep.target_ref.expect("targetRef");
    assert_eq!(
        (target.kind.as_deref(), target.name.as_deref()),
        (Some("Pod"), Some("web-1"))
    );
    assert_eq!(target.uid, pod.metadata.uid);
    legacy_is(&client, ns, "web", &[], &["10.244.1.10"]).await;

    let became_ready = "2031-05-06T07:08:09Z";
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(
                &json!({"status": {"conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": became_ready}]}}),
            ),
        )
        .await
        .expect("mark the pod Ready");
    endpoint_with(&client, ns, "web", "10.244.1.10", (true, true, false)).await;
    legacy_is(&client, ns, "web", &["10.244.1.10"], &[]).await;
    let ready_slices = slices(&client, ns, "web").await;
    assert_eq!(
        ready_slices.len(),
        1,
        "the placeholder is replaced, not kept next to the real slice"
    );
    let ports = ready_slices[0].ports.clone().unwrap_or_default();
    assert_eq!(
        ready_slices.iter().map(trigger_time).collect::<Vec<_>>(),
        [Some(became_ready.to_string())],
        "the pod's Ready transition is the change this slice write publishes"
    );
    assert_eq!(
        (ports[0].name.as_deref(), ports[0].port),
        (Some("http"), Some(8080))
    );

    // Deleted while held by the finalizer: terminating, still serving, not ready.
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    pods.delete("web-1", &DeleteParams::default())
        .await
        .expect("delete pod");
    endpoint_with(&client, ns, "web", "10.244.1.10", (false, true, true)).await;
    legacy_is(&client, ns, "web", &[], &[]).await;

    // Gone for good: back to the placeholder.
    pods.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop finalizer");
    let _ = pods
        .delete(
            "web-1",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await;
    eventually("the endpoint to go", || async {
        let eps = all_endpoints(&slices(&client, ns, "web").await);
        if eps.is_empty() {
            Ok(())
        } else {
            Err(format!("{} endpoints", eps.len()))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_services_split_into_slices_of_at_most_100() {
    let (_server, client) = start().await;
    let ns = "eps-scale";
    create_namespace(&client, ns).await;
    create_service(
        &client,
        ns,
        "big",
        json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..150 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let name = format!("big-{i}");
            create_pod(&client, ns, &name, "node-a", json!({}), json!({})).await;
            set_pod_status(
                &client,
                ns,
                &name,
                &format!("10.244.{}.{}", 2 + i / 200, i % 200 + 1),
                true,
            )
            .await;
        }));
    }
    for task in tasks {
        task.await.expect("pod task");
    }
    let sizes = eventually("150 endpoints in 2 slices", || async {
        let slices = slices(&client, ns, "big").await;
        let mut sizes: Vec<usize> = slices
            .iter()
            .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
            .collect();
        sizes.sort();
        if sizes.iter().sum::<usize>() == 150 && sizes.len() == 2 {
            Ok(sizes)
        } else {
            Err(format!("{sizes:?}"))
        }
    })
    .await;
    assert!(sizes.iter().all(|&n| n <= 100), "{sizes:?}");
    let ready = eventually("150 ready legacy addresses", || async {
        match legacy(&client, ns, "big").await {
            Some((ready, not_ready)) if ready.len() == 150 && not_ready.is_empty() => Ok(ready),
            other => Err(format!("{:?}", other.map(|(r, n)| (r.len(), n.len())))),
        }
    })
    .await;
    assert_eq!(ready.len(), 150);

    // Steady state: the slices are not rewritten.
    let versions = |s: &[EndpointSlice]| -> Vec<Option<String>> {
        let mut v: Vec<_> = s
            .iter()
            .map(|s| s.metadata.resource_version.clone())
            .collect();
        v.sort();
        v
    };
    let before = versions(&slices(&client, ns, "big").await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(before, versions(&slices(&client, ns, "big").await));

    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    for i in 0..120 {
        pods.delete(
            &format!("big-{i}"),
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("delete pod");
    }
    eventually("30 endpoints left", || async {
        let total = all_endpoints(&slices(&client, ns, "big").await).len();
        if total == 30 {
            Ok(())
        } else {
            Err(format!("{total}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_ports_hostnames_zones_and_publish_not_ready() {
    let (_server, client) = start().await;
    let ns = "eps-ports";
    create_namespace(&client, ns).await;
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "zoned",
        "labels": {"topology.kubernetes.io/zone": "zone-a"}}}))
    .expect("node");
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");

    create_service(
        &client,
        ns,
        "web",
        json!({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}),
    )
    .await;
    create_pod(&client, ns, "a", "zoned", json!({}), json!({})).await;
    let other_port = json!({"containers": [{"name": "app", "image": "x", "ports": [{"name": "http", "containerPort": 9090}]}]});
    create_pod(&client, ns, "b", "node-b", json!({}), other_port).await;
    set_pod_status(&client, ns, "a", "10.244.5.1", true).await;
    set_pod_status(&client, ns, "b", "10.244.5.2", true).await;
    let by_port = eventually("one slice per resolved port", || async {
        let slices = slices(&client, ns, "web").await;
        let mut by_port: BTreeMap<i32, Vec<String>> = BTreeMap::new();
        for s in &slices {
            let port = s
                .ports
                .as_ref()
                .and_then(|p| p.first())
                .and_then(|p| p.port)
                .unwrap_or(0);
            for ep in s.endpoints.iter().flatten() {
                by_port
                    .entry(port)
                    .or_default()
                    .extend(ep.addresses.clone());
            }
        }
        if by_port.len() == 2 {
            Ok(by_port)
        } else {
            Err(format!("{by_port:?}"))
        }
    })
    .await;
    assert_eq!(by_port.get(&8080), Some(&vec!["10.244.5.1".to_string()]));
    assert_eq!(by_port.get(&9090), Some(&vec!["10.244.5.2".to_string()]));
    let a = endpoint_with(&client, ns, "web", "10.244.5.1", (true, true, false)).await;
    assert_eq!(a.zone.as_deref(), Some("zone-a"));

    // Headless Service: hostname only for pods whose subdomain names it.
    create_service(
        &client,
        ns,
        "db",
        json!({"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 5432}]}),
    )
    .await;
    let db = |host: &str, subdomain: &str| json!({"hostname": host, "subdomain": subdomain});
    create_pod(
        &client,
        ns,
        "db-0",
        "node-a",
        json!({"labels": {"app": "db"}}),
        db("db-0", "db"),
    )
    .await;
    create_pod(
        &client,
        ns,
        "db-1",
        "node-a",
        json!({"labels": {"app": "db"}}),
        db("db-1", "elsewhere"),
    )
    .await;
    set_pod_status(&client, ns, "db-0", "10.244.6.1", true).await;
    set_pod_status(&client, ns, "db-1", "10.244.6.2", true).await;
    let db0 = endpoint_with(&client, ns, "db", "10.244.6.1", (true, true, false)).await;
    let db1 = endpoint_with(&client, ns, "db", "10.244.6.2", (true, true, false)).await;
    assert_eq!(
        (db0.hostname.as_deref(), db1.hostname),
        (Some("db-0"), None)
    );
    let labels = slices(&client, ns, "db").await[0]
        .metadata
        .labels
        .clone()
        .unwrap_or_default();
    assert!(
        labels.contains_key("service.kubernetes.io/headless"),
        "{labels:?}"
    );

    // publishNotReadyAddresses: a not-ready pod is published as ready.
    create_service(
        &client,
        ns,
        "peers",
        json!({"selector": {"app": "peer"}, "publishNotReadyAddresses": true,
        "ports": [{"port": 7000}]}),
    )
    .await;
    create_pod(
        &client,
        ns,
        "peer-0",
        "node-a",
        json!({"labels": {"app": "peer"}}),
        json!({}),
    )
    .await;
    set_pod_status(&client, ns, "peer-0", "10.244.7.1", false).await;
    endpoint_with(&client, ns, "peers", "10.244.7.1", (true, false, false)).await;
    legacy_is(&client, ns, "peers", &["10.244.7.1"], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_without_selector_are_left_to_users() {
    let (_server, client) = start().await;
    let ns = "eps-manual";
    create_namespace(&client, ns).await;
    create_service(&client, ns, "manual", json!({"ports": [{"port": 80}]})).await;
    let user_slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "manual-1", "labels": {"kubernetes.io/service-name": "manual",
            "endpointslice.kubernetes.io/managed-by": "someone-else"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.10"]}],
        "ports": [{"port": 80}],
    }))
    .expect("slice");
    let slices_api = Api::<EndpointSlice>::namespaced(client.clone(), ns);
    let user_slice = slices_api
        .create(&PostParams::default(), &user_slice)
        .await
        .expect("create user slice");
    let user_endpoints: Endpoints = serde_json::from_value(json!({"metadata": {"name": "manual"},
        "subsets": [{"addresses": [{"ip": "192.0.2.10"}], "ports": [{"port": 80}]}]}))
    .expect("endpoints");
    let endpoints_api = Api::<Endpoints>::namespaced(client.clone(), ns);
    let user_endpoints = endpoints_api
        .create(&PostParams::default(), &user_endpoints)
        .await
        .expect("create endpoints");
    let kubernetes_before = Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
        .await
        .expect("list default slices")
        .items;

    // A Service with a selector created afterwards gets its slice: by then
    // the controller has seen the selector-less one too.
    create_service(
        &client,
        ns,
        "auto",
        json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}),
    )
    .await;
    eventually("the slice of the selected service", || async {
        let n = slices(&client, ns, "auto").await.len();
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} slices"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        slices(&client, ns, "manual").await.is_empty(),
        "no controller slices for a selector-less service"
    );
    let still = slices_api
        .get("manual-1")
        .await
        .expect("user slice survives");
    assert_eq!(
        still.metadata.resource_version,
        user_slice.metadata.resource_version
    );
    let still = endpoints_api
        .get("manual")
        .await
        .expect("user endpoints survive");
    assert_eq!(
        still.metadata.resource_version,
        user_endpoints.metadata.resource_version
    );
    let kubernetes_after = Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
        .await
        .expect("list default slices")
        .items;
    let versions = |s: &[EndpointSlice]| {
        s.iter()
            .map(|s| s.metadata.resource_version.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        versions(&kubernetes_before),
        versions(&kubernetes_after),
        "the API server's own slice is untouched"
    );
    assert_eq!(kubernetes_after.len(), 1);

    // Deleting a Service removes its slices and Endpoints.
    assert!(legacy(&client, ns, "auto").await.is_some());
    Api::<Service>::namespaced(client.clone(), ns)
        .delete("auto", &DeleteParams::default())
        .await
        .expect("delete service");
    eventually(
        "slices and Endpoints of a deleted service to go",
        || async {
            let n = slices(&client, ns, "auto").await.len();
            let legacy = legacy(&client, ns, "auto").await;
            if n == 0 && legacy.is_none() {
                Ok(())
            } else {
                Err(format!("{n} slices, endpoints {legacy:?}"))
            }
        },
    )
    .await;
}
