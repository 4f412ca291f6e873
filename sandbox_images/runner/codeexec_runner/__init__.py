"""The sandbox runner: PID 1 of every sandbox container; runs the program, enforces the timeout, reports the outcome.

The contract it implements is sandbox_images/README.md; `contract` holds the part the operator
shares. Python standard library only, so the same package runs in every image (Debian bookworm's
python3.11), where it is one file: a zipapp at contract.RUNNER_PATH.
"""
