//! Packing endpoints into EndpointSlices with as little churn as upstream's
//! reconciler: existing slices keep the endpoints that are still wanted and
//! are rewritten only when something in them changed; new endpoints first
//! fill slices already being rewritten, then the fullest unchanged slice
//! that can take all of them, then new slices; empty slices go. A Service
//! with no endpoints at all keeps one empty placeholder slice. Pure: the
//! caller applies the [`Plan`].

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::desired::{AddressType, GroupKey, PortKey};

/// Most endpoints in one slice (upstream's `--max-endpoints-per-slice` default).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// What every slice of one Service carries.
#[derive(Debug, Clone)]
pub struct SliceTemplate {
    /// Namespace of the Service.
    pub namespace: String,
    /// `<service>-`.
    pub generate_name: String,
    /// Labels every slice must have, exactly.
    pub labels: BTreeMap<String, String>,
    /// The controller reference to the Service.
    pub owner: OwnerReference,
    /// Address type of the placeholder slice.
    pub placeholder_type: AddressType,
}

impl SliceTemplate {
    fn new_slice(&self, group: &GroupKey) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(self.generate_name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(self.labels.clone()),
                owner_references: Some(vec![self.owner.clone()]),
                ..Default::default()
            },
            address_type: group.address_type.as_str().to_string(),
            endpoints: Some(Vec::new()),
            ports: Some(group.ports.iter().map(PortKey::to_slice_port).collect()),
        }
    }

    fn owns(&self, slice: &EndpointSlice) -> bool {
        slice
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == self.owner.uid && r.controller == Some(true))
    }

    /// Metadata that differs from the template (labels, owner).
    fn metadata_stale(&self, slice: &EndpointSlice) -> bool {
        slice.metadata.labels.as_ref() != Some(&self.labels)
            || slice.metadata.owner_references.as_deref() != Some(std::slice::from_ref(&self.owner))
    }

    fn is_placeholder(&self, slice: &EndpointSlice) -> bool {
        endpoints(slice).is_empty()
            && slice.ports.as_ref().is_none_or(Vec::is_empty)
            && slice.address_type == self.placeholder_type.as_str()
            && !self.metadata_stale(slice)
    }
}

/// The writes that bring a Service's slices to the desired state.
#[derive(Debug, Default)]
pub struct Plan {
    /// New slices (named by `generateName`).
    pub create: Vec<EndpointSlice>,
    /// Existing slices rewritten in place (carrying their resourceVersion).
    pub update: Vec<EndpointSlice>,
    /// Existing slices to delete.
    pub delete: Vec<EndpointSlice>,
}

