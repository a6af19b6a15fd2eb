use super::*;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::EndpointConditions;

fn template() -> SliceTemplate {
    SliceTemplate {
        namespace: "default".into(),
        generate_name: "web-".into(),
        labels: [("kubernetes.io/service-name".to_string(), "web".to_string())].into(),
        owner: OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: "web".into(),
            uid: "svc-uid".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        },
        placeholder_type: AddressType::V4,
    }
}

fn group(port: i32) -> GroupKey {
    GroupKey {
        address_type: AddressType::V4,
        ports: vec![PortKey {
            name: String::new(),
            port,
            protocol: "TCP".into(),
            app_protocol: None,
        }],
    }
}

fn ep(i: usize, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![format!("10.0.{}.{}", i / 200, i % 200)],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some(format!("p{i}")),
            namespace: Some("default".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn desired(port: i32, range: std::ops::Range<usize>) -> BTreeMap<GroupKey, Vec<Endpoint>> {
    [(group(port), range.map(|i| ep(i, true)).collect())].into()
}

/// Applies a plan the way the API server would: names created slices.
fn stored(plan: Plan, keep: Vec<EndpointSlice>) -> Vec<EndpointSlice> {
    let deleted: Vec<_> = plan
        .delete
        .iter()
        .map(|s| s.metadata.name.clone())
        .collect();
    let updated: Vec<_> = plan
        .update
        .iter()
        .map(|s| s.metadata.name.clone())
        .collect();
    let mut out: Vec<EndpointSlice> = keep
        .into_iter()
        .filter(|s| !deleted.contains(&s.metadata.name) && !updated.contains(&s.metadata.name))
        .collect();
    out.extend(plan.update);
    for (i, mut s) in plan.create.into_iter().enumerate() {
        s.metadata.name = Some(format!("web-new{i}-{}", out.len()));
        out.push(s);
    }
    out
}

fn sizes(slices: &[EndpointSlice]) -> Vec<usize> {
    let mut v: Vec<usize> = slices.iter().map(|s| endpoints(s).len()).collect();
    v.sort();
    v
}

#[test]
fn splits_at_the_maximum() {
    let plan = plan(
        &template(),
        vec![],
        desired(80, 0..150),
        MAX_ENDPOINTS_PER_SLICE,
    );
    assert_eq!(plan.create.len(), 2);
    assert!(plan.update.is_empty() && plan.delete.is_empty());
    assert_eq!(sizes(&plan.create), vec![50, 100]);
    let created = &plan.create[0];
    assert_eq!(created.metadata.generate_name.as_deref(), Some("web-"));
    assert_eq!(
        created.metadata.owner_references.as_ref().map(Vec::len),
        Some(1)
    );
    assert_eq!(created.address_type, "IPv4");
}

#[test]
fn steady_state_writes_nothing() {
    let t = template();
    let first = stored(plan(&t, vec![], desired(80, 0..150), 100), vec![]);
    let again = plan(&t, first, desired(80, 0..150), 100);
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn one_changed_endpoint_rewrites_only_its_slice() {
    let t = template();
    let slices = stored(plan(&t, vec![], desired(80, 0..150), 100), vec![]);
    let mut want = desired(80, 0..150);
    want.values_mut().for_each(|eps| eps[3] = ep(3, false));
    let p = plan(&t, slices, want, 100);
    assert!(p.create.is_empty() && p.delete.is_empty());
    assert_eq!(p.update.len(), 1);
    let updated = endpoints(&p.update[0]);
    let three = updated
        .iter()
        .find(|e| endpoint_key(e) == endpoint_key(&ep(3, true)))
        .expect("kept");
    assert_eq!(three.conditions.as_ref().and_then(|c| c.ready), Some(false));
}

#[test]
fn new_endpoints_fill_the_fullest_slice_that_fits() {
    let t = template();
    let slices = stored(plan(&t, vec![], desired(80, 0..150), 100), vec![]);
    let p = plan(&t, slices.clone(), desired(80, 0..160), 100);
    assert!(p.create.is_empty() && p.delete.is_empty());
    assert_eq!(p.update.len(), 1);
    assert_eq!(endpoints(&p.update[0]).len(), 60);
    // More than fit: a full new slice, the rest into the half-empty one.
    let p = plan(&t, slices.clone(), desired(80, 0..260), 100);
    assert_eq!((p.create.len(), p.update.len()), (1, 1));
    assert_eq!(endpoints(&p.create[0]).len(), 100);
    assert_eq!(endpoints(&p.update[0]).len(), 60);
    assert_eq!(sizes(&stored(p, slices)), vec![60, 100, 100]);
}

#[test]
fn removed_endpoints_shrink_slices_and_empty_ones_go() {
    let t = template();
    let slices = stored(plan(&t, vec![], desired(80, 0..150), 100), vec![]);
    let p = plan(&t, slices.clone(), desired(80, 100..150), 100);
    // The ordering of the BTreeMap puts endpoints 0..100 by address first.
    let total: usize = p.update.iter().map(|s| endpoints(s).len()).sum::<usize>()
        + p.create.iter().map(|s| endpoints(s).len()).sum::<usize>();
    assert!(total <= 50);
    let after = stored(p, slices);
    assert_eq!(sizes(&after).iter().sum::<usize>(), 50);
}

#[test]
fn port_change_moves_endpoints_to_a_new_group() {
    let t = template();
    let slices = stored(plan(&t, vec![], desired(80, 0..10), 100), vec![]);
    let p = plan(&t, slices, desired(8080, 0..10), 100);
    assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (1, 0, 1));
    let port = p.create[0].ports.as_ref().and_then(|ps| ps[0].port);
    assert_eq!(port, Some(8080));
}

#[test]
fn no_endpoints_keeps_one_placeholder() {
    let t = template();
    let p = plan(&t, vec![], BTreeMap::new(), 100);
    assert_eq!(p.create.len(), 1);
    assert_eq!(endpoints(&p.create[0]).len(), 0);
    assert_eq!(p.create[0].ports.as_ref().map(Vec::len), Some(0));
    let placeholder = stored(p, vec![]);
    // The placeholder stays as it is.
    assert!(plan(&t, placeholder.clone(), BTreeMap::new(), 100).is_empty());
    // Endpoints appear: the placeholder goes, a real slice comes.
    let p = plan(&t, placeholder.clone(), desired(80, 0..3), 100);
    assert_eq!((p.create.len(), p.delete.len()), (1, 1));
    // They go again: the real slice is replaced by a placeholder.
    let with_eps = stored(p, placeholder);
    let p = plan(&t, with_eps, BTreeMap::new(), 100);
    assert_eq!((p.create.len(), p.delete.len()), (1, 1));
}

#[test]
fn slices_of_another_owner_or_stale_labels_are_fixed() {
    let t = template();
    let mut slices = stored(plan(&t, vec![], desired(80, 0..10), 100), vec![]);
    let mut foreign = slices[0].clone();
    foreign.metadata.name = Some("web-old".into());
    if let Some(owner) = foreign
        .metadata
        .owner_references
        .as_mut()
        .and_then(|o| o.first_mut())
    {
        owner.uid = "previous-service-uid".into();
    }
    slices[0].metadata.labels = Some(BTreeMap::new());
    slices.push(foreign);
    let p = plan(&t, slices, desired(80, 0..10), 100);
    assert_eq!(
        p.delete
            .iter()
            .map(|s| s.metadata.name.as_deref())
            .collect::<Vec<_>>(),
        vec![Some("web-old")]
    );
    assert_eq!(p.update.len(), 1);
    assert_eq!(p.update[0].metadata.labels.as_ref(), Some(&t.labels));
}

#[test]
fn duplicates_across_slices_are_dropped() {
    let t = template();
    let a = stored(plan(&t, vec![], desired(80, 0..5), 100), vec![]);
    let mut b = a[0].clone();
    b.metadata.name = Some("web-dup".into());
    let p = plan(&t, vec![a[0].clone(), b], desired(80, 0..5), 100);
    assert_eq!(p.delete.len(), 1);
    assert!(p.create.is_empty() && p.update.is_empty());
}
