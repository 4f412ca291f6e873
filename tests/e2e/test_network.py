"""e2e: sandbox networking on the real cluster (SECURITY_CASES.md 8-11): allowed domains pinned and reachable,
everything else blocked (other hosts and ports, the API server, the node, metadata, other sandboxes), no DNS
leaves a pod, nothing connects in, forbidden or unresolvable domains rejected, and no code runs unfenced.

Every address involved is on this machine: test hosts are network namespaces with 10.250.x.2 addresses,
169.254.169.254 is routed (for pod traffic only) into one of them, and names resolve through /etc/hosts
entries this module adds and removes."""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.executions import (
    apply,
    execution_manifest,
    get_execution,
    run,
    sandbox_objects,
    uid,
    wait_all_finished,
    wait_finished,
)
from tests.e2e.kube import kubectl, kubectl_json, netns, run_host, wait_until

pytestmark = pytest.mark.e2e

HOSTS_FILE = Path("/etc/hosts")
METADATA_ADDRESS = "169.254.169.254"
POD_CIDR = "10.244.0.0/16"
# Policy routing table for pod traffic to the fake metadata address (any free number will do).
METADATA_TABLE = "2547"
HTTP_PORT = 8080
OTHER_PORT = 8081

# Runs inside a test host's netns: HTTP on 80 and 8080 (JSON naming the host and path), a bare TCP
# listener on 8081 and a UDP listener on 53 (a DNS server that only records). Every connection, request
# and packet becomes a JSON line in the event log.
SERVER = r"""
import http.server, json, socket, sys, threading, time
log_path, name = sys.argv[1], sys.argv[2]
lock = threading.Lock()
def record(**event):
    with lock, open(log_path, "a") as log:
        log.write(json.dumps({"time": time.time(), **event}) + "\n")
class Handler(http.server.BaseHTTPRequestHandler):
    def setup(self):
        super().setup()
        record(kind="connect", port=self.server.server_address[1], peer=self.client_address[0])
    def do_GET(self):
        record(kind="http", port=self.server.server_address[1], peer=self.client_address[0], path=self.path)
        body = json.dumps({"host": name, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
def tcp(port):
    server = socket.create_server(("0.0.0.0", port))
    while True:
        conn, peer = server.accept()
        record(kind="tcp", port=port, peer=peer[0])
        conn.close()
def udp(port):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("0.0.0.0", port))
    while True:
        data, peer = server.recvfrom(65535)
        record(kind="udp", port=port, peer=peer[0], data=data.hex())
for port in (80, 8080):
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
threading.Thread(target=tcp, args=(8081,), daemon=True).start()
threading.Thread(target=udp, args=(53,), daemon=True).start()
record(kind="ready")
threading.Event().wait()
"""

# Python helpers prepended to the sandbox code: one connection attempt, classified.
ATTEMPT = textwrap.dedent(
    """
    import socket, time
    def attempt(host, port, timeout=3.0):
        started = time.monotonic()
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome = "connected"
        except ConnectionRefusedError:
            outcome = "refused"
        except socket.timeout:
            outcome = "timeout"
        except OSError as error:
            outcome = f"{type(error).__name__}: {error}"
        return {"outcome": outcome, "ms": int((time.monotonic() - started) * 1000)}
    """
)


@dataclass
class NetHost:
    """A network namespace on this machine with its own address, serving SERVER; `name` resolves to it."""

    label: str
    name: str
    netns: str
    address: str
    host_side: str
    host_if: str
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        """What reached the host's servers: every connection and packet after the first `since` ones.
        (Pod traffic is masqueraded to the host-side address, so the peer does not tell who sent it.)"""
        if not self.log.exists():
            return []
        events = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [event for event in events if event["kind"] != "ready"][since:]

    def mark(self) -> int:
        """A position in the event log: events(since=mark) is what came after."""
        return len(self.events())

    def exec(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *command], capture_output=True, text=True, timeout=timeout
        )


