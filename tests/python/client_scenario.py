#!/usr/bin/env python3
"""The official Kubernetes Python client against a skiff server.

Usage: client_scenario.py KUBECONFIG

Loads the kubeconfig the server wrote, then lists, creates, patches, watches
and deletes pods and services in a fresh namespace, checking what the client
returns at each step. Exits non-zero (with a traceback) on the first surprise.
"""

import sys
import threading

from kubernetes import client, config, watch

NAMESPACE = "python-client"
WATCH_SECONDS = 30


def log(msg):
    print(f"[client_scenario] {msg}", flush=True)


class Recorder:
    """Watches a list function from a resourceVersion in a thread, recording
    (event type, object name) until `stop_after` is seen for `name`."""

    def __init__(self, list_fn, resource_version, name, stop_after="DELETED"):
        self.events = []
        self.error = None
        self.done = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(
            target=self._run, args=(list_fn, resource_version, name, stop_after), daemon=True
        )
        self._thread.start()

    def _run(self, list_fn, resource_version, name, stop_after):
        try:
            for event in self._watch.stream(
                list_fn,
                NAMESPACE,
                resource_version=resource_version,
                timeout_seconds=WATCH_SECONDS,
                _request_timeout=WATCH_SECONDS + 10,
            ):
                obj = event["object"]
                self.events.append((event["type"], obj.metadata.name))
                if event["type"] == stop_after and obj.metadata.name == name:
                    self._watch.stop()
                    break
        except Exception as exc:  # reported by wait()
            self.error = exc
        finally:
            self.done.set()

    def wait(self):
        finished = self.done.wait(WATCH_SECONDS + 15)
        assert self.error is None, f"watch failed: {self.error!r}"
        assert finished, f"watch did not finish; events so far: {self.events}"
        return self.events


def expect_types(events, name, wanted):
    seen = [t for t, n in events if n == name]
    for kind in wanted:
        assert kind in seen, f"watch never showed {kind} for {name}; saw {events}"
    # Order matters: added before modified before deleted.
    positions = [seen.index(kind) for kind in wanted]
    assert positions == sorted(positions), f"events out of order for {name}: {seen}"


