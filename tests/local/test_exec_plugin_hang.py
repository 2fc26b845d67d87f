"""A kubeconfig exec plugin that hangs when it refreshes an expired token,
after a good start (issue #21 item 11): the refresh times out, counts as a
failure (the source down, one clear log line), API calls fail at once
instead of waiting on the auth lock, and the source comes back by itself
once the plugin answers again.

The plugin is a real script run by the official client's ExecProvider;
the apiserver is the shared fake (fakes/apiserver.py) on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import yaml

from coverage_exporter import logs
from coverage_exporter.sources.errors import SourceError
from coverage_exporter.sources.kubernetes import kubeconfig
from coverage_exporter.sources.kubernetes.source import KubernetesSource
from fakes.apiserver import FakeApiServer, node
from tests.local.test_reflector import until

REFRESH_TIMEOUT = 3.0
"""EXEC_TIMEOUT_SECONDS under test (30 s in the exporter): above what a
plugin run takes on a loaded machine, well under the hang."""
HANG_SECONDS = 15
PLUGIN = """\
#!/bin/sh
# An exec credential plugin whose token is always expired, so that every
# request refreshes it; while {hang} exists, a run sleeps that many seconds.
if [ -e '{hang}' ]; then sleep "$(cat '{hang}')"; fi
printf '%s' '{{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential",\
"status":{{"token":"tok","expirationTimestamp":"2000-01-01T00:00:00Z"}}}}'
"""


def write_kubeconfig(tmp_path: Path, server: str, hang: Path) -> Path:
    plugin = tmp_path / "plugin.sh"
    plugin.write_text(PLUGIN.format(hang=hang))
    plugin.chmod(0o755)
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": str(plugin),
            "interactiveMode": "Never",
        }
    }
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "main", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "main",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_an_exec_plugin_that_hangs_on_refresh_times_out_and_counts_as_a_failure(
    server: FakeApiServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: the refresh held the auth lock for as long as the plugin
    hung, and every API call waited on it."""
    monkeypatch.setattr(kubeconfig, "EXEC_TIMEOUT_SECONDS", REFRESH_TIMEOUT)
    server.put("nodes", node("a"))
    hang = tmp_path / "hang"
    source = KubernetesSource(kubeconfig=str(write_kubeconfig(tmp_path, server.url, hang)))
    await source.start()
    try:
        assert await source.wait_synced(30)
        source.snapshot()
        assert source.health.up
        assert source.api is not None
        auth = source.api._auth
        # The plugin hangs from now on; the watches reconnect, and each new
        # request refreshes the expired token.
        hang.write_text(str(HANG_SECONDS))
        with caplog.at_level(logging.WARNING):
            server.drop_watches()
            # Named by its command, as the kubeconfig gives it.
            hung = f"exec plugin {tmp_path / 'plugin.sh'} hangs?"
            await until(lambda: hung in source.health.last_error, 30)
            source.snapshot()
            assert not source.health.up
            # The lock is not held: a call fails at once, naming the hung plugin.
            with pytest.raises(SourceError, match="has not ended") as failed:
                await asyncio.wait_for(auth.authorization(), REFRESH_TIMEOUT)
            assert hung in str(failed.value)
        lines = [logs.LogfmtFormatter().format(r) for r in caplog.records]
        assert any("credential refresh did not end in time" in line for line in lines), lines
        assert any("refreshing the credentials did not finish within 3s" in x for x in lines)
        # The plugin answers again: once the hung run ends, the next request
        # refreshes the token and the source is back, without a restart.
        hang.unlink()
        await until(lambda: (source.snapshot(), source.health.up)[1], HANG_SECONDS + 30)
        assert await asyncio.wait_for(auth.authorization(), REFRESH_TIMEOUT) == "Bearer tok"
    finally:
        hang.unlink(missing_ok=True)
        await source.stop()
