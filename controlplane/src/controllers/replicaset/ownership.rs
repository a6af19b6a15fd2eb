//! Controller references and claiming, as upstream's `ControllerRefManager`:
//! a controller owns the objects whose controller ownerReference names it;
//! it adopts orphans its selector matches (adding that reference) and
//! releases objects it owns whose labels no longer match (removing it).
//! Used by the replicaset controller for pods and by the deployment
//! controller for ReplicaSets.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::controllers::pods::{CachedPod, LabelQuery, Labels};

/// Errors claiming objects.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The owner was replaced or deleted while claiming; its successor syncs on its own.
    #[error("{kind} {key} is gone or was recreated (uid {found:?}, wanted {wanted:?}); not adopting for it")]
    OwnerGone {
        /// Kind of the owner.
        kind: String,
        /// `namespace/name` of the owner.
        key: String,
        /// UID found on the server.
        found: Option<String>,
        /// UID the claim started with.
        wanted: Option<String>,
    },
    /// The owner is being deleted; it must not adopt anything.
    #[error("{kind} {key} is being deleted; not adopting for it")]
    OwnerDeleting {
        /// Kind of the owner.
        kind: String,
        /// `namespace/name` of the owner.
        key: String,
    },
    /// Reading the owner or patching an object's ownerReferences failed.
    #[error("cannot {action} {child} for {owner}: {source}")]
    Api {
        /// adopt, release or re-read.
        action: &'static str,
        /// The object being claimed.
        child: String,
        /// `namespace/name` of the owner.
        owner: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
}

/// The controller ownerReference of an object, if any.
pub(crate) fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A controller ownerReference to `owner` (controller and blockOwnerDeletion set).
pub(crate) fn controller_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    let meta = owner.meta();
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// True when `reference` points at an object of kind `K` with this UID.
pub(crate) fn refers_to<K: Resource<DynamicType = ()>>(
    reference: &OwnerReference,
    uid: Option<&str>,
) -> bool {
    reference.kind == K::kind(&())
        && reference.api_version == K::api_version(&())
        && Some(reference.uid.as_str()) == uid
}

/// What a controller does with one object it looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Already owned and matching: it is ours.
    Owned,
    /// An orphan that matches: add our controller reference.
    Adopt,
    /// Owned but no longer matching: remove our controller reference.
    Release,
    /// Someone else's, or not ours to take.
    Ignore,
}

/// Decides a claim, as upstream's `ClaimObject`, for a child whose
/// controller has `child_controller` as uid (`None`: an orphan).
pub(crate) fn decide(
    owner_uid: Option<&str>,
    owner_deleting: bool,
    child_controller: Option<&str>,
    child_deleting: bool,
    matches: bool,
) -> Claim {
    match child_controller {
        Some(uid) if Some(uid) != owner_uid => Claim::Ignore,
        Some(_) if matches => Claim::Owned,
        Some(_) if owner_deleting => Claim::Ignore,
        Some(_) => Claim::Release,
        None if owner_deleting || !matches || child_deleting => Claim::Ignore,
        None => Claim::Adopt,
    }
}

/// An object a controller claims: ReplicaSets (for Deployments) and cached
/// pods (for ReplicaSets).
pub(crate) trait Claimable: Sized {
    /// The API kind patched to adopt or release it.
    type Kind: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug;
    /// Its name.
    fn name(&self) -> &str;
    /// Its uid.
    fn uid(&self) -> Option<&str>;
    /// The uid of its controller, if it has one.
    fn controller_uid(&self) -> Option<&str>;
    /// It is being deleted.
    fn deleting(&self) -> bool;
    /// Its labels match (`query` is `selector`'s terms).
    fn selected_by(&self, selector: &Selector, query: &LabelQuery) -> bool;
    /// What the adoption patch returned, as this type.
    fn adopted(object: Self::Kind) -> Self;
}

