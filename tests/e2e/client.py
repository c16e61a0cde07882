"""A small synchronous API client for end-to-end tests."""

import secrets
import time
from typing import Any

import httpx

from tests.openapi_check import assert_conforms, check_for


class ApiClient:
    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10)
        # Every answer is checked against the served OpenAPI document, as in the in-process tiers.
        check = check_for(self.http.get("/openapi.json").json())

        def conforms(response: httpx.Response) -> None:
            response.read()
            assert_conforms(check, response)

        self.http.event_hooks["response"] = [conforms]
        email = f"e2e-{secrets.token_hex(5)}@example.com"
        response = self.http.post("/auth/register", json={"email": email, "password": "password1"})
        assert response.status_code == 201, response.text
        self.http.headers["Authorization"] = f"Bearer {response.json()['token']}"

    def close(self) -> None:
        self.http.close()

    def submit(self, **body: Any) -> dict[str, Any]:
        response = self.http.post("/jobs", json=body)
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job

    def get(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    def wait(self, job_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = self.get(job_id)
        while job["status"] not in statuses:
            if time.monotonic() > deadline:
                raise AssertionError(f"job still {job['status']} after {timeout} s: {job}")
            time.sleep(0.1)
            job = self.get(job_id)
        return job
