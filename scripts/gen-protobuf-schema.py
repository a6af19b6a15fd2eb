#!/usr/bin/env python3
"""Generates controlplane/src/apiserver/protobuf/schema.txt, the table the
API server's protobuf request decoder is driven by.

Sources (both already in cargo's registry after a build of the workspace):
  * k8s-pb: every Kubernetes protobuf message as prost structs
    (`#[prost(<type>, <label>, tag = "N")] pub <snake_name>: <Type>`), and
    `impl crate::Resource for X { API_VERSION, KIND }` for the top-level kinds;
  * k8s-openapi: the JSON field names (`"fieldName" => Field::Key_field_name`),
    matched to prost's snake names with underscores removed, case-insensitively.

Output format, one record per line, space separated:
  M <message>                                  a message (k8s.io. prefix dropped)
  F <tag> <jsonName> <label> <type> [<ref>] [p] a field of the message above;
      label: opt | rep | map (map<string, type>), type: string bytes int32
      int64 bool double message; ref: the message type of message fields;
      p: the Go field is a pointer, so an explicit zero/false/"" is kept
  K <apiVersion> <kind> <message>              a top-level kind

Run: python3 scripts/gen-protobuf-schema.py [K8S_PB_DIR K8S_OPENAPI_DIR]
"""

import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "controlplane/src/apiserver/protobuf/schema.txt")
OPENAPI_VERSION = "v1_37"
# Trees of k8s-pb to include (metrics are not served by an API server).
TREES = ["api", "apimachinery/pkg/api", "apimachinery/pkg/apis/meta",
         "apimachinery/pkg/runtime", "apimachinery/pkg/util", "apiextensions_apiserver", "kube_aggregator"]

