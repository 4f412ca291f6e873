"""Command line: `run` starts the operator, `broker` the bindings broker, `crds` writes the CRDs, `generate` rewrites
every generated file."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_CRD_DIR = Path("crds")
# The API server stores JSON nested up to 10,000 levels deep (its decoder's limit). With Python's default
# limit (1,000) Kopf's JSON parser fails on such an Execution (one `spec.input` of 2,000 nested lists, found
# by tests/e2e/test_fuzz.py) and the failed watch stops the whole operator, again at every restart.
# Parsing, copying and comparing take up to two frames a level; the C stack of 8 MiB holds that easily.
RECURSION_LIMIT = 50_000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m codeexec")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the operator")
    run.add_argument(
        "--liveness",
        metavar="URL",
        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    crds = commands.add_parser("crds", help="write the CRD YAML files generated from the models")
    crds.add_argument("--out", type=Path, default=DEFAULT_CRD_DIR, help="output directory")
    generate = commands.add_parser(
        "generate", help="rewrite the files generated from the models: CRDs, chart values and schema, README table"
    )
    generate.add_argument("--root", type=Path, default=Path("."), help="the repository (default: here)")
    commands.add_parser("broker", help="serve the bindings broker (as `codeexec broker`)")
    generate.add_argument("--check", action="store_true", help="write nothing; fail if a file is out of date")
    args = parser.parse_args(argv)

    if args.command == "crds":
        from codeexec import crdgen

        for path in crdgen.write(args.out):
            print(path)
    elif args.command == "generate":
        from codeexec import chartgen

        if args.check:
            stale = chartgen.stale(args.root)
            if stale:
                raise SystemExit(f"out of date (run `make generate`): {', '.join(map(str, stale))}")
        else:
            for path in chartgen.write(args.root):
                print(path)
    elif args.command == "broker":
        from codeexec.broker.server import serve

        serve()
    else:
        _run(args.liveness)


def _run(liveness: str | None) -> None:
    # Imported here: `crds` needs neither Kopf nor a cluster.
    import kopf

    import codeexec.handlers  # registers the handlers with Kopf
    from codeexec import admission, metrics
    from codeexec.bindings import BindingKeeper
    from codeexec.config import OperatorConfig
    from codeexec.dispatch import Dispatcher
    from codeexec.k8s import Cluster
    from codeexec.warmpools import PoolKeeper

    sys.setrecursionlimit(RECURSION_LIMIT)
    config = OperatorConfig.from_env()
    cluster = Cluster.connect()
    # kopf.run, unlike the `kopf run` CLI, sets up no logging: without this only warnings reach stderr.
    kopf.configure(debug=config.log_level == "debug", quiet=config.log_level == "warning", log_prefix=True)
    if config.log_level != "debug":
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # a line per probe and webhook call
    settings = kopf.OperatorSettings()
    if config.webhook_port:
        # settings.admission.managed stays unset: the chart owns the ValidatingWebhookConfiguration.
        codeexec.handlers.register_webhook(kopf.get_default_registry())
        settings.admission.server = admission.webhook_server(config)
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    dispatcher = Dispatcher(cluster, config)
    # Peering or standalone: handlers.configure_peering decides from the config (kopf.run would override it).
    kopf.run(
        clusterwide=not config.namespaces,
        namespaces=config.namespaces,
        liveness_endpoint=liveness,
        settings=settings,
        memo=kopf.Memo(
            config=config,
            cluster=cluster,
            dispatcher=dispatcher,
            pools=PoolKeeper(cluster.pools, cluster.facts, config, dispatcher.backlog),
            bindings=BindingKeeper(cluster.bindings),
        ),
    )


if __name__ == "__main__":
    main()
