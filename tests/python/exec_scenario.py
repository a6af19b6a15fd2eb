#!/usr/bin/env python3
"""`pods/exec` through the official Kubernetes Python client (its own
websocket implementation of the channel protocol).

Usage: exec_scenario.py KUBECONFIG POD CONTAINER

Runs a command that writes to stdout and stderr and exits 4, one that reads
stdin until the client closes it, and a shell on a terminal that is resized
while it runs. Prints `exec_scenario ok` at the end;
exits non-zero (with a traceback) on the first surprise.
"""

import json
import sys
import time

from kubernetes import client, config
from kubernetes.stream import stream


def main():
    kubeconfig, pod, container = sys.argv[1:4]
    config.load_kube_config(config_file=kubeconfig)
    api = client.CoreV1Api()

    resp = stream(
        api.connect_get_namespaced_pod_exec,
        pod,
        "default",
        container=container,
        command=["sh", "-c", "echo to-out; echo to-err >&2; exit 4"],
        stdin=False,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    resp.run_forever(timeout=30)
    out, err = resp.read_stdout(), resp.read_stderr()
    assert out == "to-out\n", repr(out)
    assert err == "to-err\n", repr(err)
    assert resp.returncode == 4, resp.returncode
    resp.close()

    resp = stream(
        api.connect_get_namespaced_pod_exec,
        pod,
        "default",
        container=container,
        command=["sh", "-c", "tr a-z A-Z; echo eof"],
        stdin=True,
        stdout=True,
        stderr=True,
        tty=False,
        _preload_content=False,
    )
    resp.write_stdin("shout this\n")
    resp.close_channel(0)
    resp.run_forever(timeout=30)
    got = resp.read_stdout()
    assert got == "SHOUT THIS\neof\n", repr(got)
    assert resp.returncode == 0, resp.returncode
    resp.close()
    resp = stream(
        api.connect_get_namespaced_pod_exec,
        pod,
        "default",
        container=container,
        command=["sh"],
        stdin=True,
        stdout=True,
        stderr=False,
        tty=True,
        _preload_content=False,
    )
    resp.write_channel(4, json.dumps({"Width": 80, "Height": 24}))
    time.sleep(1)
    resp.write_channel(4, json.dumps({"Width": 77, "Height": 22}))
    time.sleep(1)
    resp.write_stdin("stty size; exit 0\n")
    resp.run_forever(timeout=30)
    got = resp.read_stdout()
    assert "22 77" in got, repr(got)
    resp.close()
    print("exec_scenario ok", flush=True)


if __name__ == "__main__":
    main()
