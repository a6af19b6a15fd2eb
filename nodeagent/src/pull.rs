//! Image pulls for pod containers: the effective imagePullPolicy (upstream's
//! default: Always for `:latest` or no tag, else IfNotPresent), registry
//! credentials from the pod's imagePullSecrets, and the Pulling / Pulled /
//! Failed events upstream's kubelet writes around a pull.

use std::time::Instant;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::container::StartError;
use crate::context::Ctx;
use crate::env::Lookup;
use crate::events;
use crate::image::{Image, PullPolicy, RegistryCredential};

/// The pod's registry credentials from its imagePullSecrets.
pub async fn pull_credentials(pod: &Pod, lookup: &Lookup) -> Vec<RegistryCredential> {
    use base64::Engine;
    let mut out = Vec::new();
    let secrets = pod.spec.as_ref().and_then(|s| s.image_pull_secrets.clone());
    for r in secrets.into_iter().flatten() {
        let Ok(Some(data)) = lookup.secret(&r.name).await else {
            continue;
        };
        let Some(raw) = data
            .get(".dockerconfigjson")
            .or_else(|| data.get(".dockercfg"))
        else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(raw) else {
            continue;
        };
        let auths = v.get("auths").unwrap_or(&v);
        for (registry, entry) in auths.as_object().into_iter().flatten() {
            let (mut user, mut pass) = (
                entry["username"].as_str().unwrap_or("").to_string(),
                entry["password"].as_str().unwrap_or("").to_string(),
            );
            if user.is_empty() {
                if let Some(decoded) = entry["auth"]
                    .as_str()
                    .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
                {
                    let s = String::from_utf8_lossy(&decoded).into_owned();
                    if let Some((u, p)) = s.split_once(':') {
                        user = u.to_string();
                        pass = p.to_string();
                    }
                }
            }
            out.push(RegistryCredential {
                registry: registry.clone(),
                username: user,
                password: pass,
            });
        }
    }
    out
}

fn pull_policy(c: &Container) -> PullPolicy {
    match c.image_pull_policy.as_deref() {
        Some("Always") => PullPolicy::Always,
        Some("Never") => PullPolicy::Never,
        Some(_) => PullPolicy::IfNotPresent,
        // Upstream default: Always for :latest or no tag, else IfNotPresent.
        None => {
            let image = c.image.clone().unwrap_or_default();
            let last = image.rsplit('/').next().unwrap_or("");
            if image.contains('@') || (last.contains(':') && !last.ends_with(":latest")) {
                PullPolicy::IfNotPresent
            } else {
                PullPolicy::Always
            }
        }
    }
}

/// Makes the container's image present per its pull policy, with the
/// Pulling / Pulled / Failed events upstream's kubelet writes.
pub async fn pull_image(
    ctx: &Ctx,
    pod: &Pod,
    container: &Container,
    init: bool,
    creds: &[RegistryCredential],
) -> Result<Image, StartError> {
    let image_name = container.image.clone().unwrap_or_default();
    let policy = pull_policy(container);
    let event = |type_: &str, reason: &str, message: String| {
        ctx.events
            .container(pod, &container.name, init, type_, reason, message)
    };
    let present = matches!(ctx.images.get(&image_name), Ok(Some(_)));
    let pulls = match policy {
        PullPolicy::Always => true,
        PullPolicy::IfNotPresent => !present,
        PullPolicy::Never => false,
    };
    if pulls {
        event(
            events::NORMAL,
            "Pulling",
            format!("Pulling image \"{image_name}\""),
        );
    }
    let started = Instant::now();
    match ctx.images.ensure(&image_name, policy, creds).await {
        Ok(image) => {
            let message = if pulls {
                format!(
                    "Successfully pulled image \"{image_name}\" in {:.3}s",
                    started.elapsed().as_secs_f64()
                )
            } else {
                format!("Container image \"{image_name}\" already present on machine")
            };
            event(events::NORMAL, "Pulled", message);
            Ok(image)
        }
        Err(e) => {
            if e.reason() == "ErrImageNeverPull" {
                event(
                    events::WARNING,
                    e.reason(),
                    format!(
                        "Container image \"{image_name}\" is not present with pull policy of Never"
                    ),
                );
            } else {
                event(
                    events::WARNING,
                    "Failed",
                    format!("Failed to pull image \"{image_name}\": {e}"),
                );
            }
            event(events::WARNING, "Failed", format!("Error: {}", e.reason()));
            Err(StartError::new(e.reason(), &e))
        }
    }
}