# gogo-protobuf always writes Go value fields, so a zero scalar on the wire
# usually means "unset" and is dropped, as Go's JSON encoding (omitempty)
# would. For these pointer fields a zero/false/"" is what the user asked for
# (`kubectl create deployment --replicas=0`), so it is kept. Protobuf alone
# cannot tell them apart, hence this list (message.jsonField).
POINTER_SCALARS = {
    "api.apps.v1.DeploymentSpec": ["replicas", "revisionHistoryLimit", "progressDeadlineSeconds"],
    "api.apps.v1.ReplicaSetSpec": ["replicas"],
    "api.apps.v1.StatefulSetSpec": ["replicas", "revisionHistoryLimit"],
    "api.apps.v1.DaemonSetSpec": ["revisionHistoryLimit"],
    "api.apps.v1.RollingUpdateStatefulSetStrategy": ["partition"],
    "api.batch.v1.JobSpec": [
        "parallelism", "completions", "activeDeadlineSeconds", "backoffLimit",
        "backoffLimitPerIndex", "maxFailedIndexes", "ttlSecondsAfterFinished",
        "suspend", "manualSelector",
    ],
    "api.batch.v1.CronJobSpec": [
        "suspend", "startingDeadlineSeconds", "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ],
    "api.core.v1.PodSpec": [
        "terminationGracePeriodSeconds", "activeDeadlineSeconds",
        "automountServiceAccountToken", "enableServiceLinks",
        "shareProcessNamespace", "hostUsers", "setHostnameAsFQDN",
    ],
    "api.core.v1.SecurityContext": [
        "privileged", "runAsUser", "runAsGroup", "runAsNonRoot",
        "readOnlyRootFilesystem", "allowPrivilegeEscalation",
    ],
    "api.core.v1.PodSecurityContext": ["runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup"],
    "api.core.v1.Secret": ["immutable"],
    "api.core.v1.ConfigMap": ["immutable"],
    "api.core.v1.ServiceAccount": ["automountServiceAccountToken"],
    "api.core.v1.ServiceSpec": ["allocateLoadBalancerNodePorts"],
    "api.core.v1.ClientIpConfig": ["timeoutSeconds"],
    "api.core.v1.SecretVolumeSource": ["defaultMode", "optional"],
    "api.core.v1.ConfigMapVolumeSource": ["defaultMode", "optional"],
    "api.core.v1.KeyToPath": ["mode"],
    "api.core.v1.ConfigMapKeySelector": ["optional"],
    "api.core.v1.SecretKeySelector": ["optional"],
    "api.core.v1.PersistentVolumeClaimSpec": ["storageClassName"],
    "api.autoscaling.v1.HorizontalPodAutoscalerSpec": ["minReplicas"],
    "api.autoscaling.v2.HorizontalPodAutoscalerSpec": ["minReplicas"],
    "api.scheduling.v1.PriorityClass": ["value"],
    "apimachinery.pkg.apis.meta.v1.ObjectMeta": ["deletionGracePeriodSeconds"],
    "apimachinery.pkg.apis.meta.v1.DeleteOptions": ["gracePeriodSeconds", "orphanDependents"],
}

PROST = re.compile(r'#\[prost\(([^)]*)\)\]')
FIELD = re.compile(r'pub (?:r#)?([a-z0-9_]+):\s*(.*)$')
FALLBACKS = []
SCALARS = {"string", "bytes", "int32", "int64", "bool", "double"}


def registry_dir(name):
    hits = sorted(glob.glob(os.path.expanduser(f"~/.cargo/registry/src/*/{name}/src")))
    if not hits:
        sys.exit(f"{name} not found in ~/.cargo/registry/src: run `cargo fetch` first")
    return hits[-1]


def openapi_names(openapi_dir):
    """(module path, struct name) -> {normalized: jsonName}, plus a global map."""
    per_struct, global_names = {}, {}
    base = os.path.join(openapi_dir, OPENAPI_VERSION)
    for path in glob.glob(os.path.join(base, "**/*.rs"), recursive=True):
        module = os.path.relpath(os.path.dirname(path), base).replace(os.sep, ".")
        text = open(path, encoding="utf-8").read()
        for struct in re.finditer(r'^pub struct (\w+)', text, re.M):
            names = {}
            for m in re.finditer(r'"([A-Za-z0-9$_-]+)" => Field::Key_(\w+)', text):
                names[m.group(1).replace("_", "").lower()] = m.group(1)
                global_names.setdefault(m.group(1).replace("_", "").lower(), set()).add(m.group(1))
            per_struct[(module, struct.group(1).lower())] = names
    return per_struct, global_names


# Go initialisms prost lower-cases (`desiredAPIVersion` -> desired_api_version).
INITIALISMS = {"api", "ip", "ips", "id", "ids", "uid", "url", "uri", "cidr", "tls", "dns", "json"}


def lower_camel(snake):
    """JSON name for a field k8s-openapi does not know (kinds it does not serve)."""
    head, *rest = snake.split("_")
    return head + "".join(
        (p.upper()[:-1] + "s" if p.endswith("s") and p[:-1] in INITIALISMS else p.upper())
        if p in INITIALISMS else p[:1].upper() + p[1:]
        for p in rest
    )


def resolve(module, rust_type):
    """Fully qualified message name of a Rust type path inside `module`."""
    parts = [p for p in rust_type.split("::") if p]
    mod = module.split(".")
    while parts and parts[0] == "super":
        parts.pop(0)
        mod.pop()
    return ".".join(mod + parts)


def message_type(module, ty):
    """The message a field's Rust type names (inside Option/Vec/Box/BTreeMap)."""
    ty = re.sub(r"\s+", "", ty).rstrip(",").replace(",>", ">")
    for wrapper in ("::core::option::Option<", "::prost::alloc::vec::Vec<",
                    "::prost::alloc::boxed::Box<"):
        while ty.startswith(wrapper):
            ty = ty[len(wrapper):-1]
    if ty.startswith("::prost::alloc::collections::BTreeMap<"):
        inner = ty[len("::prost::alloc::collections::BTreeMap<"):-1]
        ty = inner.split(",", 1)[1]
    return resolve(module, ty)


def parse_pb(pb_dir, per_struct, global_names):
    messages, kinds = {}, []
    for tree in TREES:
        for path in sorted(glob.glob(os.path.join(pb_dir, tree, "**/mod.rs"), recursive=True)):
            module = os.path.relpath(os.path.dirname(path), pb_dir).replace(os.sep, ".")
            lines = open(path, encoding="utf-8").read().split("\n")
            current, i = None, 0
            while i < len(lines):
                line = lines[i].strip()
                m = re.match(r'pub struct (\w+) \{(\})?$', line)
                if m and m.group(2):
                    messages[module + "." + m.group(1)] = []
                elif m:
                    current = (module + "." + m.group(1), m.group(1), [])
                    messages[current[0]] = current[2]
                elif line == "}" and current:
                    current = None
                elif current and line.startswith("#[prost("):
                    attr = PROST.match(line).group(1)
                    decl = ""
                    i += 1
                    while True:
                        decl += " " + lines[i].strip()
                        if decl.rstrip().endswith(",") and decl.count("<") == decl.count(">"):
                            break
                        i += 1
                    fm = FIELD.search(decl.strip())
                    current[2].append(field(module, current[1], attr, fm.group(1), fm.group(2),
                                            per_struct, global_names))
                m = re.match(r'impl crate::Resource for (\w+) \{', line)
                if m:
                    api_version = re.search(r'API_VERSION: &\'static str = "([^"]*)"', lines[i + 1]).group(1)
                    kind = re.search(r'KIND: &\'static str = "([^"]*)"',
                                     "\n".join(lines[i + 1:i + 6])).group(1)
                    kinds.append((api_version, kind, module + "." + m.group(1)))
                i += 1
    return messages, kinds


def field(module, struct, attr, snake, ty, per_struct, global_names):
    tag = re.search(r'tag = "(\d+)"', attr).group(1)
    key = snake.replace("_", "").lower()
    names = per_struct.get((module, struct.lower()), {})
    json_name = names.get(key)
    if json_name is None:
        candidates = global_names.get(key, set())
        json_name = next(iter(candidates)) if len(candidates) == 1 else lower_camel(snake)
        FALLBACKS.append(f"{module}.{struct}.{json_name}")
    first = attr.split(",")[0].strip()
    if first.startswith("btree_map"):
        value = re.search(r'btree_map = "string, (\w+)"', attr).group(1)
        label, kind = "map", value
    else:
        kind = first.split("=")[0].strip()
        label = "rep" if ", repeated" in attr else "opt"
    assert kind in SCALARS or kind == "message", (struct, snake, attr)
    ref = message_type(module, ty) if kind == "message" else None
    return (int(tag), json_name, label, kind, ref)


def main():
    pb_dir = sys.argv[1] if len(sys.argv) > 2 else registry_dir("k8s-pb-0.9.0")
    openapi_dir = sys.argv[2] if len(sys.argv) > 2 else registry_dir("k8s-openapi-0.29.0")
    per_struct, global_names = openapi_names(openapi_dir)
    messages, kinds = parse_pb(pb_dir, per_struct, global_names)
    out = ["# Generated by scripts/gen-protobuf-schema.py from k8s-pb 0.9.0 and "
           "k8s-openapi 0.29.0 (v1_37); do not edit."]
    for name in sorted(messages):
        out.append(f"M {name}")
        pointers = set(POINTER_SCALARS.get(name, []))
        for tag, json_name, label, kind, ref in sorted(messages[name]):
            rec = f"F {tag} {json_name} {label} {kind}"
            if ref:
                if ref not in messages:
                    sys.exit(f"{name}.{json_name}: unknown message {ref}")
                rec += f" {ref}"
            if json_name in pointers:
                rec += " p"
                pointers.discard(json_name)
            out.append(rec)
        if pointers:
            sys.exit(f"{name}: pointer fields not found: {sorted(pointers)}")
    missing = set(POINTER_SCALARS) - set(messages)
    if missing:
        sys.exit(f"pointer list names unknown messages: {sorted(missing)}")
    for api_version, kind, message in sorted(set(kinds)):
        out.append(f"K {api_version} {kind} {message}")
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    if os.environ.get("VERBOSE"):
        print("JSON names not in k8s-openapi:", " ".join(FALLBACKS))
    print(f"wrote {OUT}: {len(messages)} messages, {len(kinds)} kinds")


if __name__ == "__main__":
    main()
