"""Plain-JSON Kubernetes access through the ``kubernetes`` client's ApiClient.

The typed API methods of kubernetes 37 build pydantic models that reject
objects the API server returns for simulated nodes and are slow at 1000s of
objects; here bodies and responses stay dicts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"


class Kube:
    def __init__(self, kubeconfig: Path | str, pool: int = 32) -> None:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = pool
        cfg.proxy = None
        self.api = client.ApiClient(cfg)
        self.pool = pool

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 60,
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        m, url, h, b, _ = self.api.param_serialize(
            method, path, query_params=list((query or {}).items()), header_params=headers,
            body=body, auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(m, url, header_params=h, body=b, _request_timeout=timeout)
        data = resp.read()
        if resp.status >= 400:
            raise ApiException(status=resp.status, reason=resp.reason, http_resp=resp)
        return json.loads(data) if data else {}

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return self.get(path)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list(self, path: str, **query: Any) -> list[dict[str, Any]]:
        """All items, paginated so a list never times out at scale."""
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            q = {"limit": 500, **query}
            if cont:
                q["continue"] = cont
            page = self.get(path, **q)
            items += page.get("items") or []
            cont = (page.get("metadata") or {}).get("continue") or ""
            if not cont:
                return items

    def create(self, path: str, body: dict[str, Any], *, exist_ok: bool = True) -> dict[str, Any]:
        try:
            return self.request("POST", path, body)
        except ApiException as e:
            if e.status == 409 and exist_ok:
                return {}
            raise

    def put_or_create(self, collection: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Unconditional replace (Endpoints allow it), or create when absent."""
        try:
            return self.request("PUT", f"{collection}/{name}", body)
        except ApiException as e:
            if e.status != 404:
                raise
        return self.request("POST", collection, body)

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, body, content_type=MERGE_PATCH)

    def delete(self, path: str, *, grace: int | None = None) -> None:
        query = {} if grace is None else {"gracePeriodSeconds": grace}
        try:
            self.request("DELETE", path, query=query)
        except ApiException as e:
            if e.status != 404:
                raise

    def parallel(self, fn: Callable[[T], Any], items: Iterable[T]) -> list[Any]:
        """Runs fn over items on a thread pool; re-raises the first error."""
        with ThreadPoolExecutor(max_workers=min(self.pool, 24)) as ex:
            return list(ex.map(fn, items))

    def close(self) -> None:
        self.api.close()