impl Claimable for ReplicaSet {
    type Kind = ReplicaSet;
    fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
    fn uid(&self) -> Option<&str> {
        self.metadata.uid.as_deref()
    }
    fn controller_uid(&self) -> Option<&str> {
        controller_of(&self.metadata).map(|r| r.uid.as_str())
    }
    fn deleting(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }
    fn selected_by(&self, selector: &Selector, _: &LabelQuery) -> bool {
        selects(selector, &self.metadata)
    }
    fn adopted(object: ReplicaSet) -> Self {
        object
    }
}

impl Claimable for CachedPod {
    type Kind = Pod;
    fn name(&self) -> &str {
        &self.name
    }
    fn uid(&self) -> Option<&str> {
        Some(&*self.uid).filter(|u| !u.is_empty())
    }
    fn controller_uid(&self) -> Option<&str> {
        self.controller().map(|o| &*o.uid)
    }
    fn deleting(&self) -> bool {
        self.deleted.is_some()
    }
    fn selected_by(&self, _: &Selector, query: &LabelQuery) -> bool {
        query_selects(query, &self.labels)
    }
    fn adopted(object: Pod) -> Self {
        CachedPod::from(&object)
    }
}

/// Label selector match; an empty selector matches nothing here, as upstream
/// controllers never adopt with an empty selector.
pub(crate) fn selects(selector: &Selector, meta: &ObjectMeta) -> bool {
    let empty = Default::default();
    !selector.selects_all() && selector.matches(meta.labels.as_ref().unwrap_or(&empty))
}

/// [`selects`] for cached labels and a selector's terms.
pub(crate) fn query_selects(query: &LabelQuery, labels: &Labels) -> bool {
    !query.is_empty() && query.matches(labels)
}

/// Claims objects for one owner. Before its first adoption it re-reads the
/// owner from the server, so an owner deleted or replaced since the cache
/// was filled does not adopt anything.
pub(crate) struct Claimer<'a, O> {
    client: kube::Client,
    owner: &'a O,
    selector: &'a Selector,
    query: LabelQuery,
    checked: bool,
}

impl<'a, O> Claimer<'a, O>
where
    O: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    /// A claimer for `owner` selecting with `selector`.
    pub(crate) fn new(client: kube::Client, owner: &'a O, selector: &'a Selector) -> Self {
        Claimer {
            client,
            owner,
            selector,
            query: LabelQuery::from(selector),
            checked: false,
        }
    }

    fn owner_key(&self) -> String {
        super::informer::key_of(self.owner)
    }

    async fn check_owner(&mut self) -> Result<(), Error> {
        if self.checked {
            return Ok(());
        }
        let meta = self.owner.meta();
        let api: Api<O> = Api::namespaced(
            self.client.clone(),
            meta.namespace.as_deref().unwrap_or_default(),
        );
        let name = meta.name.as_deref().unwrap_or_default();
        let fresh = api.get_opt(name).await.map_err(|source| Error::Api {
            action: "re-read",
            child: name.to_string(),
            owner: self.owner_key(),
            source: Box::new(source),
        })?;
        let kind = O::kind(&()).into_owned();
        let found = fresh.as_ref().and_then(|f| f.meta().uid.clone());
        if found != meta.uid {
            return Err(Error::OwnerGone {
                kind,
                key: self.owner_key(),
                found,
                wanted: meta.uid.clone(),
            });
        }
        if fresh.is_some_and(|f| f.meta().deletion_timestamp.is_some()) {
            return Err(Error::OwnerDeleting {
                kind,
                key: self.owner_key(),
            });
        }
        self.checked = true;
        Ok(())
    }

    /// Returns the objects of `children` (all in the owner's namespace) that
    /// the owner owns after adopting and releasing as needed.
    pub(crate) async fn claim<C: Claimable>(
        &mut self,
        children: Vec<Arc<C>>,
    ) -> Result<Vec<Arc<C>>, Error> {
        let owner_meta = self.owner.meta();
        let deleting = owner_meta.deletion_timestamp.is_some();
        let ns = owner_meta.namespace.clone().unwrap_or_default();
        let api: Api<C::Kind> = Api::namespaced(self.client.clone(), &ns);
        let mut owned = Vec::new();
        for child in children {
            let matches = child.selected_by(self.selector, &self.query);
            let name = child.name().to_string();
            let claim = decide(
                owner_meta.uid.as_deref(),
                deleting,
                child.controller_uid(),
                child.deleting(),
                matches,
            );
            match claim {
                Claim::Owned => owned.push(child),
                Claim::Ignore => {}
                Claim::Adopt => {
                    self.check_owner().await?;
                    let patch = json!({"metadata": {
                        "ownerReferences": [controller_ref(self.owner)],
                        "uid": child.uid(),
                    }});
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await
                    {
                        Ok(adopted) => owned.push(Arc::new(C::adopted(adopted))),
                        Err(e) if is_not_found(&e) => {}
                        Err(source) => {
                            return Err(Error::Api {
                                action: "adopt",
                                child: name,
                                owner: self.owner_key(),
                                source: Box::new(source),
                            })
                        }
                    }
                }
                Claim::Release => {
                    let patch = json!({"metadata": {
                        "ownerReferences": [{"$patch": "delete", "uid": owner_meta.uid}],
                        "uid": child.uid(),
                    }});
                    match api
                        .patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => {}
                        Err(source) => {
                            return Err(Error::Api {
                                action: "release",
                                child: name,
                                owner: self.owner_key(),
                                source: Box::new(source),
                            })
                        }
                    }
                }
            }
        }
        Ok(owned)
    }
}

