"""`helm test`: creates a hello-world Execution and checks it reaches Succeeded with the expected result.

Runs in the operator image (python and the kubernetes client) as the test ServiceAccount, which may
only create, get and delete Executions in the test namespace. Settings come from the environment."""

import json
import os
import sys
import time

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "codeexec.io", "v1alpha1", "executions"
FINAL_PHASES = {"Succeeded", "Failed", "TimedOut", "Rejected"}
CODE = {
    "python": (
        "print(f\"hello, {input['name']}\")\n"
        'return {"greeting": f"hello, {input[\'name\']}", "sum": sum(input["numbers"])}\n'
    ),
    "javascript": (
        "console.log(`hello, ${input.name}`);\n"
        "return { greeting: `hello, ${input.name}`, sum: input.numbers.reduce((a, b) => a + b, 0) };\n"
    ),
    "typescript": (
        "const data = input as { name: string; numbers: number[] };\n"
        "console.log(`hello, ${data.name}`);\n"
        "return { greeting: `hello, ${data.name}`, sum: data.numbers.reduce((a: number, b: number) => a + b, 0) };\n"
    ),
}
EXPECTED_RESULT = {"greeting": "hello, helm", "sum": 6}


def main() -> int:
    namespace = os.environ["TEST_NAMESPACE"]
    language = os.environ["TEST_LANGUAGE"]
    deadline = time.monotonic() + float(os.environ["TEST_TIMEOUT_SECONDS"])
    config.load_incluster_config()
    api = client.CustomObjectsApi()
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Execution",
        "metadata": {
            "generateName": f"{os.environ['RELEASE']}-test-",
            "labels": {"app.kubernetes.io/component": "helm-test"},
        },
        "spec": {
            "language": language,
            "code": CODE[language],
            "input": {"name": "helm", "numbers": [1, 2, 3]},
            "timeoutSeconds": 30,
            # The operator removes it even if this pod dies before its own cleanup.
            "ttlSecondsAfterFinished": 300,
        },
    }
    # Retried while the API server cannot reach the webhook yet (e.g. right after an install).
    while True:
        try:
            created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
            break
        except ApiException as error:
            if error.status < 500 or time.monotonic() > deadline:
                print(f"FAIL: cannot create the Execution: {error.status} {error.body}")
                return 1
            print(f"creating the Execution failed ({error.status}); retrying")
            time.sleep(2)
    name = created["metadata"]["name"]
    print(f"created Execution {namespace}/{name} ({language})")
    try:
        status: dict = {}
        while status.get("phase") not in FINAL_PHASES and time.monotonic() < deadline:
            time.sleep(1)
            status = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status", {})
        print(
            json.dumps(
                {
                    key: status.get(key)
                    for key in ("phase", "reason", "message", "exitCode", "result", "stdout", "durationMs")
                },
                indent=2,
            )
        )
        if status.get("phase") != "Succeeded":
            print(f"FAIL: phase {status.get('phase')!r} (expected Succeeded)")
            return 1
        if status.get("result") != EXPECTED_RESULT or "hello, helm" not in (status.get("stdout") or ""):
            print(f"FAIL: result {status.get('result')!r}, expected {EXPECTED_RESULT!r} and 'hello, helm' on stdout")
            return 1
        print("PASS: the Execution succeeded with the expected result")
        return 0
    finally:
        try:
            api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as error:
            print(f"could not delete the Execution: {error.status}")


if __name__ == "__main__":
    sys.exit(main())
