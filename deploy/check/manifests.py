#!/usr/bin/env python3
"""Small YAML helpers for deploy/check.sh (run with the check virtualenv's python, which has
PyYAML). Each reads deploy/ files and either prints what a real tool should check next or
fails with a message naming the file.

  manifests.py render DIR            kustomization resources and generated ConfigMaps (with a
                                     content hash in the name, references rewritten), when
                                     kubectl, which renders them for real, is missing
  manifests.py compose-paths FILE     every build context, Dockerfile and bind-mounted file of a
                                     Compose file exists (a moved file breaks `up`)
  manifests.py wiring PODMONITOR RENDERED  the rendered Service sends traffic to outrigger's
                                     proxy port, never the app's; the PodMonitor (no schema
                                     for its CRD ships with kubernetes-validate) selects the
                                     Deployment's pods, names a port they declare and carries
                                     the label the Prometheus Operator selects on; the config
                                     volume names a rendered ConfigMap whose name carries a
                                     content hash (so a config change rolls the pods)
  manifests.py static-sd FILE         a Prometheus config with kubernetes_sd_configs replaced by
                                     empty static_configs: Debian's promtool is built without
                                     Kubernetes discovery, and everything else still gets checked
"""

import hashlib
import os
import re
import sys

import yaml


def fail(message):
    sys.exit(f"FAIL: {message}")


def render(directory):
    documents = rendered(directory, {})
    return "\n---\n".join(yaml.safe_dump(d, sort_keys=False) for d in documents)


def rendered(directory, names):
    """The resources under directory; names collects generated ConfigMaps' hashed names."""
    path = os.path.join(directory, "kustomization.yaml")
    with open(path) as f:
        kustomization = yaml.safe_load(f)
    documents = []
    for resource in kustomization.get("resources", []):
        target = os.path.join(directory, resource)
        if os.path.isdir(target):
            documents.extend(rendered(target, names))
        elif os.path.isfile(target):
            with open(target) as f:
                documents.extend(d for d in yaml.safe_load_all(f) if d)
        else:
            fail(f"{path}: resource {resource} does not exist")
    for generator in kustomization.get("configMapGenerator", []):
        data = {}
        for name in generator.get("files", []):
            with open(os.path.join(directory, name)) as f:
                data[os.path.basename(name)] = f.read()
        digest = hashlib.sha256(yaml.safe_dump(data).encode()).hexdigest()[:10]
        labels = (generator.get("options") or {}).get("labels", {})
        documents.append({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": f"{generator['name']}-{digest}", "labels": labels},
                          "data": data})
        names[generator["name"]] = f"{generator['name']}-{digest}"
    for document in documents:
        spec = document.get("spec", {}).get("template", {}).get("spec", {})
        for volume in spec.get("volumes", []):
            if "configMap" in volume and volume["configMap"]["name"] in names:
                volume["configMap"]["name"] = names[volume["configMap"]["name"]]
    return documents


def compose_paths(path):
    base = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        compose = yaml.safe_load(f)
    checked = 0
    for name, service in compose.get("services", {}).items():
        build = service.get("build")
        if isinstance(build, dict):
            context = os.path.join(base, build.get("context", "."))
            dockerfile = os.path.join(context, build.get("dockerfile", "Dockerfile"))
            for wanted in (context, dockerfile):
                if not os.path.exists(wanted):
                    fail(f"{path}: service {name}: {wanted} does not exist")
                checked += 1
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            if source and source.startswith("."):
                if not os.path.exists(os.path.join(base, source)):
                    fail(f"{path}: service {name}: mounted {source} does not exist")
                checked += 1
    return f"ok: {path}: {checked} build contexts, Dockerfiles and mounted files exist"


def wiring(path, rendered):
    with open(path) as f:
        monitor = yaml.safe_load(f)
    with open(rendered) as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    deployments = [d for d in documents if d.get("kind") == "Deployment"]
    services = [d for d in documents if d.get("kind") == "Service"]
    if monitor.get("kind") != "PodMonitor" or len(deployments) != 1 or len(services) != 1:
        fail(f"{path}: expected a PodMonitor, and one Deployment and one Service in {rendered}")
    template = deployments[0]["spec"]["template"]
    labels = template["metadata"].get("labels", {})
    containers = template["spec"].get("containers", []) + template["spec"].get("initContainers", [])

    def selects(selector, what):
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            fail(f"{what}: selector {selector} does not match the pod labels {labels}")

    service = services[0]
    selects(service["spec"].get("selector"), f"{rendered}: Service")
    outrigger = [c for c in containers if c["name"] == "outrigger"]
    proxy = [p["containerPort"] for c in outrigger for p in c.get("ports", []) if p.get("name") == "proxy"]
    for port in service["spec"]["ports"]:
        if [port.get("targetPort")] != proxy:
            fail(f"{rendered}: Service port {port.get('name')} targets {port.get('targetPort')!r}, "
                 f"not outrigger's proxy port {proxy}")

    selects(monitor["spec"]["selector"]["matchLabels"], f"{path}")
    ports = {p.get("name") for c in containers for p in c.get("ports", [])}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        if endpoint.get("port") not in ports:
            fail(f"{path}: port {endpoint.get('port')!r} is not declared; the pod has {sorted(ports)}")
    if "release" not in monitor["metadata"].get("labels", {}):
        fail(f"{path}: no `release` label: the kube-prometheus-stack chart's Prometheus "
             f"selects PodMonitors by it and would ignore this one")
    configmaps = {d["metadata"]["name"] for d in documents if d.get("kind") == "ConfigMap"}
    for volume in template["spec"].get("volumes", []):
        name = volume.get("configMap", {}).get("name")
        if name is None:
            continue
        if name not in configmaps:
            fail(f"{rendered}: volume {volume['name']} names ConfigMap {name}, not rendered")
        if not re.search(r"-[a-z0-9]{10}$", name):
            fail(f"{rendered}: ConfigMap {name} has no content hash in its name: a config "
                 f"change would not roll the pods (use configMapGenerator)")
    return (f"ok: the Service targets outrigger's proxy port {proxy[0]}; "
            f"{os.path.basename(path)} selects the pods, scrapes a port they declare and has "
            f"a release label; the config volume names ConfigMap {name}")


def static_sd(path):
    with open(path) as f:
        config = yaml.safe_load(f)
    swapped = 0
    for job in config.get("scrape_configs", []):
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["static_configs"] = [{"targets": []}]
            swapped += 1
    if not swapped:
        fail(f"{path}: no kubernetes_sd_configs to stand in for")
    return yaml.safe_dump(config, sort_keys=False)


def main():
    commands = {
        "render": render,
        "compose-paths": compose_paths,
        "static-sd": static_sd,
        "wiring": wiring,
    }
    if len(sys.argv) < 3 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    print(commands[sys.argv[1]](*sys.argv[2:]))


if __name__ == "__main__":
    main()
