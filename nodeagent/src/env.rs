//! Container environment as the kubelet builds it: image env, then `envFrom`
//! (ConfigMaps and Secrets, with prefixes), then `env` with `value` (with
//! `$(VAR)` expansion), `valueFrom` ConfigMap/Secret keys, `fieldRef` and
//! `resourceFieldRef`. Later entries override earlier ones.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::{Api, Client};

/// Why a container's configuration cannot be built (waiting reason
/// `CreateContainerConfigError`).
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A referenced ConfigMap is missing.
    #[error("configmap \"{0}\" not found")]
    ConfigMapMissing(String),
    /// A referenced Secret is missing.
    #[error("secret \"{0}\" not found")]
    SecretMissing(String),
    /// A referenced key is missing.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyMissing {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    /// fieldRef names an unsupported field.
    #[error("unsupported fieldRef {0:?}")]
    Field(String),
    /// The API server could not be asked.
    #[error("reading {what} from the API server: {source}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
}

/// Fetches ConfigMaps and Secrets of one namespace.
pub struct Lookup {
    configmaps: Api<ConfigMap>,
    secrets: Api<Secret>,
}

impl Lookup {
    /// A lookup in `namespace`.
    pub fn new(client: Client, namespace: &str) -> Lookup {
        Lookup {
            configmaps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
        }
    }

    /// The data of ConfigMap `name`; `None` if it does not exist.
    pub async fn configmap(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, EnvError> {
        let cm = self
            .configmaps
            .get_opt(name)
            .await
            .map_err(|source| EnvError::Api {
                what: format!("configmap {name}"),
                source,
            })?;
        Ok(cm.map(|cm| {
            let mut out: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.unwrap_or_default() {
                out.insert(k, v.0);
            }
            out
        }))
    }

    /// The data of Secret `name`; `None` if it does not exist.
    pub async fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, EnvError> {
        let s = self
            .secrets
            .get_opt(name)
            .await
            .map_err(|source| EnvError::Api {
                what: format!("secret {name}"),
                source,
            })?;
        Ok(s.map(|s| {
            let mut out: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                out.insert(k, v.into_bytes());
            }
            out
        }))
    }
}

/// Expands `$(VAR)` from `vars`; `$$(VAR)` escapes to a literal `$(VAR)`.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&format!("$({name})")),
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of a fieldRef path.
pub fn field_value(pod: &Pod, path: &str) -> Result<String, EnvError> {
    let meta = &pod.metadata;
    let status = pod.status.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let bracket = |prefix: &str| -> Option<String> {
        path.strip_prefix(prefix)?
            .strip_suffix("']")
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.hostIP" => status.host_ip.unwrap_or_default(),
        "status.podIP" => status.pod_ip.unwrap_or_default(),
        "status.podIPs" => status
            .pod_ips
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.ip)
            .collect::<Vec<_>>()
            .join(","),
        _ => {
            if let Some(k) = bracket("metadata.labels['") {
                meta.labels
                    .clone()
                    .unwrap_or_default()
                    .remove(&k)
                    .unwrap_or_default()
            } else if let Some(k) = bracket("metadata.annotations['") {
                meta.annotations
                    .clone()
                    .unwrap_or_default()
                    .remove(&k)
                    .unwrap_or_default()
            } else {
                return Err(EnvError::Field(path.to_string()));
            }
        }
    })
}

