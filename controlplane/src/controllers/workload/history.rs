//! ControllerRevisions for the DaemonSet and StatefulSet controllers, as
//! upstream's `controller/history`: each distinct pod template is stored as a
//! ControllerRevision `<owner>-<hash>` owned by the workload, numbered by
//! `revision`, whose `data` is the strategic merge patch
//! `{"spec":{"template":{...,"$patch":"replace"}}}` that `kubectl rollout
//! undo` sends back to restore it. A template seen before (after an undo)
//! gets its old revision object renumbered as the newest one. When the name
//! is taken by a revision of another template or owner (a hash collision),
//! the hash is salted with the next `status.collisionCount` until a name is
//! free, and the caller stores the new count. Old revisions beyond
//! `revisionHistoryLimit` (default 10) that no pod still uses are deleted,
//! oldest first.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};

use super::{controller_ref, salted_template_hash, REVISION_LABEL};

/// Revisions kept besides the current one when the owner sets no limit.
const DEFAULT_HISTORY_LIMIT: i32 = 10;
/// Collision counts tried in one sync before giving up; each collision
/// needs a foreign object with exactly the salted name, so a handful is
/// already far beyond chance.
const MAX_COLLISIONS: i32 = 16;

/// Errors keeping a workload's revision history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Listing, creating, renumbering or deleting revisions failed.
    #[error("cannot {action} controllerrevisions of {owner}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// namespace/name of the owner.
        owner: String,
        /// What the API said.
        source: kube::Error,
    },
    /// Every name tried for the current revision belongs to someone else.
    #[error(
        "controllerrevision {name} and {tried} earlier names exist but are not revisions of {owner}'s template; delete or rename them"
    )]
    Taken {
        /// The last revision name tried.
        name: String,
        /// How many names were tried before it.
        tried: i32,
        /// namespace/name of the owner.
        owner: String,
    },
    /// The owner has no uid yet (it was never stored).
    #[error("{0} has no uid; it cannot own controllerrevisions")]
    NoUid(String),
}

/// The workload a history belongs to.
pub struct Owner<'a, K> {
    /// The DaemonSet or StatefulSet.
    pub object: &'a K,
    /// Its pod template.
    pub template: &'a PodTemplateSpec,
    /// Its `revisionHistoryLimit`.
    pub limit: Option<i32>,
    /// Its `status.collisionCount`.
    pub collision_count: Option<i32>,
}

/// The history after a sync.
#[derive(Debug)]
pub struct Synced {
    /// Name of the current template's revision, `<owner>-<hash>`.
    pub name: String,
    /// The hash in that name (the DaemonSet pods' revision label).
    pub hash: String,
    /// Its `revision` number.
    pub number: i64,
    /// The owner's `status.collisionCount` after this sync.
    pub collision_count: Option<i32>,
    /// The owner's revisions as listed before the sync (the current one may
    /// be missing if it was just created).
    pub revisions: Vec<ControllerRevision>,
}

/// The name of the unsalted revision of `template` for the owner `owner_name`.
pub fn revision_name(owner_name: &str, template: &PodTemplateSpec) -> String {
    format!("{owner_name}-{}", salted_template_hash(template, 0))
}