def pods(v1):
    listed = v1.list_namespaced_pod(NAMESPACE)
    assert listed.items == [], f"fresh namespace should have no pods: {listed.items}"
    rv = listed.metadata.resource_version
    assert rv, "list must carry a resourceVersion"
    log(f"listed 0 pods at resourceVersion {rv}")

    recorder = Recorder(v1.list_namespaced_pod, rv, "py-pod")

    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="py-pod", labels={"app": "py"}),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="main",
                    image="localhost/busybox:latest",
                    command=["sleep", "3600"],
                    ports=[client.V1ContainerPort(container_port=8080)],
                )
            ]
        ),
    )
    created = v1.create_namespaced_pod(NAMESPACE, pod)
    assert created.metadata.uid, "created pod has a uid"
    assert created.metadata.creation_timestamp is not None
    assert created.spec.restart_policy == "Always", created.spec.restart_policy
    assert created.spec.containers[0].ports[0].protocol == "TCP"
    assert created.status.phase == "Pending", created.status.phase
    log(f"created pod py-pod uid={created.metadata.uid}")

    generated = v1.create_namespaced_pod(
        NAMESPACE,
        client.V1Pod(
            metadata=client.V1ObjectMeta(generate_name="py-gen-"),
            spec=client.V1PodSpec(
                containers=[client.V1Container(name="c", image="localhost/busybox:latest")]
            ),
        ),
    )
    assert generated.metadata.name.startswith("py-gen-") and len(generated.metadata.name) > 7
    log(f"generateName gave {generated.metadata.name}")

    # This client sends the first patch type it knows (JSON patch) unless told
    # otherwise, so each call names its content type.
    patched = v1.patch_namespaced_pod(
        "py-pod",
        NAMESPACE,
        {"metadata": {"labels": {"patched": "yes"}}},
        _content_type="application/strategic-merge-patch+json",
    )
    assert patched.metadata.labels == {"app": "py", "patched": "yes"}, patched.metadata.labels
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)
    patched = v1.patch_namespaced_pod(
        "py-pod",
        NAMESPACE,
        [{"op": "add", "path": "/metadata/annotations", "value": {"by": "json-patch"}}],
        _content_type="application/json-patch+json",
    )
    assert patched.metadata.annotations == {"by": "json-patch"}, patched.metadata.annotations
    log("patched pod (strategic merge, JSON patch)")

    selected = v1.list_namespaced_pod(NAMESPACE, label_selector="patched=yes")
    assert [p.metadata.name for p in selected.items] == ["py-pod"], selected.items
    by_field = v1.list_namespaced_pod(NAMESPACE, field_selector="metadata.name=py-pod")
    assert [p.metadata.name for p in by_field.items] == ["py-pod"], by_field.items
    everywhere = v1.list_pod_for_all_namespaces(label_selector="app=py")
    assert [p.metadata.name for p in everywhere.items] == ["py-pod"], everywhere.items

    read = v1.read_namespaced_pod("py-pod", NAMESPACE)
    assert read.metadata.labels["patched"] == "yes"

    v1.delete_namespaced_pod("py-pod", NAMESPACE)
    events = recorder.wait()
    expect_types(events, "py-pod", ["ADDED", "MODIFIED", "DELETED"])
    log(f"pod watch saw {events}")

    try:
        v1.read_namespaced_pod("py-pod", NAMESPACE)
    except client.exceptions.ApiException as exc:
        assert exc.status == 404, exc
    else:
        raise AssertionError("py-pod still readable after delete")

    v1.delete_namespaced_pod(generated.metadata.name, NAMESPACE)


def services(v1):
    listed = v1.list_namespaced_service(NAMESPACE)
    assert listed.items == [], f"fresh namespace should have no services: {listed.items}"
    recorder = Recorder(v1.list_namespaced_service, listed.metadata.resource_version, "py-svc")

    svc = client.V1Service(
        metadata=client.V1ObjectMeta(name="py-svc", labels={"app": "py"}),
        spec=client.V1ServiceSpec(
            selector={"app": "py"},
            ports=[client.V1ServicePort(name="http", port=80, target_port=8080)],
        ),
    )
    created = v1.create_namespaced_service(NAMESPACE, svc)
    assert created.spec.type == "ClusterIP", created.spec.type
    assert created.spec.cluster_ip and created.spec.cluster_ip != "None", created.spec.cluster_ip
    assert created.spec.ports[0].protocol == "TCP"
    log(f"created service py-svc clusterIP={created.spec.cluster_ip}")

    patched = v1.patch_namespaced_service(
        "py-svc",
        NAMESPACE,
        {"metadata": {"annotations": {"team": "py"}}},
        _content_type="application/merge-patch+json",
    )
    assert patched.metadata.annotations == {"team": "py"}, patched.metadata.annotations
    assert patched.spec.cluster_ip == created.spec.cluster_ip, "clusterIP must not change"

    names = [s.metadata.name for s in v1.list_namespaced_service(NAMESPACE).items]
    assert names == ["py-svc"], names

    v1.delete_namespaced_service("py-svc", NAMESPACE)
    events = recorder.wait()
    expect_types(events, "py-svc", ["ADDED", "MODIFIED", "DELETED"])
    log(f"service watch saw {events}")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    config.load_kube_config(config_file=sys.argv[1])
    v1 = client.CoreV1Api()

    names = [n.metadata.name for n in v1.list_namespace().items]
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"]:
        assert ns in names, f"namespace {ns} missing: {names}"
    v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    log(f"created namespace {NAMESPACE}")

    pods(v1)
    services(v1)

    version = client.VersionApi().get_code()
    log(f"server version {version.git_version}")
    log("OK")


if __name__ == "__main__":
    main()