impl Plan {
    /// True when nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// The identity of an endpoint across reconciles: its first address and pod.
fn endpoint_key(ep: &Endpoint) -> (String, String, String) {
    let target = ep.target_ref.as_ref();
    (
        ep.addresses.first().cloned().unwrap_or_default(),
        target.and_then(|t| t.namespace.clone()).unwrap_or_default(),
        target.and_then(|t| t.name.clone()).unwrap_or_default(),
    )
}

fn endpoints(slice: &EndpointSlice) -> &[Endpoint] {
    slice.endpoints.as_deref().unwrap_or_default()
}

fn group_of(slice: &EndpointSlice) -> Option<GroupKey> {
    let mut ports: Vec<PortKey> = slice
        .ports
        .iter()
        .flatten()
        .map(PortKey::from_slice_port)
        .collect();
    ports.sort();
    Some(GroupKey {
        address_type: AddressType::parse(&slice.address_type)?,
        ports,
    })
}

/// Plans the writes turning `existing` (the Service's current slices) into
/// `desired` endpoints, at most `max` per slice.
pub fn plan(
    template: &SliceTemplate,
    mut existing: Vec<EndpointSlice>,
    desired: BTreeMap<GroupKey, Vec<Endpoint>>,
    max: usize,
) -> Plan {
    let max = max.max(1);
    existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let existing_count = existing.len();
    let mut remaining: BTreeMap<GroupKey, BTreeMap<(String, String, String), Endpoint>> = desired
        .into_iter()
        .map(|(group, eps)| {
            (
                group,
                eps.into_iter().map(|ep| (endpoint_key(&ep), ep)).collect(),
            )
        })
        .collect();
    let mut plan = Plan::default();
    let mut updated: Vec<(GroupKey, EndpointSlice)> = Vec::new();
    let mut unchanged: BTreeMap<GroupKey, Vec<EndpointSlice>> = BTreeMap::new();

    // 1. Keep the wanted endpoints of each existing slice, in their order.
    for mut slice in existing {
        let group = match group_of(&slice) {
            Some(group) if template.owns(&slice) => group,
            _ => {
                plan.delete.push(slice);
                continue;
            }
        };
        let mut wanted = remaining.get_mut(&group);
        let mut kept = Vec::new();
        let mut changed = false;
        for ep in endpoints(&slice) {
            match wanted.as_mut().and_then(|w| w.remove(&endpoint_key(ep))) {
                Some(desired) => {
                    changed |= &desired != ep;
                    kept.push(desired);
                }
                None => changed = true,
            }
        }
        if kept.is_empty() {
            plan.delete.push(slice);
        } else if changed || template.metadata_stale(&slice) {
            slice.endpoints = Some(kept);
            slice.metadata.labels = Some(template.labels.clone());
            slice.metadata.owner_references = Some(vec![template.owner.clone()]);
            updated.push((group, slice));
        } else {
            unchanged.entry(group).or_default().push(slice);
        }
    }

    // 2. New endpoints first fill slices that are rewritten anyway.
    for (group, slice) in &mut updated {
        if let Some(wanted) = remaining.get_mut(group) {
            fill(slice, wanted, max);
        }
    }

    // 3. Then the fullest unchanged slice that takes all the rest, else new slices.
    for (group, mut wanted) in remaining {
        while !wanted.is_empty() {
            let candidates = unchanged.entry(group.clone()).or_default();
            let fits = candidates
                .iter()
                .enumerate()
                .filter(|(_, s)| endpoints(s).len() + wanted.len() <= max)
                .max_by_key(|(_, s)| endpoints(s).len())
                .map(|(i, _)| i);
            match fits {
                Some(i) if wanted.len() < max => {
                    let mut slice = candidates.swap_remove(i);
                    fill(&mut slice, &mut wanted, max);
                    updated.push((group.clone(), slice));
                }
                _ => {
                    let mut slice = template.new_slice(&group);
                    fill(&mut slice, &mut wanted, max);
                    plan.create.push(slice);
                }
            }
        }
    }
    plan.update = updated.into_iter().map(|(_, s)| s).collect();

    // 4. A Service without endpoints keeps exactly one empty placeholder.
    if plan.delete.len() == existing_count && plan.create.is_empty() {
        let keep = plan.delete.iter().position(|s| template.is_placeholder(s));
        match keep {
            Some(i) => {
                plan.delete.remove(i);
            }
            None => {
                let mut placeholder = template.new_slice(&GroupKey {
                    address_type: template.placeholder_type,
                    ports: Vec::new(),
                });
                placeholder.ports = Some(Vec::new());
                plan.create.push(placeholder);
            }
        }
    }
    plan
}

/// Moves endpoints from `wanted` into `slice` until it holds `max`.
fn fill(
    slice: &mut EndpointSlice,
    wanted: &mut BTreeMap<(String, String, String), Endpoint>,
    max: usize,
) {
    let list = slice.endpoints.get_or_insert_with(Vec::new);
    while list.len() < max {
        let Some((_, ep)) = wanted.pop_first() else {
            break;
        };
        list.push(ep);
    }
}

#[cfg(test)]
mod tests;
