"""The gateway's documentation pages, served from assets shipped with the package (no CDN: clusters are often
air-gapped): Swagger UI over /openapi.json at /docs, and the in-code runtime API per language at /docs/runtime."""

from __future__ import annotations

import html
from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs/assets"
# Swagger UI 5 (OpenAPI 3.1, which FastAPI writes), as the fastapi-offline package ships it: its files only.
SWAGGER_UI_FILES = files("fastapi_offline") / "static"

# What code sees inside a sandbox, per language (the runner contract: sandbox_images/README.md).
RUNTIME_API: dict[str, list[tuple[str, str]]] = {
    "Python": [
        ("input", "The request's `input` (any JSON value), as a global."),
        ("console.log/info/warn/error/debug(*args)", "Print, and record a structured entry in the status's `logs`."),
        ("return VALUE", "At top level: ends the code; VALUE (JSON-serializable) is the Execution's `result`."),
        ("await", "Works at top level."),
        ("api.get(url), api.post(url, body)", "HTTP to the domains the request allows (`allowedDomains`)."),
        ("sys.argv[1:], sys.stdin, os.environ", "The request's `args`, `stdin` and `env`."),
    ],
    "JavaScript": [
        ("input", "The request's `input`."),
        ("console.log/info/warn/error/debug(...args)", "Print, and record a structured entry in `logs`."),
        ("return value", "The code is the body of an async function: `return` sets the `result`."),
        ("await", "Works at top level."),
        ("api.get(url), api.post(url, body)", "HTTP to the allowed domains."),
        ("require, process.argv, process.env", "Node's modules; the request's `args` and `env`."),
    ],
    "TypeScript": [
        ("(as JavaScript)", "Transpiled with TypeScript's transpileModule first; type errors do not stop the code."),
    ],
}


def install(app: FastAPI) -> None:
    app.mount(ASSETS, StaticFiles(directory=str(SWAGGER_UI_FILES)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="code-exec API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            # Swagger UI would otherwise fetch a validity badge from validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/docs/runtime", include_in_schema=False)
    async def runtime_api() -> HTMLResponse:
        return HTMLResponse(runtime_page())


def runtime_page() -> str:
    sections = []
    for language, entries in RUNTIME_API.items():
        rows = "".join(
            f"<tr><td><code>{html.escape(name)}</code></td><td>{html.escape(text)}</td></tr>" for name, text in entries
        )
        sections.append(f"<h2>{language}</h2><table>{rows}</table>")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>code-exec: the runtime API</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td{padding:.3em 1em;vertical-align:top}"
        "</style></head><body><h1>What code sees in its sandbox</h1>"
        "<p>The HTTP API: <a href='/docs'>/docs</a>. Output goes to the Execution's stdout and stderr; the "
        "exit code is the program's.</p>" + "".join(sections) + "</body></html>"
    )