/// The `data` of a revision: the patch that restores `template`.
pub fn revision_data(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut template {
        map.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The pod template a revision restores, if its data holds one.
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision.data.0.get("spec")?.get("template")?.clone();
    if let Value::Object(map) = &mut template {
        map.remove("$patch");
    }
    serde_json::from_value(template).ok()
}

/// Makes sure the owner's current template has the newest revision and trims
/// old ones not in `in_use` (revision names pods are still labelled with).
pub async fn sync<K>(
    client: &kube::Client,
    owner: Owner<'_, K>,
    in_use: &[String],
) -> Result<Synced, HistoryError>
where
    K: Resource<DynamicType = ()> + ResourceExt,
{
    let object = owner.object;
    let namespace = object.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", object.name_any());
    let uid = object
        .uid()
        .ok_or_else(|| HistoryError::NoUid(key.clone()))?;
    let api: Api<ControllerRevision> = Api::namespaced(client.clone(), &namespace);
    let err = |action: &'static str| {
        let owner = key.clone();
        move |source| HistoryError::Api {
            action,
            owner,
            source,
        }
    };
    let mut owned: Vec<ControllerRevision> = api
        .list(&ListParams::default())
        .await
        .map_err(err("list"))?
        .items
        .into_iter()
        .filter(|r| controlled_by(r, &uid))
        .collect();
    owned.sort_by_key(|r| r.revision.unwrap_or(0));
    let newest = owned.last().and_then(|r| r.revision).unwrap_or(0);
    let mut collision_count = owner.collision_count;

    let current = owned
        .iter()
        .rev()
        .find(|r| template_of(r).as_ref() == Some(owner.template));
    let (name, number) = match current {
        Some(existing) if existing.revision == Some(newest) => (existing.name_any(), newest),
        Some(existing) => {
            let name = existing.name_any();
            let patch = json!({"revision": newest + 1});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(err("renumber"))?;
            (name, newest + 1)
        }
        None => {
            let Some(reference) = controller_ref(object) else {
                return Err(HistoryError::NoUid(key));
            };
            let first = collision_count.unwrap_or(0);
            let mut count = first;
            loop {
                let hash = salted_template_hash(owner.template, count);
                let name = format!("{}-{hash}", object.name_any());
                let mut labels: BTreeMap<String, String> = owner
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                labels.insert(REVISION_LABEL.into(), hash);
                let revision = ControllerRevision {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        labels: Some(labels),
                        annotations: object.meta().annotations.clone(),
                        owner_references: Some(vec![reference.clone()]),
                        ..ObjectMeta::default()
                    },
                    data: RawExtension(revision_data(owner.template)),
                    revision: Some(newest + 1),
                };
                match api.create(&PostParams::default(), &revision).await {
                    Ok(_) => break (name, newest + 1),
                    Err(kube::Error::Api(s)) if s.code == 409 => {
                        let theirs = api.get(&name).await.map_err(err("read"))?;
                        if controlled_by(&theirs, &uid)
                            && template_of(&theirs).as_ref() == Some(owner.template)
                        {
                            // Ours, created by a sync whose list we missed.
                            break (name, theirs.revision.unwrap_or(newest + 1));
                        }
                        if count - first + 1 >= MAX_COLLISIONS {
                            return Err(HistoryError::Taken {
                                name,
                                tried: count - first,
                                owner: key,
                            });
                        }
                        tracing::info!(
                            "{key}: controllerrevision {name} belongs to another template; \
                             bumping collisionCount to {}",
                            count + 1
                        );
                        count += 1;
                        collision_count = Some(count);
                    }
                    Err(e) => return Err(err("create")(e)),
                }
            }
        }
    };

    let limit = usize::try_from(owner.limit.unwrap_or(DEFAULT_HISTORY_LIMIT)).unwrap_or(0);
    let old: Vec<&ControllerRevision> = owned
        .iter()
        .filter(|r| r.name_any() != name && !in_use.contains(&r.name_any()))
        .collect();
    for revision in old.iter().take(old.len().saturating_sub(limit)) {
        match api
            .delete(&revision.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(err("delete")(e)),
        }
    }
    let hash = name
        .strip_prefix(&format!("{}-", object.name_any()))
        .unwrap_or(&name)
        .to_string();
    Ok(Synced {
        name,
        hash,
        number,
        collision_count,
        revisions: owned,
    })
}

fn controlled_by(revision: &ControllerRevision, uid: &str) -> bool {
    revision
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::workload::template_hash;
    use k8s_openapi::api::core::v1::{Container, PodSpec};

    #[test]
    fn data_is_a_replacing_template_patch() {
        let template = PodTemplateSpec {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("busybox:1".into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..PodTemplateSpec::default()
        };
        let data = revision_data(&template);
        assert_eq!(data["spec"]["template"]["$patch"], "replace");
        assert_eq!(
            data["spec"]["template"]["spec"]["containers"][0]["image"],
            "busybox:1"
        );
        let name = revision_name("web", &template);
        assert!(name.starts_with("web-"));
        assert_eq!(name, format!("web-{}", template_hash(&template)));
        let revision = ControllerRevision {
            data: RawExtension(data),
            ..ControllerRevision::default()
        };
        assert_eq!(template_of(&revision), Some(template));
    }
}