/// A resourceFieldRef value (`limits.memory`, `requests.cpu`, …) with `divisor`.
pub fn resource_value(container: &Container, resource: &str, divisor: Option<&str>) -> String {
    let res = container.resources.clone().unwrap_or_default();
    let (map, name) = match resource.split_once('.') {
        Some(("limits", n)) => (res.limits.unwrap_or_default(), n.to_string()),
        Some(("requests", n)) => (res.requests.unwrap_or_default(), n.to_string()),
        _ => return String::new(),
    };
    let q = map.get(&name).map(|q| q.0.clone());
    if name == "cpu" {
        let millis = q
            .as_deref()
            .and_then(crate::quantity::cpu_millis)
            .unwrap_or(0);
        let div = divisor
            .and_then(crate::quantity::cpu_millis)
            .unwrap_or(1000)
            .max(1);
        // The kubelet rounds up, and an unset limit means the node's capacity.
        let v = if millis == 0 {
            1
        } else {
            (millis + div - 1) / div
        };
        v.to_string()
    } else {
        let bytes = q.as_deref().and_then(crate::quantity::bytes).unwrap_or(0);
        let div = divisor.and_then(crate::quantity::bytes).unwrap_or(1).max(1);
        ((bytes + div - 1) / div).to_string()
    }
}

/// Builds the environment of `container` on top of `image_env` (`K=V` strings).
pub async fn build(
    pod: &Pod,
    container: &Container,
    image_env: &[String],
    lookup: &Lookup,
) -> Result<Vec<String>, EnvError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut order: Vec<String> = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    fn set(vars: &mut BTreeMap<String, String>, order: &mut Vec<String>, k: String, v: String) {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    }
    for e in image_env {
        if let Some((k, v)) = e.split_once('=') {
            set(&mut vars, &mut order, k.to_string(), v.to_string());
        }
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(cm) = &from.config_map_ref {
            match lookup.configmap(&cm.name).await? {
                Some(d) => d,
                None if cm.optional == Some(true) => continue,
                None => return Err(EnvError::ConfigMapMissing(cm.name.clone())),
            }
        } else if let Some(s) = &from.secret_ref {
            match lookup.secret(&s.name).await? {
                Some(d) => d,
                None if s.optional == Some(true) => continue,
                None => return Err(EnvError::SecretMissing(s.name.clone())),
            }
        } else {
            continue;
        };
        for (k, v) in data {
            set(
                &mut vars,
                &mut order,
                format!("{prefix}{k}"),
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
    }
    for e in container.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            expand(v, &vars)
        } else if let Some(from) = &e.value_from {
            if let Some(sel) = &from.config_map_key_ref {
                let data = lookup.configmap(&sel.name).await?;
                match data.and_then(|mut d| d.remove(&sel.key)) {
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                    None if sel.optional == Some(true) => continue,
                    None => {
                        return Err(EnvError::KeyMissing {
                            kind: "configmap",
                            namespace: ns,
                            name: sel.name.clone(),
                            key: sel.key.clone(),
                        })
                    }
                }
            } else if let Some(sel) = &from.secret_key_ref {
                let data = lookup.secret(&sel.name).await?;
                match data.and_then(|mut d| d.remove(&sel.key)) {
                    Some(v) => String::from_utf8_lossy(&v).into_owned(),
                    None if sel.optional == Some(true) => continue,
                    None => {
                        return Err(EnvError::KeyMissing {
                            kind: "secret",
                            namespace: ns,
                            name: sel.name.clone(),
                            key: sel.key.clone(),
                        })
                    }
                }
            } else if let Some(f) = &from.field_ref {
                field_value(pod, &f.field_path)?
            } else if let Some(r) = &from.resource_field_ref {
                resource_value(
                    container,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                )
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut vars, &mut order, e.name.clone(), value);
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = vars.get(&k).cloned().unwrap_or_default();
            format!("{k}={v}")
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_references_and_escapes() {
        let vars: BTreeMap<String, String> =
            [("A".to_string(), "1".to_string())].into_iter().collect();
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn field_refs_read_pod_metadata() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "labels": {"app": "web"}},
            "spec": {"containers": [], "nodeName": "node1"}
        }))
        .unwrap();
        assert_eq!(field_value(&pod, "metadata.labels['app']").unwrap(), "web");
        assert_eq!(field_value(&pod, "spec.nodeName").unwrap(), "node1");
        assert!(field_value(&pod, "spec.bogus").is_err());
    }
}
