"""What `audit` exits with: the one definition, read by app.exit_code, the
`audit --help` text and the README ("Exit codes"). 2 is what argparse, Go's
flag package and Prometheus exit with on a bad flag; "could not judge" has
a code of its own so that CI tells a wrong flag from a Prometheus that is
down."""

from __future__ import annotations

FULL_COVERAGE = 0
GAPS = 1
USAGE = 2
CANNOT_JUDGE = 3

HELP = f"""\
exit codes:
  {FULL_COVERAGE}  full coverage: every Service compared, every replica's scrape pools
     discover every expected target
  {GAPS}  gaps found: a replica's scrape pool misses expected targets, or a
     Kubernetes stage drops targets that a pool of its role reads
  {USAGE}  usage error: an unknown or malformed flag or environment variable,
     or a file named by a flag (kubeconfig, fleet file) that cannot be used
  {CANNOT_JUDGE}  could not judge: a source failed (the apiserver or a Prometheus
     down, refusing, too slow, or a URL answering from several servers), a
     replica's coverage is unknown, no Service was compared, or no
     Prometheus server was found or given
"""
