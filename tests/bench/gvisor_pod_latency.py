"""Benchmark: create → Succeeded latency of a trivial pod under gVisor and under runc, p50/p95 over N runs."""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from kubernetes import client, config, watch


def pod_manifest(name: str, runtime_class: str | None) -> dict[str, object]:
    spec: dict[str, object] = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "main",
                "image": "localhost/codeexec/base:bookworm",
                "imagePullPolicy": "Never",
                "command": ["true"],
            }
        ],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def run_once(api: client.CoreV1Api, namespace: str, runtime_class: str | None) -> float:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    api.create_namespaced_pod(namespace, pod_manifest(name, runtime_class))
    for event in watch.Watch().stream(
        api.list_namespaced_pod, namespace, field_selector=f"metadata.name={name}", timeout_seconds=120
    ):
        phase = event["object"].status.phase
        if phase in ("Succeeded", "Failed"):
            elapsed = time.monotonic() - started
            break
    else:
        raise RuntimeError(f"pod {name} did not finish")
    api.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    if phase != "Succeeded":
        raise RuntimeError(f"pod {name} ended {phase}")
    return elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--namespace", default="default")
    args = parser.parse_args()
    config.load_kube_config()
    api = client.CoreV1Api()
    results = {}
    for label, runtime_class in (("runc", None), ("gvisor", "gvisor")):
        samples = [run_once(api, args.namespace, runtime_class) for _ in range(args.runs)]
        results[label] = samples
        print(
            f"{label:7s} create→Succeeded over {args.runs}: p50 {statistics.median(samples):.2f}s "
            f"p95 {percentile(samples, 0.95):.2f}s min {min(samples):.2f}s max {max(samples):.2f}s"
        )
    ratio = statistics.median(results["gvisor"]) / statistics.median(results["runc"])
    print(f"gvisor/runc p50 ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
