"""e2e: the `db` binding (issue 12) as the chart installs it: operator and broker of one release watching only this
module's `e2e-bd-<id>-work` namespace, sandboxes calling the broker through their harness (Python, JavaScript,
TypeScript), SQLite on a `local` PersistentVolume this module makes (broker.persistence.existingClaim) and a real
PostgreSQL (localhost/codeexec/e2e-postgres, a pod and Service in the release namespace, its DSN in a Secret).

The security tests are issue 12's list: a token replayed after its Execution finished, a token used for a binding
another Execution was granted, code scanning for the broker's metrics port and other pods, SQL injection through
parameters, readOnly bindings, statement timeouts, an Execution without bindings, a binding that does not exist; and
the review's: the token is in a Secret (not the ConfigMap, which namespace viewers read), and pods that are not
sandboxes do not reach the broker at all (its NetworkPolicy).
Needs the operator image (it also runs the broker) and the e2e-postgres image (`hack/build-images.sh`). About 90 s
on the dev node (seventeen sandboxes, a plain pod, a broker pod restart).

Each security test was seen failing with its safeguard removed (an image built with the break): the broker's
Running check (replay), its spec.bindings check (NotGranted), readOnly and statementTimeoutMs ignored, parameters
interpolated into the SQL, the egress rule to the broker without its port (9090 reached), that rule on every
Execution (no bindings reaching the broker), admission without BindingNotFound, the release without existingClaim
(an emptyDir: the rows gone with the pod), bindings.json back in the ConfigMap, the broker's NetworkPolicy left out
(other pods reach it).
The last test kills the release's operator mid-burst (SIGKILL, then a forced pod deletion) and counts what was lost
and duplicated (expected to fail until the broker serves a sandbox that runs while no operator marked it Running)."""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.binding_kit import (
    BROKER,
    CHART,
    RELEASE,
    binding_usage,
    create_objects,
    listening,
    only_pod,
    ready_pod,
    run_one,
    succeeded,
    unique_name,
)
from tests.e2e.bursts import EtcdPodCreations
from tests.e2e.executions import (
    EXECUTION_UID_LABEL,
    apply,
    delete_executions,
    execution_manifest,
    executions,
    get_execution,
    install_crds_and_runtimes,
    run_all,
    uid,
    wait_all_finished,
    wait_finished,
)
from tests.e2e.kube import helm, kubectl, kubectl_json, pod_finished, wait_until
from tests.e2e.test_replicas import kill_process

pytestmark = pytest.mark.e2e
OPERATOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"
POSTGRES_PASSWORD = "e2e-" + uuid.uuid4().hex
# Statement timeout of the `slow` and `pg` bindings: the queries that must be cancelled run far longer.
TIMEOUT_MS = 1000


@dataclass(frozen=True)
class Release:
    namespace: str  # the operator's, the broker's and PostgreSQL's
    work: str  # the only namespace the release watches: Executions and SandboxBindings
    broker_service: str  # the broker Service's clusterIP (port 8080)
    broker_ip: str  # the broker pod's
    broker_image: str
    operator_ip: str
    postgres_ip: str  # the PostgreSQL pod's
    postgres_service: str  # its Service's clusterIP

    @property
    def broker_url(self) -> str:
        return f"http://{self.broker_service}:8080"


def _postgres(namespace: str) -> list[dict[str, Any]]:
    """PostgreSQL as a pod (runc, restricted) and its Service, and the Secret of its DSN is made later (it names
    the Service's clusterIP: sandboxes and the broker here have no cluster DNS)."""
    labels = {"app": "e2e-postgres"}
    security = {
        "runAsNonRoot": True,
        "runAsUser": 100,  # the image's postgres user
        "runAsGroup": 102,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "name": "postgres",
        "image": "localhost/codeexec/e2e-postgres:0.1.0",
        "imagePullPolicy": "Never",
        "env": [{"name": "POSTGRES_PASSWORD", "value": POSTGRES_PASSWORD}],
        "ports": [{"containerPort": 5432}],
        "readinessProbe": {"tcpSocket": {"port": 5432}, "periodSeconds": 1},
        "securityContext": security,
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "postgres", "namespace": namespace, "labels": labels},
        "spec": {"containers": [container], "automountServiceAccountToken": False},
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "postgres", "namespace": namespace},
        "spec": {"selector": labels, "ports": [{"port": 5432, "targetPort": 5432}]},
    }
    return [pod, service]


