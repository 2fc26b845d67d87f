"""One fake of each real server, for what cannot run here: a kube-apiserver
of 100k nodes, a fleet of Prometheus servers at that scale, and answers no
healthy server gives. Shared by the tests (tests/local, tests/bench) and
the benchmark (bench/fake_api.py); everything else runs against the real
servers of the testbed.

- apiserver.py: the list/watch protocol of kube-apiserver;
- prometheus.py: one Prometheus server's HTTP API;
- pod_table.py: pods in the apiserver's Table form;
- selectors.py: label and field selectors, as the apiserver parses them;
- controllers.py: what the endpoints and mirroring controllers keep of
  a Service's addresses (the 1000-address rules);
- requests.py: the log of what the fakes were asked.
"""
