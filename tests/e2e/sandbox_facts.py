"""What every sandbox must show from inside and in its pod spec, cold or warm: one program, one set of assertions."""

from __future__ import annotations

from typing import Any

EXPECTED_ENV = {
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "PYTHONUNBUFFERED",
    "CODEEXEC_CHANNEL_FD",
    "CODEEXEC_INPUT_FILE",
}
FACTS = """import errno, os, subprocess

def attempt(action):
    try:
        action()
    except OSError as error:
        return errno.errorcode[error.errno]
    return "ok"

def write(path):
    with open(path, "w") as f:
        f.write("x")

def read(path):
    with open(path, "rb") as f:
        f.read()

status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
facts = {
    "version": open("/proc/version").read(),
    "dmesg": subprocess.run(["dmesg"], capture_output=True, text=True).stdout,
    "token": os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token"),
    "secrets_dir": os.path.exists("/var/run/secrets"),
    "env": sorted(os.environ),
    "runner_env": attempt(lambda: read("/proc/1/environ")),
    "root_read_only": bool(os.statvfs("/").f_flag & os.ST_RDONLY),
    "write_var_tmp": attempt(lambda: write("/var/tmp/escape")),
    "write_tmp": attempt(lambda: write("/tmp/marker")),
    "ids": [os.getuid(), os.geteuid(), os.getgid()],
    "cap_eff": status["CapEff"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
}
return facts
"""


def assert_isolated(facts: dict[str, Any]) -> None:
    """The FACTS program's result: gVisor, no credentials, nothing of the cluster, read-only root, no privileges."""
    assert "gvisor" in facts["version"].lower()
    assert "Starting gVisor" in facts["dmesg"]
    assert facts["token"] is False and facts["secrets_dir"] is False
    assert set(facts["env"]) == EXPECTED_ENV  # nothing of the cluster: no KUBERNETES_*, no service links
    assert facts["runner_env"] == "EACCES"  # the runner's (kubelet-made) environment is out of reach
    assert facts["root_read_only"] is True
    assert facts["write_var_tmp"] == "EROFS"  # /var/tmp is world-writable in the image: only ro stops it
    assert facts["write_tmp"] == "ok"
    assert facts["ids"] == [65534, 65534, 65534]
    assert facts["cap_eff"] == "0000000000000000"
    assert facts["no_new_privs"] == "1"


def assert_sandbox_pod_spec(spec: dict[str, Any], *, timeout_seconds: int, warm: bool) -> None:
    """Every security field of a sandbox pod, field by field. A warm pod differs only in how the code
    arrives: stdin instead of a /code ConfigMap."""
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["restartPolicy"] == "Never"
    # The backstop behind the runner's own timeout: longer than the program may run, bounded (a warm
    # pod's counts from its start, so its idle time before the claim is added).
    assert spec["activeDeadlineSeconds"] > timeout_seconds
    if not warm:
        assert spec["activeDeadlineSeconds"] <= timeout_seconds + 120
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    assert not spec.get("shareProcessNamespace")
    assert spec["dnsPolicy"] == "None" and spec["dnsConfig"] == {"nameservers": ["127.0.0.1"]}
    assert not spec.get("hostAliases")
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 65534
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    # No projected service-account token, no hostPath; a warm pod has no /code at all.
    assert set(volumes) == ({"tmp"} if warm else {"code", "tmp"})
    assert volumes["tmp"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Mi"}
    [container] = spec["containers"]
    assert not spec.get("initContainers") and not spec.get("ephemeralContainers")
    assert container["image"] == "localhost/codeexec/python:0.1.0"
    assert container["command"] == ["/opt/codeexec/runner"]
    assert "env" not in container and "envFrom" not in container
    assert bool(container.get("stdin")) is warm and not container.get("tty")
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["privileged"] is False
    assert security["runAsNonRoot"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = container["resources"]
    assert resources["limits"] == resources["requests"]
    assert set(resources["limits"]) == {"cpu", "memory", "ephemeral-storage"}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    assert set(mounts) == ({"/tmp"} if warm else {"/code", "/tmp"})
    if not warm:
        assert mounts["/code"]["readOnly"] is True