@dataclass
class Network:
    """Everything the tests here talk to; all of it on this machine."""

    allowed: NetHost
    other: NetHost
    names: dict[str, str]  # label → host name in /etc/hosts
    node_ip: str
    api_service_ip: str
    api_service_port: int


def _used_octets() -> set[int]:
    output = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    return {int(word.split(".")[2]) for word in output.split() if word.startswith("10.250.")}


@contextlib.contextmanager
def _test_host(label: str, name: str, octet: int, tmp: Path) -> Iterator[NetHost]:
    script = tmp / "server.py"
    script.write_text(SERVER)
    with netns(octet) as ns:
        host = NetHost(label, name, ns.name, ns.address, ns.gateway, ns.host_if, tmp / f"{label}-events.jsonl")
        try:
            host.process = subprocess.Popen(
                ["ip", "netns", "exec", ns.name, sys.executable, str(script), str(host.log), label],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_until(
                lambda: host.log.exists() and '"ready"' in host.log.read_text(), 20, f"test host {label} to serve"
            )
            yield host
        finally:
            if host.process is not None:
                host.process.kill()
                host.process.wait()


@contextlib.contextmanager
def _hosts_entries(entries: list[tuple[str, str]], marker: str) -> Iterator[None]:
    """Lines "ADDRESS NAME # MARKER" appended to /etc/hosts (the operator, a local process, resolves
    through it), removed afterwards by their marker. Written in place: /etc/hosts may be a bind mount."""
    lines = "".join(f"{address} {name} # {marker}\n" for address, name in entries)
    with HOSTS_FILE.open("a") as hosts:
        hosts.write(lines)
    try:
        yield
    finally:
        kept = [line for line in HOSTS_FILE.read_text().splitlines(keepends=True) if marker not in line]
        with HOSTS_FILE.open("r+") as hosts:
            hosts.write("".join(kept))
            hosts.truncate()


@contextlib.contextmanager
def _metadata_route(via: NetHost) -> Iterator[None]:
    """Pod traffic to 169.254.169.254 goes to `via` (which holds that address) instead of leaving the
    machine, should a policy ever let it through. Only packets from pods: the host's own traffic to
    that address is untouched."""
    run_host("ip", "-n", via.netns, "addr", "add", f"{METADATA_ADDRESS}/32", "dev", "lo")
    run_host("ip", "route", "add", f"{METADATA_ADDRESS}/32", "via", via.address, "table", METADATA_TABLE)
    rule = ["from", POD_CIDR, "to", f"{METADATA_ADDRESS}/32", "lookup", METADATA_TABLE, "priority", METADATA_TABLE]
    run_host("ip", "rule", "add", *rule)
    try:
        yield
    finally:
        subprocess.run(["ip", "rule", "del", *rule], capture_output=True)
        subprocess.run(["ip", "route", "flush", "table", METADATA_TABLE], capture_output=True)


@pytest.fixture(scope="module")
def network(cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    tmp = tmp_path_factory.mktemp("network")
    tag = uuid.uuid4().hex[:6]
    node = kubectl_json("get", "nodes")["items"][0]
    node_ip = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")
    service = kubectl_json("get", "service", "kubernetes", "-n", "default")["spec"]
    free = sorted(set(range(1, 251)) - _used_octets())
    octets = [free[int(tag, 16) % len(free)], free[(int(tag, 16) + 97) % len(free)]]
    names = {
        label: f"{label}-{tag}.codeexec-e2e.test"
        for label in ("allowed", "other", "metadata", "node", "apiservice", "loopback", "podrange", "private", "rebind")
    }
    with contextlib.ExitStack() as stack:
        allowed = stack.enter_context(_test_host("allowed", names["allowed"], octets[0], tmp))
        other = stack.enter_context(_test_host("other", names["other"], octets[1], tmp))
        stack.enter_context(_metadata_route(other))
        entries = [
            (allowed.address, names["allowed"]),
            (other.address, names["other"]),
            (METADATA_ADDRESS, names["metadata"]),
            (node_ip, names["node"]),
            (service["clusterIP"], names["apiservice"]),
            ("127.0.0.1", names["loopback"]),
            ("10.244.0.250", names["podrange"]),
            ("10.251.0.1", names["private"]),  # private, outside the e2e operator's allowed 10.250.0.0/16
            # DNS rebinding: a good address next to a forbidden one.
            (allowed.address, names["rebind"]),
            (METADATA_ADDRESS, names["rebind"]),
        ]
        stack.enter_context(_hosts_entries(entries, f"codeexec-e2e-network-{tag}"))
        yield Network(allowed, other, names, node_ip, service["clusterIP"], service["ports"][0]["port"])


def _status(execution: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = execution.get("status", {})
    return status


def _succeeded(execution: dict[str, Any]) -> Any:
    status = _status(execution)
    assert status.get("phase") == "Succeeded", json.dumps(status, indent=1)[:3000]
    return status.get("result")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_allowed_domain_is_reachable_and_nothing_else(op_namespace: str, network: Network) -> None:
    """Case 8 from Python: the allowed host on its allowed port works at once; its other ports, its UDP,
    another host by address and by name do not."""
    allowed, other = network.allowed, network.other
    allowed_mark, other_mark = allowed.mark(), other.mark()
    code = ATTEMPT + textwrap.dedent(
        """
        result = {"allowed": api.get(f"http://{input['allowed']}:8080/from-python")}
        result["allowedOtherPort"] = attempt(input["allowed"], 8081)
        result["otherByAddress"] = attempt(input["otherAddress"], 8080)
        result["otherMetadataPort"] = attempt(input["otherAddress"], 80)
        try:
            socket.getaddrinfo(input["other"], 8080)
            result["otherByName"] = "resolved"
        except socket.gaierror as error:
            result["otherByName"] = f"gaierror: {error}"
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(b"hello over udp", (input["allowed"], 53))
        result["hosts"] = open("/etc/hosts").read()
        return result
        """
    )
    execution = run(
        op_namespace,
        _name("allowed"),
        "python",
        code,
        input={"allowed": allowed.name, "other": other.name, "otherAddress": other.address},
        network={"allowedDomains": [f"{allowed.name}:{HTTP_PORT}"]},
    )
    result = _succeeded(execution)
    assert result["allowed"] == {"host": "allowed", "path": "/from-python"}
    assert _status(execution)["resolvedAddresses"] == [allowed.address]
    assert f"{allowed.address}\t{allowed.name}" in result["hosts"]
    assert other.name not in result["hosts"]
    for check in ("allowedOtherPort", "otherByAddress", "otherMetadataPort"):
        assert result[check]["outcome"] != "connected", (check, result[check])
    assert result["otherByName"].startswith("gaierror"), result["otherByName"]
    # The servers' side: one request, on the allowed port only; nothing at the other host.
    assert [(e["kind"], e["port"], e.get("path")) for e in allowed.events(allowed_mark)] == [
        ("connect", 8080, None),
        ("http", 8080, "/from-python"),
    ]
    assert other.events(other_mark) == []
    print("blocked attempts:", {k: v for k, v in result.items() if k not in ("allowed", "hosts")})


def test_javascript_reaches_the_allowed_domain_on_default_ports_only(op_namespace: str, network: Network) -> None:
    """Case 8 from JavaScript: `api` and `fetch` reach the allowed host on port 80 (no port given: 443
    and 80); its port 8080 and the other host are refused; unknown names do not resolve."""
    allowed = network.allowed
    allowed_mark, other_mark = allowed.mark(), network.other.mark()
    code = textwrap.dedent(
        """
        const out = {};
        out.viaApi = await api.get(`http://${input.allowed}/from-api`);
        out.viaFetch = await (await fetch(`http://${input.allowed}/from-fetch`)).json();
        for (const [key, url] of [["port8080", `http://${input.allowed}:8080/`], ["other", `http://${input.other}/`]]) {
          try { await api.get(url); out[key] = "connected"; } catch (error) { out[key] = error.message; }
        }
        try { await require("dns").promises.lookup(`exfil-${input.tag}.example.com`); out.lookup = "resolved"; }
        catch (error) { out.lookup = error.code; }
        return out;
        """
    )
    execution = run(
        op_namespace,
        _name("javascript"),
        "javascript",
        code,
        input={"allowed": allowed.name, "other": network.other.address, "tag": uuid.uuid4().hex[:8]},
        network={"allowedDomains": [allowed.name]},
    )
    result = _succeeded(execution)
    assert result["viaApi"] == {"host": "allowed", "path": "/from-api"}
    assert result["viaFetch"] == {"host": "allowed", "path": "/from-fetch"}
    assert "ECONNREFUSED" in result["port8080"] or "ETIMEDOUT" in result["port8080"], result["port8080"]
    assert result["other"].startswith(f"GET http://{network.other.address}/ failed:"), result["other"]
    assert result["lookup"] in ("EAI_AGAIN", "ENOTFOUND"), result["lookup"]
    assert _status(execution)["stderr"] == ""  # no ExperimentalWarning about fetch
    events = allowed.events(allowed_mark)
    assert [e["path"] for e in events if e["kind"] == "http"] == ["/from-api", "/from-fetch"]
    assert {e["port"] for e in events} == {80}  # fetch may reuse one connection for both
    assert network.other.events(other_mark) == []
    print("blocked:", result["port8080"], "|", result["other"], "| lookup:", result["lookup"])


def test_cluster_node_and_metadata_are_blocked(op_namespace: str, network: Network) -> None:
    """Case 9: the API server (ClusterIP and the node's 6443), the kubelet, and the metadata address are
    unreachable, also for a sandbox that has an allowed domain (so its policy is not empty)."""
    targets = {
        "apiServerClusterIP": (network.api_service_ip, network.api_service_port),
        "apiServerOnNode": (network.node_ip, 6443),
        "kubeletOnNode": (network.node_ip, 10250),
        "metadata": (METADATA_ADDRESS, 80),
    }
    other_mark = network.other.mark()
    code = ATTEMPT + "return {name: attempt(host, port) for name, (host, port) in input.items()}\n"
    execution = run(
        op_namespace,
        _name("cluster"),
        "python",
        code,
        input=targets,
        network={"allowedDomains": [f"{network.allowed.name}:{HTTP_PORT}"]},
    )
    result = _succeeded(execution)
    print("outcomes:", result)
    for name in targets:
        assert result[name]["outcome"] != "connected", (name, result[name])
    assert network.other.events(other_mark) == []  # the fake metadata server saw nothing


DNS_QUERY = textwrap.dedent(
    """
    import socket, struct
    def dns_query(name):
        question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\\0"
        return struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)
    """
)


def test_no_dns_query_leaves_the_sandbox(op_namespace: str, network: Network) -> None:
    """Case 10: resolving an arbitrary name fails, and DNS queries sent by hand to a DNS server (the test
    hosts' UDP 53, one of them an allowed host) never arrive."""
    secret = f"exfil-{uuid.uuid4().hex[:10]}"
    code = DNS_QUERY + textwrap.dedent(
        """
        result = {}
        try:
            socket.getaddrinfo(f"{input['secret']}.example.com", 443)
            result["lookup"] = "resolved"
        except socket.gaierror as error:
            result["lookup"] = f"gaierror: {error}"
        result["resolvConf"] = open("/etc/resolv.conf").read()
        for server in input["servers"]:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.settimeout(1)
            try:
                udp.sendto(dns_query(f"{input['secret']}.example.com"), (server, 53))
                udp.recvfrom(512)
                result[server] = "answered"
            except OSError as error:
                result[server] = f"{type(error).__name__}: {error}"
        tcp = socket.socket()
        tcp.settimeout(2)
        result["tcp53"] = "connected" if tcp.connect_ex((input["servers"][0], 53)) == 0 else "failed"
        return result
        """
    )
    servers = [network.allowed.address, network.other.address]
    marks = {host.label: host.mark() for host in (network.allowed, network.other)}
    execution = run(
        op_namespace,
        _name("dns"),
        "python",
        code,
        input={"secret": secret, "servers": servers},
        network={"allowedDomains": [network.allowed.name]},
    )
    result = _succeeded(execution)
    print("in the sandbox:", result)
    assert result["lookup"].startswith("gaierror"), result["lookup"]
    assert "nameserver 127.0.0.1" in result["resolvConf"]
    assert result["tcp53"] == "failed"
    for server in servers:
        assert result[server] != "answered"
    for host in (network.allowed, network.other):
        # Nothing from the sandbox reached the host's servers, over UDP or TCP...
        assert host.events(marks[host.label]) == [], host.events(marks[host.label])
        # ...whose recorder works: a packet from this machine arrives.
        control = f"control-{uuid.uuid4().hex[:6]}"
        send = f"import socket; socket.socket(2, 2).sendto(b'{control}', ('{host.address}', 53))"
        subprocess.run([sys.executable, "-c", send], check=True, capture_output=True)
        wait_until(functools.partial(_received, host, control), 10, f"{control} at {host.label}")
        assert not _received(host, secret)


def _received(host: NetHost, text: str) -> bool:
    return any(text.encode().hex() in event.get("data", "") for event in host.events())


def _pod_ip(namespace: str, execution_name: str) -> str | None:
    execution = get_execution(namespace, execution_name)
    pod_name = _status(execution).get("podName")
    if not pod_name or _status(execution).get("phase") != "Running":
        return None
    pod = kubectl_json("get", "pod", pod_name, "-n", namespace)
    log = kubectl("logs", pod_name, "-n", namespace, check=False)
    ip: str | None = pod["status"].get("podIP")
    return ip if ip and "LISTENING" in log else None


def test_nothing_connects_into_a_sandbox(op_namespace: str, network: Network) -> None:
    """Case 11 (and 9, other sandboxes): a sandbox listening on a port accepts nothing from a test host or
    from another sandbox; it does accept its own connection, so it was listening."""
    listen_seconds = 45
    listener_code = textwrap.dedent(
        """
        import socket, time
        server = socket.create_server(("0.0.0.0", 8080))
        server.settimeout(0.5)
        own = socket.gethostbyname(socket.gethostname())
        socket.create_connection((own, 8080), timeout=3).close()
        print("LISTENING", own, flush=True)
        accepted = []
        deadline = time.monotonic() + input["seconds"]
        while time.monotonic() < deadline:
            try:
                conn, peer = server.accept()
            except socket.timeout:
                continue
            accepted.append(peer[0])
            print("ACCEPTED", peer[0], flush=True)
            conn.close()
        return {"own": own, "accepted": accepted}
        """
    )
    listener = _name("listener")
    apply(
        op_namespace,
        execution_manifest(listener, "python", listener_code, input={"seconds": listen_seconds}, timeoutSeconds=90),
    )
    pod_ip = wait_until(lambda: _pod_ip(op_namespace, listener), 90, "the listening sandbox")
    started = time.monotonic()

    from_host = network.other.exec(
        sys.executable, "-c", f"import socket; socket.create_connection(('{pod_ip}', 8080), timeout=3)"
    )
    assert from_host.returncode != 0, "a test host connected into the sandbox"
    assert "refused" in from_host.stderr.lower() or "timed out" in from_host.stderr.lower(), from_host.stderr

    caller = run(op_namespace, _name("caller"), "python", ATTEMPT + "return attempt(input, 8080)\n", input=pod_ip)
    assert _succeeded(caller)["outcome"] != "connected", _succeeded(caller)
    assert time.monotonic() - started < listen_seconds, "the checks outlasted the listener: make it listen longer"

    result = _succeeded(wait_finished(op_namespace, listener))
    assert result["own"] == pod_ip
    assert result["accepted"] == [pod_ip]  # only its own connection
    print("from a test host:", from_host.stderr.strip().splitlines()[-1], "| from a sandbox:", _succeeded(caller))


REJECTIONS = {
    # label → (reason, words in the message)
    "metadata": ("DomainNotAllowed", f"resolves to {METADATA_ADDRESS}, a link-local address"),
    "node": ("DomainNotAllowed", "an address of node"),
    "apiservice": ("DomainNotAllowed", "an address in the cluster range 10.0.0.0/24"),
    "loopback": ("DomainNotAllowed", "resolves to 127.0.0.1, a loopback address"),
    "podrange": ("DomainNotAllowed", "an address in the cluster range 10.244.0.0/16"),
    "private": ("DomainNotAllowed", "a private address outside the operator's allowed private ranges"),
    "rebind": ("DomainNotAllowed", f"resolves to {METADATA_ADDRESS}, a link-local address"),
    "unresolvable": ("DomainUnresolvable", "does not resolve"),
}


def test_forbidden_and_unresolvable_domains_are_rejected(op_namespace: str, network: Network) -> None:
    """A domain resolving to a forbidden address (even one of several), or not at all: phase Rejected,
    a stable reason, a message naming the domain, and nothing created."""
    names = {**network.names, "unresolvable": f"nothing-{uuid.uuid4().hex[:6]}.invalid"}
    manifests = {
        label: execution_manifest(
            f"reject-{label}",
            "python",
            "print('must not run')",
            network={"allowedDomains": [network.allowed.name, f"{names[label]}:8443"]},
        )
        for label in REJECTIONS
    }
    for manifest in manifests.values():
        apply(op_namespace, manifest)
    finished = wait_all_finished(op_namespace, [m["metadata"]["name"] for m in manifests.values()])
    for label, (reason, words) in REJECTIONS.items():
        status = _status(finished[f"reject-{label}"])
        assert (status["phase"], status["reason"]) == ("Rejected", reason), (label, status)
        assert status["message"].startswith(f'spec.network.allowedDomains[1] "{names[label]}:8443": '), status
        assert words in status["message"], (label, status["message"])
        assert "podName" not in status and "resolvedAddresses" not in status
        assert sandbox_objects(op_namespace, uid(finished[f"reject-{label}"])) == []
        print(f"{label}: {status['message']}")


def test_code_never_runs_without_an_enforced_policy(op_namespace: str, network: Network) -> None:
    """Fail closed: a namespace policy that opens all egress (policies add up) defeats the sandbox's
    own; the runner's isolation probe reaches the API server, so the code never runs."""
    allow_all = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "allow-all-egress", "namespace": op_namespace},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]},
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(allow_all))
    other_mark = network.other.mark()
    code = ATTEMPT + "print('RAN')\nreturn attempt(input, 8080)\n"
    started = time.monotonic()
    execution = run(op_namespace, _name("unfenced"), "python", code, input=network.other.address)
    elapsed = time.monotonic() - started
    status = _status(execution)
    assert (status["phase"], status["reason"]) == ("Failed", "NetworkNotIsolated"), status
    assert (
        f"the isolation probe {network.api_service_ip}:{network.api_service_port} was still reachable"
        in (status["message"])
    )
    assert "exitCode" not in status and "stdout" not in status
    assert network.other.events(other_mark) == []  # the code did not run, so it did not connect
    print(f"NetworkNotIsolated after {elapsed:.1f} s: {status['message']}")