def _local_volume(name: str, path: Path, namespace: str, claim: str) -> list[dict[str, Any]]:
    """A `local` PersistentVolume on this node's directory `path`, bound ahead to the claim (no StorageClass)."""
    node = kubectl_json("get", "nodes")["items"][0]["metadata"]["name"]
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "local": {"path": str(path)},
            "claimRef": {"namespace": namespace, "name": claim},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}
                    ]
                }
            },
        },
    }
    claim_object = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim, "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "",
            "volumeName": name,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    return [volume, claim_object]


def _binding(name: str, **db: Any) -> dict[str, Any]:
    return {
        "apiVersion": "codeexec.io/v1alpha1",
        "kind": "SandboxBinding",
        "metadata": {"name": name},
        "spec": {"db": db},
    }


@pytest.fixture(scope="module")
def release(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    install_crds_and_runtimes()
    suffix = uuid.uuid4().hex[:6]
    namespace, work = f"e2e-bd-{suffix}", f"e2e-bd-{suffix}-work"
    volume_name, data_dir = f"e2e-bd-{suffix}", Path(f"/tmp/codeexec-e2e-broker-{suffix}")
    data_dir.mkdir()
    data_dir.chmod(0o777)  # the broker runs as 65532
    for name in (namespace, work):
        kubectl("create", "namespace", name)
        kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
    values = {
        "operator": {"watchNamespaces": [work], "replicaCount": 1},
        "runtimeClass": {"create": False},
        "runtimes": {name: {"enabled": False} for name in ("python", "javascript", "typescript")},
        "gateway": {"enabled": False},
        "helmTest": {"enabled": False},
        "broker": {"persistence": {"existingClaim": "broker-data"}},
    }
    values_file = tmp_path_factory.mktemp("bindings") / "values.json"
    values_file.write_text(json.dumps(values))
    try:
        create_objects(*_local_volume(volume_name, data_dir, namespace, "broker-data"), *_postgres(namespace))
        install = helm(
            "install", RELEASE, str(CHART), "-n", namespace, "-f", str(values_file), "--wait", "--timeout", "180s",
            check=False,
        )  # fmt: skip
        if install.returncode != 0:
            pods = kubectl("get", "pods,pvc", "-n", namespace, "-o", "wide", check=False)
            events = kubectl("get", "events", "-n", namespace, check=False)
            pytest.fail(f"helm install failed: {install.stderr}\n{pods}\n{events}")
        wait_until(lambda: ready_pod(namespace, "app=e2e-postgres"), 120, "PostgreSQL to be ready")
        postgres_service = kubectl_json("get", "service", "postgres", "-n", namespace)["spec"]["clusterIP"]
        dsn = f"postgresql://postgres:{POSTGRES_PASSWORD}@{postgres_service}:5432/postgres"
        kubectl("create", "secret", "generic", "pg", "-n", work, f"--from-literal=dsn={dsn}")
        for binding in (
            _binding("notes", engine="sqlite", statementTimeoutMs=TIMEOUT_MS),
            _binding("notes-ro", engine="sqlite", database="notes", readOnly=True),
            _binding("other", engine="sqlite"),
            _binding("watched", engine="sqlite"),
            _binding("pg", engine="postgres", dsnSecretRef={"name": "pg", "key": "dsn"}, statementTimeoutMs=TIMEOUT_MS),
            _binding("pg-ro", engine="postgres", dsnSecretRef={"name": "pg", "key": "dsn"}, readOnly=True),
        ):
            apply(work, binding)
        service = kubectl_json("get", "service", f"{RELEASE}-broker", "-n", namespace)["spec"]
        yield Release(
            namespace,
            work,
            service["clusterIP"],
            only_pod(namespace, BROKER)["status"]["podIP"],
            only_pod(namespace, BROKER)["spec"]["containers"][0]["image"],
            only_pod(namespace, OPERATOR)["status"]["podIP"],
            only_pod(namespace, "app=e2e-postgres")["status"]["podIP"],
            postgres_service,
        )
    finally:
        delete_executions(work)  # while the release's operator still removes their finalizers
        helm("uninstall", RELEASE, "-n", namespace, "--wait", check=False)
        for name in (work, namespace):
            kubectl("delete", "namespace", name, "--wait=false", check=False)
        kubectl("delete", "persistentvolume", volume_name, "--wait=false", check=False)
        shutil.rmtree(data_dir, ignore_errors=True)


PY_ROUND_TRIP = """
db.exec("CREATE TABLE py_items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
meta = db.run("INSERT INTO py_items (name, qty) VALUES (?, ?)", ["apple", 3])
db.run("INSERT INTO py_items (name, qty) VALUES (?, ?)", ("pear", 5))
rows = db.execute("SELECT name, qty FROM py_items ORDER BY id")
print(rows)
return {"rows": rows, "meta": meta, "first": db.first("SELECT qty FROM py_items WHERE name = ?", ["pear"])}
"""
JS_ROUND_TRIP = """
await db.exec("CREATE TABLE js_items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)");
const inserted = await db.prepare("INSERT INTO js_items (name, qty) VALUES (?, ?)").bind("apple", 3).run();
await db.prepare("INSERT INTO js_items (name, qty) VALUES (?, ?)").bind("pear", 5).run();
const { results } = await db.prepare("SELECT name, qty FROM js_items ORDER BY id").all();
console.log(JSON.stringify(results));
const first = await db.prepare("SELECT qty FROM js_items WHERE name = ?").bind("pear").first("qty");
return { rows: results, meta: inserted.meta, first: { qty: first } };
"""
TS_ROUND_TRIP = """
interface Item { name: string; qty: number }
await db.exec("CREATE TABLE ts_items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)");
const insert = db.prepare("INSERT INTO ts_items (name, qty) VALUES (?, ?)");
const inserted = await insert.bind("apple", 3).run();
await insert.bind("pear", 5).run();
const rows: Item[] = (await db.prepare("SELECT name, qty FROM ts_items ORDER BY id").all()).results;
console.log(JSON.stringify(rows));
const first: Item | null = await db.prepare("SELECT qty FROM ts_items WHERE name = ?").bind("pear").first();
return { rows, meta: inserted.meta, first };
"""
ROWS = [{"name": "apple", "qty": 3}, {"name": "pear", "qty": 5}]


def test_sqlite_round_trip_per_language(release: Release) -> None:
    """Each language creates a table, inserts with bound parameters and reads back; the broker counts the calls
    (exec, two inserts, a select, a first: 5), rows written (2) and read (2 + 1) in status.bindings."""
    names = {language: unique_name(f"rt-{language[:2]}") for language in ("python", "javascript", "typescript")}
    codes = {"python": PY_ROUND_TRIP, "javascript": JS_ROUND_TRIP, "typescript": TS_ROUND_TRIP}
    manifests = [
        execution_manifest(name, language, codes[language], bindings=["notes"]) for language, name in names.items()
    ]
    finished = run_all(release.work, manifests)
    for language, name in names.items():
        status = succeeded(finished[name])
        assert status["result"]["rows"] == ROWS, (language, status)
        assert status["result"]["first"] == {"qty": 5}, (language, status)
        meta = status["result"]["meta"]
        if language == "python":
            assert meta["changes"] == 1 and meta["lastRowId"] == 1 and meta["rowsWritten"] == 1, meta
            assert status["stdout"] == f"{ROWS}\n"
        else:  # D1's names
            assert meta["changes"] == 1 and meta["last_row_id"] == 1 and meta["rows_written"] == 1, meta
            assert json.loads(status["stdout"]) == ROWS, (language, status["stdout"])
        usage = binding_usage(release.work, name, "notes", calls=5, rowsWritten=2, rowsRead=3)
        assert usage["type"] == "db" and usage["errors"] == 0 and usage["refused"] == 0, usage


PG_PY = """
db.exec("CREATE TABLE pg_py (id serial PRIMARY KEY, name text NOT NULL, qty int)")
added = db.execute("INSERT INTO pg_py (name, qty) VALUES ($1, $2), ($3, $4) RETURNING id", ["apple", 3, "pear", 5])
rows = db.execute("SELECT name, qty FROM pg_py WHERE qty > $1 ORDER BY id", [0])
return {"added": added, "rows": rows, "first": db.first("SELECT qty FROM pg_py WHERE name = $1", ["pear"])}
"""
PG_JS = """
await db.exec("CREATE TABLE pg_js (id serial PRIMARY KEY, name text NOT NULL, qty int)");
const added = await db.prepare("INSERT INTO pg_js (name, qty) VALUES ($1, $2), ($3, $4) RETURNING id")
  .bind("apple", 3, "pear", 5).all();
const { results } = await db.prepare("SELECT name, qty FROM pg_js WHERE qty > $1 ORDER BY id").bind(0).all();
const first = await db.prepare("SELECT qty FROM pg_js WHERE name = $1").bind("pear").first();
return { added: added.results, rows: results, first };
"""


def test_postgres_round_trip(release: Release) -> None:
    """Python and JavaScript against the real PostgreSQL, with $1 parameters; its DSN never reaches the sandbox."""
    names = {"python": unique_name("pg-py"), "javascript": unique_name("pg-js")}
    codes = {"python": PG_PY, "javascript": PG_JS}
    finished = run_all(
        release.work,
        [execution_manifest(name, language, codes[language], bindings=["pg"]) for language, name in names.items()],
    )
    for language, name in names.items():
        status = succeeded(finished[name])
        assert status["result"] == {"added": [{"id": 1}, {"id": 2}], "rows": ROWS, "first": {"qty": 5}}, language
        assert POSTGRES_PASSWORD not in json.dumps(finished[name])
        binding_usage(release.work, name, "pg", calls=4, rowsWritten=2, rowsRead=5)


WAIT_FOR_STOP = """
import os, time
db.exec("CREATE TABLE stop (x)")
while not db.first("SELECT x FROM stop"):
    time.sleep(0.2)
names = ("CODEEXEC_BROKER_URL", "CODEEXEC_BINDING_TOKEN", "CODEEXEC_EXECUTION", "CODEEXEC_BINDINGS")
print(json.dumps({name: os.environ[name] for name in names}))
"""


def _bindings_file(release: Release, execution_uid: str) -> dict[str, Any]:
    """bindings.json as the operator delivered it: from the Execution's Secret (owned by it, immutable), while its
    ConfigMap, which namespace viewers read, holds no token."""
    selector = f"{EXECUTION_UID_LABEL}={execution_uid}"
    [secret] = kubectl_json("get", "secrets", "-n", release.work, "-l", selector)["items"]
    assert secret["immutable"] is True and secret["metadata"]["ownerReferences"][0]["uid"] == execution_uid
    delivered: dict[str, Any] = json.loads(base64.b64decode(secret["data"]["bindings.json"]))
    [configmap] = kubectl_json("get", "configmaps", "-n", release.work, "-l", selector)["items"]
    assert "bindings.json" not in configmap["data"] and delivered["token"] not in json.dumps(configmap)
    return delivered


def test_in_use_and_a_token_dies_with_its_execution(release: Release) -> None:
    """While it runs, an Execution shows in its binding's inUse/usedBy and its token (read from its Secret) works from
    another sandbox too (an Execution of the same binding, the only kind of pod the broker admits); once it
    finished, the same token replayed from a third is refused (401), its Secret is gone, and the binding shows no
    user."""
    name, writer, replayer = unique_name("replay"), unique_name("replay-w"), unique_name("replay-r")
    apply(release.work, execution_manifest(name, "python", "import json\n" + WAIT_FOR_STOP, bindings=["watched"]))

    def in_use() -> dict[str, Any] | None:
        found: dict[str, Any] = kubectl_json("get", "sandboxbinding", "watched", "-n", release.work).get("status", {})
        return found if found.get("inUse") == 1 and found.get("usedBy") == [name] else None

    wait_until(in_use, 60, f"SandboxBinding watched to show {name} in use")
    execution_uid = uid(get_execution(release.work, name))
    delivered = _bindings_file(release, execution_uid)
    token, who = delivered["token"], delivered["execution"]
    assert who == f"{release.work}/{name}" and delivered["url"] == release.broker_url
    as_first = {"token": token, "execution": who}
    stop = {**as_first, "sql": "INSERT INTO stop VALUES (?)", "params": [1], "mode": "run", "retry": True}
    written = run_one(release.work, execution_manifest(writer, "python", REPLAY, bindings=["watched"], input=stop))
    assert written["result"][0] == 200, written["result"]
    status = succeeded(wait_finished(release.work, name))
    assert json.loads(status["stdout"]) == {
        "CODEEXEC_BROKER_URL": release.broker_url,
        "CODEEXEC_BINDING_TOKEN": token,
        "CODEEXEC_EXECUTION": who,
        "CODEEXEC_BINDINGS": '{"watched":"db"}',
    }
    select = {**as_first, "sql": "SELECT x FROM stop", "params": [], "mode": "all", "retry": False}
    replayed = run_one(release.work, execution_manifest(replayer, "python", REPLAY, bindings=["watched"], input=select))
    code, body = replayed["result"]
    assert code == 401 and body["error"]["code"] == "Unauthorized", replayed["result"]

    def no_secret() -> bool:
        selector = f"{EXECUTION_UID_LABEL}={execution_uid}"
        return not kubectl_json("get", "secrets", "-n", release.work, "-l", selector)["items"]

    wait_until(no_secret, 30, f"the Secret of {name} to be deleted with its sandbox")

    def no_user() -> bool:
        found = kubectl_json("get", "sandboxbinding", "watched", "-n", release.work).get("status", {})
        return found.get("inUse") == 0 and not found.get("usedBy")

    wait_until(no_user, 30, "SandboxBinding watched to show no user")


# call(): one query to the broker as the program's harness makes it, with its own token and name unless given others.
BROKER_CALL = """
import json, os, time, urllib.request, urllib.error

def call(binding, sql, execution=None, token=None, params=(), mode="all"):
    request = urllib.request.Request(
        f"{os.environ['CODEEXEC_BROKER_URL']}/v1/db/{binding}/query",
        data=json.dumps({"sql": sql, "params": list(params), "mode": mode}).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": "Bearer " + (token or os.environ["CODEEXEC_BINDING_TOKEN"]),
            "X-Codeexec-Execution": execution or os.environ["CODEEXEC_EXECUTION"],
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return [response.status, json.loads(response.read())]
    except urllib.error.HTTPError as error:
        return [error.code, json.loads(error.read())]
"""
RAW_CALL = (
    BROKER_CALL
    + """
return {
    "own": call("notes", "SELECT 1 AS one"),
    "others": call("other", "SELECT 1 AS one"),
    "as_other_execution": call("other", "SELECT 1 AS one", input["other"]),
    "absent": call("nowhere", "SELECT 1 AS one"),
}
"""
)
# Another Execution's call on `watched` with its token; with retry until it succeeds (the stop table is that
# Execution's first call: an insert fails until it exists).
REPLAY = (
    BROKER_CALL
    + """
give_up = time.monotonic() + 60
while True:
    answer = call("watched", input["sql"], input["execution"], input["token"], input["params"], input["mode"])
    if answer[0] == 200 or not input["retry"] or time.monotonic() > give_up:
        return answer
    time.sleep(0.5)
"""
)


def test_a_token_grants_only_its_own_bindings(release: Release) -> None:
    """A (names `notes`) calls `other`, which only B names: 403 NotGranted, with a BindingRefused Event on A; A's
    token with B's name is 401; and an Execution naming a binding that does not exist is Rejected."""
    a, b, missing = unique_name("grant-a"), unique_name("grant-b"), unique_name("missing")
    b_code = 'db.exec("CREATE TABLE IF NOT EXISTS t (x)")\nreturn db.first("SELECT 2 AS two")'
    finished = run_all(
        release.work,
        [
            execution_manifest(a, "python", RAW_CALL, bindings=["notes"], input={"other": f"{release.work}/{b}"}),
            execution_manifest(b, "python", b_code, bindings=["other"]),
            execution_manifest(missing, "python", "print(1)", bindings=["notes", "nowhere"]),
        ],
    )
    result = succeeded(finished[a])["result"]
    assert result["own"][0] == 200 and result["own"][1]["results"] == [{"one": 1}], result
    for refused in ("others", "absent"):
        assert result[refused][0] == 403 and result[refused][1]["error"]["code"] == "NotGranted", result
    assert result["as_other_execution"][0] == 401, result
    assert result["as_other_execution"][1]["error"]["code"] == "Unauthorized", result
    assert succeeded(finished[b])["result"] == {"two": 2}
    rejected = finished[missing]["status"]
    assert (rejected["phase"], rejected["reason"]) == ("Rejected", "BindingNotFound"), rejected
    assert "nowhere" in rejected["message"]
    events = kubectl_json("get", "events", "-n", release.work, "--field-selector", f"involvedObject.name={a}")
    assert any(event["reason"] == "BindingRefused" for event in events["items"]), events["items"]


SCAN = """
import socket, concurrent.futures

def attempt(target):
    try:
        socket.create_connection((target[0], target[1]), timeout=3).close()
    except socket.timeout:
        return "timeout"
    except OSError as error:
        return type(error).__name__
    return "connected"

with concurrent.futures.ThreadPoolExecutor(len(input)) as pool:
    outcomes = dict(zip(input, pool.map(attempt, input.values())))
return outcomes
"""


def test_sandboxes_reach_the_broker_api_and_nothing_else(release: Release) -> None:
    """Code with a binding reaches the broker's port 8080 (pod and Service), not its metrics port 9090, the
    operator, PostgreSQL or the API server; code without bindings reaches no broker at all. Every target listens
    (seen from this host), so only the sandbox's policy stops the code."""
    kubernetes = kubectl_json("get", "service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
    blocked = {
        "broker_metrics": [release.broker_ip, 9090],
        "operator_health": [release.operator_ip, 8080],
        "postgres_pod": [release.postgres_ip, 5432],
        "postgres_service": [release.postgres_service, 5432],
        "api_server": [kubernetes, 443],
    }
    broker = {"broker_pod": [release.broker_ip, 8080], "broker_service": [release.broker_service, 8080]}
    for label, (address, port) in {**blocked, **broker}.items():
        assert listening(address, port), f"{label} {address}:{port} does not listen: the test proves nothing"
    with_binding, without = unique_name("scan"), unique_name("nobind")
    no_binding_code = "assert bindings == {} and 'db' not in globals()\n" + SCAN
    finished = run_all(
        release.work,
        [
            execution_manifest(with_binding, "python", SCAN, bindings=["notes"], input={**blocked, **broker}),
            execution_manifest(without, "python", no_binding_code, input=broker),
        ],
    )
    reached = succeeded(finished[with_binding])["result"]
    assert {label: reached[label] for label in broker} == dict.fromkeys(broker, "connected"), reached
    assert not [label for label in blocked if reached[label] == "connected"], reached
    unbound = succeeded(finished[without])["result"]
    assert "connected" not in unbound.values(), unbound


OUTSIDER = """
import json, socket, sys
outcomes = {}
for label, (address, port) in json.loads(sys.argv[1]).items():
    try:
        socket.create_connection((address, port), timeout=3).close()
        outcomes[label] = "connected"
    except OSError as error:
        outcomes[label] = type(error).__name__
print(json.dumps(outcomes))
"""


def test_pods_that_are_not_sandboxes_do_not_reach_the_broker(release: Release) -> None:
    """The broker's NetworkPolicy: a plain pod (the operator's image, no sandbox labels) in the watched namespace
    reaches neither the broker's API nor its metrics, pod or Service, so no token can be tried from it; it does reach
    PostgreSQL (no policy there): its probe works."""
    name = unique_name("outsider")
    targets = {
        "broker_pod": [release.broker_ip, 8080],
        "broker_service": [release.broker_service, 8080],
        "broker_metrics": [release.broker_ip, 9090],
        "postgres_pod": [release.postgres_ip, 5432],
    }
    container = {
        "name": "probe",
        "image": release.broker_image,
        "imagePullPolicy": "Never",
        "command": ["python", "-c", OUTSIDER, json.dumps(targets)],
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": release.work},
        "spec": {"containers": [container], "restartPolicy": "Never", "automountServiceAccountToken": False},
    }
    create_objects(pod)
    try:
        finished = wait_until(lambda: pod_finished(release.work, name), 120, f"pod {name} to finish")
        log = kubectl("logs", name, "-n", release.work)
        assert finished["status"]["phase"] == "Succeeded", log
        reached = json.loads(log)
    finally:
        kubectl("delete", "pod", name, "-n", release.work, "--wait=false", check=False)
    assert reached["postgres_pod"] == "connected", reached
    assert not [label for label, outcome in reached.items() if label != "postgres_pod" and outcome == "connected"], (
        reached
    )


INJECTION = """
evil = "x'); DROP TABLE victims; --"
db.exec("CREATE TABLE victims (name TEXT)")
db.run("INSERT INTO victims (name) VALUES (?)", [evil])
pg = bindings["pg"]
pg.exec("CREATE TABLE victims (name text)")
pg.run("INSERT INTO victims (name) VALUES ($1)", [evil])
pg.run("INSERT INTO victims (name) VALUES ($1)", ["1; DROP TABLE victims"])
return {
    "sqlite_or": db.execute("SELECT name FROM victims WHERE name = ?", ["x' OR '1'='1"]),
    "sqlite": db.execute("SELECT name FROM victims"),
    "pg": pg.execute("SELECT name FROM victims ORDER BY name"),
}
"""
# `bindings` holds both; `db` is only the single db binding, so the SQLite one is picked by name too.
INJECTION = 'db = bindings["notes"]\n' + INJECTION


def test_sql_injection_through_parameters_is_inert(release: Release) -> None:
    status = run_one(
        release.work, execution_manifest(unique_name("inject"), "python", INJECTION, bindings=["notes", "pg"])
    )
    assert status["result"] == {
        "sqlite_or": [],
        "sqlite": [{"name": "x'); DROP TABLE victims; --"}],
        "pg": [{"name": "1; DROP TABLE victims"}, {"name": "x'); DROP TABLE victims; --"}],
    }, status


READ_ONLY = """
def attempt(client, sql, params=()):
    try:
        client.run(sql, params)
    except BindingError as error:
        return error.code
    return "done"

bindings["notes"].exec("CREATE TABLE kept_ro (v TEXT); INSERT INTO kept_ro VALUES ('mine')")
bindings["pg"].exec("CREATE TABLE kept_ro (v text); INSERT INTO kept_ro VALUES ('mine')")
lite, pg = bindings["notes-ro"], bindings["pg-ro"]
return {
    "sqlite_read": lite.execute("SELECT v FROM kept_ro"),
    "sqlite_insert": attempt(lite, "INSERT INTO kept_ro VALUES (?)", ["thief"]),
    "sqlite_attach": attempt(lite, "ATTACH DATABASE '/tmp/x.sqlite3' AS x"),
    "sqlite_writable_schema": attempt(lite, "PRAGMA writable_schema = ON"),
    "pg_read": pg.execute("SELECT v FROM kept_ro"),
    "pg_insert": attempt(pg, "INSERT INTO kept_ro VALUES ($1)", ["thief"]),
    "pg_copy": attempt(pg, "COPY kept_ro FROM STDIN"),
    "pg_copy_program": attempt(pg, "COPY kept_ro TO PROGRAM 'true'"),
}
"""


def test_read_only_bindings_refuse_writes(release: Release) -> None:
    """notes-ro is the `notes` database read-only, pg-ro the PostgreSQL one: the same Execution writes a row through
    the writable bindings, reads it through the read-only ones, whose writes are refused."""
    bindings = ["notes", "notes-ro", "pg", "pg-ro"]
    manifest = execution_manifest(unique_name("ro"), "python", READ_ONLY, bindings=bindings)
    result = run_one(release.work, manifest)["result"]
    assert result == {
        "sqlite_read": [{"v": "mine"}],
        "sqlite_insert": "ReadOnly",
        "sqlite_attach": "ReadOnly",
        "sqlite_writable_schema": "ReadOnly",
        "pg_read": [{"v": "mine"}],
        "pg_insert": "ReadOnly",
        "pg_copy": "ReadOnly",
        "pg_copy_program": "ReadOnly",
    }, result


TIMEOUTS = """
import time

def timed(client, sql):
    started = time.monotonic()
    try:
        client.execute(sql)
    except BindingError as error:
        return [error.code, error.status, round(time.monotonic() - started, 1)]
    return ["finished", 200, round(time.monotonic() - started, 1)]

return {
    "sqlite": timed(bindings["notes"], "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
                                        "SELECT max(i) FROM n"),
    "pg": timed(bindings["pg"], "SELECT pg_sleep(30)"),
    "after": bindings["pg"].first("SELECT 1 AS one"),
}
"""


def test_statement_timeout_cancels_the_query(release: Release) -> None:
    """Both bindings have statementTimeoutMs 1000: an endless recursive CTE (SQLite) and pg_sleep(30) are cut near
    that (well before the Execution's own timeout), and the binding still answers afterwards."""
    manifest = execution_manifest(unique_name("slow"), "python", TIMEOUTS, bindings=["notes", "pg"], timeoutSeconds=60)
    result = run_one(release.work, manifest)["result"]
    for engine in ("sqlite", "pg"):
        code, status, seconds = result[engine]
        assert (code, status) == ("StatementTimeout", 408), result
        assert seconds < 10, result
    assert result["after"] == {"one": 1}


def test_sqlite_databases_survive_the_broker_pod(release: Release) -> None:
    """broker.persistence.existingClaim: rows written, the broker pod deleted, read back by a new Execution from
    its successor."""
    writer, reader = unique_name("keep-w"), unique_name("keep-r")
    write = 'db.exec("CREATE TABLE kept (v TEXT)")\ndb.run("INSERT INTO kept VALUES (?)", ["survives"])'
    run_one(release.work, execution_manifest(writer, "python", write, bindings=["other"]))
    old = only_pod(release.namespace, BROKER)["metadata"]["uid"]
    kubectl("delete", "pod", "-n", release.namespace, "-l", BROKER, "--wait=true")

    def successor() -> dict[str, Any] | None:
        pod = ready_pod(release.namespace, BROKER)
        return pod if pod and pod["metadata"]["uid"] != old else None

    wait_until(successor, 120, "a new broker pod to be ready")
    read = 'return db.execute("SELECT v FROM kept")'
    status = run_one(release.work, execution_manifest(reader, "python", read, bindings=["other"]))
    assert status["result"] == [{"v": "survives"}]


# One row keyed by the Execution's own name (as the operator delivered it): a second run of the same Execution
# would fail on UNIQUE (and count an error), never add a row.
ONE_ROW = """
import os
table = input["table"]
db.exec(f"CREATE TABLE IF NOT EXISTS {table} (name TEXT NOT NULL UNIQUE)")
db.run(f"INSERT INTO {table} (name) VALUES (?)", [os.environ["CODEEXEC_EXECUTION"]])
return db.first(f"SELECT count(*) AS seen FROM {table}")["seen"]
"""
BURST = 8
# A burst of BURST cold sandboxes, two operator restarts and a reader, on the shared 2-core node.
BURST_TIMEOUT = 240


def _operator_pods(release: Release) -> list[dict[str, Any]]:
    pods = kubectl_json("get", "pods", "-n", release.namespace, "-l", OPERATOR)["items"]
    return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]


def _restarted(release: Release, pod: str) -> bool:
    """The pod's operator container died by SIGKILL (137) and runs again."""
    (container,) = kubectl_json("get", "pod", pod, "-n", release.namespace)["status"]["containerStatuses"]
    killed = container.get("lastState", {}).get("terminated", {}).get("exitCode") == 137
    return killed and "running" in container["state"]


def test_operator_killed_mid_burst_loses_and_duplicates_no_call(release: Release) -> None:
    """A burst of 8 Executions naming `notes`, each inserting one row keyed by its name; the operator's process is
    SIGKILLed once 2 of their sandboxes exist (the others Pending or queued), and its pod force-deleted once 2 more
    exist: each Execution Succeeded with exactly one sandbox pod ever (a watch on etcd), its status.bindings shows
    its own 3 calls and 1 row written (no second run's calls, no refusal), the table holds exactly one row per
    Execution, and none of their children (Secret, ConfigMap, NetworkPolicy, pod) is left.
    Safeguards: the token derived from the Execution (the one in a Secret a dead operator created is the one the
    broker expects), deterministic child names with 409 → adopt, the operator's clean-up of finished Executions
    after a restart, and a broker that serves a sandbox whose Execution no operator has marked Running yet.
    Seen failing on main (2026-12-02): sandboxes created before a kill ran while no operator was up, their first
    call was refused (BindingRefused "the Execution is Pending, not Running") and they ended Failed (2 of 8 in one
    run, 4 in another); the same burst without the faults passed (8/8), and with both faults it passed against an
    image whose broker admits Pending too (~25 s for the test on the shared node)."""
    suffix = uuid.uuid4().hex[:6]
    table = f"burst_{suffix}"
    names = [f"kill-{suffix}-{index}" for index in range(BURST)]
    spec = {"bindings": ["notes"], "input": {"table": table}}
    manifests = [execution_manifest(name, "python", ONE_ROW, **spec) for name in names]
    with EtcdPodCreations(release.work) as pods:

        def created() -> int:
            return sum(pods.pods_per_execution().values())

        apply(release.work, *manifests)
        wait_until(lambda: created() >= 2, BURST_TIMEOUT, "2 sandbox pods of the burst")
        (operator,) = _operator_pods(release)
        kill_process(release.namespace, operator["metadata"]["name"])
        found = executions(release.work)
        reasons = Counter((found[name].get("status") or {}).get("reason") for name in names if name in found)
        print(f"\nSIGKILL of {operator['metadata']['name']} after {created()} sandbox pods; reasons: {dict(reasons)}")
        wait_until(lambda: _restarted(release, operator["metadata"]["name"]), 120, "the operator to restart")
        before = created()
        wait_until(lambda: created() >= min(before + 2, BURST), BURST_TIMEOUT, "the restarted operator to launch")
        kubectl("delete", "pod", operator["metadata"]["name"], "-n", release.namespace, "--grace-period=0", "--force")
        print(f"force-deleted {operator['metadata']['name']} after {created()} sandbox pods")
        finished = wait_all_finished(release.work, names, BURST_TIMEOUT)
        pods.check_alive()
        per_execution = pods.pods_per_execution()
    uids = {name: uid(finished[name]) for name in names}
    problems = [
        f"{name}: {status.get('phase')}/{status.get('reason')} result {status.get('result')!r}, "
        f"{per_execution[uids[name]]} sandbox pods, stderr {status.get('stderr', '')[-300:]!r}"
        for name in names
        if (status := finished[name]["status"]).get("phase") != "Succeeded"
        or not 1 <= status.get("result", 0) <= BURST
        or per_execution[uids[name]] != 1
    ]
    assert not problems, "\n".join(problems)
    for name in names:
        binding_usage(release.work, name, "notes", calls=3, rowsWritten=1, errors=0, refused=0)
    read = f"return [row['name'] for row in db.execute('SELECT name FROM {table} ORDER BY name')]"
    rows = run_one(release.work, execution_manifest(f"kill-{suffix}-read", "python", read, bindings=["notes"]))[
        "result"
    ]
    assert rows == [f"{release.work}/{name}" for name in sorted(names)]

    def leftovers() -> list[str]:
        selector = f"{EXECUTION_UID_LABEL} in ({','.join(uids.values())})"
        kinds = "pods,configmaps,secrets,networkpolicies"
        return kubectl("get", kinds, "-n", release.work, "-l", selector, "-o", "name").split()

    try:
        wait_until(lambda: not leftovers(), 60, "the burst's children to be deleted")
    except AssertionError as error:
        raise AssertionError(f"{error}; left: {leftovers()}") from None