/// The API answered 404.
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The API answered 409 (a conflict or an existing name).
pub(crate) fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned_by(uid: &str) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "rs".into(),
                uid: uid.into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        }
    }

    /// [`decide`] for a child with this metadata.
    fn decide_meta(
        owner_uid: Option<&str>,
        owner_deleting: bool,
        child: &ObjectMeta,
        matches: bool,
    ) -> Claim {
        let controller = controller_of(child).map(|r| r.uid.as_str());
        let deleting = child.deletion_timestamp.is_some();
        decide(owner_uid, owner_deleting, controller, deleting, matches)
    }

    #[test]
    fn claim_decisions() {
        let orphan = ObjectMeta::default();
        assert_eq!(
            decide_meta(Some("me"), false, &owned_by("me"), true),
            Claim::Owned
        );
        assert_eq!(
            decide_meta(Some("me"), false, &owned_by("me"), false),
            Claim::Release
        );
        assert_eq!(
            decide_meta(Some("me"), true, &owned_by("me"), false),
            Claim::Ignore
        );
        assert_eq!(
            decide_meta(Some("me"), false, &owned_by("other"), true),
            Claim::Ignore
        );
        assert_eq!(decide_meta(Some("me"), false, &orphan, true), Claim::Adopt);
        assert_eq!(
            decide_meta(Some("me"), false, &orphan, false),
            Claim::Ignore
        );
        assert_eq!(decide_meta(Some("me"), true, &orphan, true), Claim::Ignore);
        let dying = ObjectMeta {
            deletion_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            )),
            ..Default::default()
        };
        assert_eq!(decide_meta(Some("me"), false, &dying, true), Claim::Ignore);
    }

    #[test]
    fn references() {
        let mut rs = ReplicaSet::default();
        rs.metadata.name = Some("web".into());
        rs.metadata.uid = Some("u1".into());
        let r = controller_ref(&rs);
        assert_eq!(
            (r.kind.as_str(), r.api_version.as_str(), r.controller),
            ("ReplicaSet", "apps/v1", Some(true))
        );
        assert!(refers_to::<ReplicaSet>(&r, Some("u1")));
        assert!(!refers_to::<ReplicaSet>(&r, Some("u2")));
        let meta = ObjectMeta {
            owner_references: Some(vec![r]),
            ..Default::default()
        };
        assert!(controller_of(&meta).is_some());
    }

    #[test]
    fn empty_selector_selects_nothing() {
        let meta = ObjectMeta {
            labels: Some([("a".to_string(), "b".to_string())].into()),
            ..Default::default()
        };
        assert!(!selects(&Selector::default(), &meta));
        let sel: Selector = [("a", "b")].into_iter().collect();
        assert!(selects(&sel, &meta));
    }
}
