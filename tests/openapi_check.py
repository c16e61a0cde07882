"""Every answer of the API checked against its own OpenAPI document, as a client generated from
``/openapi.json`` would read it: the status is one the operation documents, the content type is
the one documented for that status, a JSON body validates against the documented schema, and a
documented header that is present has the documented form.

Paths and methods the document does not describe (an unknown path's 404, a 405) are left alone:
their only rule is the error body, which ``assert_error`` checks where a test expects them."""

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCUMENT_URI = "urn:cloudtask:openapi"


def _pointer(*parts: str) -> str:
    return "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


class OpenAPICheck:
    def __init__(self, document: dict[str, Any]) -> None:
        resource = Resource.from_contents(document, default_specification=DRAFT202012)
        self._registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
        # Literal paths before templated ones, so /jobs/batch is not read as /jobs/{job_id}.
        templates = sorted(document["paths"], key=lambda path: (path.count("{"), path))
        self._routes = [
            (re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", path) + "$"), path)
            for path in templates
        ]
        self._paths: dict[str, Any] = document["paths"]
        self._validators: dict[str, Draft202012Validator] = {}

    def problems(self, response: httpx.Response) -> list[str]:
        """What in ``response`` the document does not allow (empty when it conforms)."""
        request = response.request
        method = request.method.lower()
        path = next((p for pattern, p in self._routes if pattern.match(request.url.path)), None)
        if path is None or method not in self._paths[path]:
            return []
        where = f"{request.method} {request.url.path} -> {response.status_code}"
        documented = self._paths[path][method]["responses"]
        status = str(response.status_code)
        if status not in documented:
            return [f"{where}: status not documented (documented: {sorted(documented)})"]
        spec = documented[status]
        problems = self._header_problems(spec, response.headers)
        problems += self._body_problems(spec, response, (path, method, status))
        return [f"{where}: {problem}" for problem in problems]

    def request_problems(self, method: str, path: str, body: Any) -> list[str]:
        """What in a JSON request ``body`` for the documented ``path`` its schema refuses."""
        media = "application/json"
        pointer = _pointer("paths", path, method.lower(), "requestBody", "content", media, "schema")
        return [error.message for error in self._validator(pointer).iter_errors(body)]

    def _body_problems(
        self, spec: dict[str, Any], response: httpx.Response, operation: tuple[str, str, str]
    ) -> list[str]:
        content = spec.get("content", {})
        media = response.headers.get("content-type")
        if not content:
            return ["a body where none is documented"] if response.content else []
        if media not in content:
            return [f"content type {media!r} not in {sorted(content)}"]
        if "schema" not in content[media] or not media.startswith("application/json"):
            return []
        path, method, status = operation
        pointer = _pointer("paths", path, method, "responses", status, "content", media, "schema")
        try:
            body = json.loads(response.content)
        except ValueError:
            return [f"the body is not JSON: {response.content[:200]!r}"]
        return [
            f"body at /{'/'.join(str(part) for part in error.absolute_path)}: {error.message}"
            for error in self._validator(pointer).iter_errors(body)
        ]

    def _header_problems(self, spec: dict[str, Any], headers: httpx.Headers) -> list[str]:
        problems = []
        for name, header in spec.get("headers", {}).items():
            value = headers.get(name)
            if value is None:
                if header.get("required"):
                    problems.append(f"header {name} missing")
                continue
            schema = header.get("schema", {})
            if schema.get("type") == "integer" and not value.isdigit():
                problems.append(f"header {name}: {value!r} is not an integer")
            if "enum" in schema and value not in schema["enum"]:
                problems.append(f"header {name}: {value!r} not in {schema['enum']}")
        return problems

    def _validator(self, pointer: str) -> Draft202012Validator:
        validator = self._validators.get(pointer)
        if validator is None:
            schema = {"$ref": f"{DOCUMENT_URI}#/{pointer}"}
            validator = Draft202012Validator(
                schema,
                registry=self._registry,
                format_checker=Draft202012Validator.FORMAT_CHECKER,
            )
            self._validators[pointer] = validator
        return validator


_checks: dict[str, OpenAPICheck] = {}  # one per document (the tests' settings may differ)


def check_for(document: dict[str, Any]) -> OpenAPICheck:
    key = json.dumps(document, sort_keys=True)
    return _checks.get(key) or _checks.setdefault(key, OpenAPICheck(document))


def assert_conforms(check: OpenAPICheck, response: httpx.Response) -> None:
    problems = check.problems(response)
    assert not problems, "\n".join(problems)


def conformance_hook(document: dict[str, Any]) -> Callable[[httpx.Response], Awaitable[None]]:
    """An httpx response hook failing the test on any answer ``document`` does not allow."""
    check = check_for(document)

    async def conforms(response: httpx.Response) -> None:
        await response.aread()
        assert_conforms(check, response)

    return conforms
