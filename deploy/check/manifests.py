#!/usr/bin/env python3
"""Small YAML helpers for deploy/check.sh (run with the check virtualenv's python, which has
PyYAML). Each reads deploy/ files and either prints what a real tool should check next or
fails with a message naming the file.

  manifests.py render DIR            kustomization resources, concatenated (when kubectl,
                                     which renders them for real, is missing)
  manifests.py configmap-config FILE  the outrigger.yaml held in a ConfigMap, for `outrigger check`
  manifests.py compose-paths FILE     every build context, Dockerfile and bind-mounted file of a
                                     Compose file exists (a moved file breaks `up`)
  manifests.py static-sd FILE         a Prometheus config with kubernetes_sd_configs replaced by
                                     empty static_configs: Debian's promtool is built without
                                     Kubernetes discovery, and everything else still gets checked
"""

import os
import sys

import yaml


def fail(message):
    sys.exit(f"FAIL: {message}")


def render(directory):
    path = os.path.join(directory, "kustomization.yaml")
    with open(path) as f:
        kustomization = yaml.safe_load(f)
    documents = []
    for resource in kustomization.get("resources", []):
        target = os.path.join(directory, resource)
        if os.path.isdir(target):
            documents.append(render(target))
        elif os.path.isfile(target):
            with open(target) as f:
                documents.append(f.read())
        else:
            fail(f"{path}: resource {resource} does not exist")
    return "\n---\n".join(documents)


def configmap_config(path):
    with open(path) as f:
        configmap = yaml.safe_load(f)
    try:
        return configmap["data"]["outrigger.yaml"]
    except (KeyError, TypeError):
        fail(f"{path}: no data.outrigger.yaml")


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
        "configmap-config": configmap_config,
        "compose-paths": compose_paths,
        "static-sd": static_sd,
    }
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    print(commands[sys.argv[1]](sys.argv[2]))


if __name__ == "__main__":
    main()
