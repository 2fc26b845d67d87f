"""A tenant's catastrophic relabel regex on a tenant's own Service labels
(model/relabel_regex.py): run in a child process, so that a regression
fails at a timeout instead of hanging the suite (hence tests/local)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

META = "__meta_kubernetes_"


def test_a_catastrophic_backtracking_rule_on_a_tenants_label_completes() -> None:
    """`(x+x+)+y` against 36 x's: about 40 minutes with Python's
    backtracking `re`, holding the GIL (so no thread or signal could cut
    it short); linear in RE2. Run in a child process, so that the old
    behaviour fails this test at the timeout instead of hanging the suite."""
    program = textwrap.dedent(
        f"""
        import time
        from coverage_exporter.model.intent import job_selects
        from coverage_exporter.model.objects import RelabelRule, ScrapeJob, Service
        job = ScrapeJob("tenant", "endpoints", None,
            (RelabelRule("keep", ("{META}service_label_x",), regex="(x+x+)+y"),))
        started = time.monotonic()
        meant = job_selects(job, Service("team-a", "web", {{"a": "b"}}, {{"x": "x" * 36}}))
        print(meant, time.monotonic() - started)
        """
    )
    started = time.monotonic()
    # A hang guard, not a speed assertion: the backtracking took ~40 min.
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=True
    )
    meant, seconds = done.stdout.split()
    print(
        f"(x+x+)+y on 36 x's: {float(seconds) * 1e3:.3f} ms in the rule, "
        f"{time.monotonic() - started:.2f} s with the child's start"
    )
    assert meant == "False"  # no 'y': the keep rule drops the Service
