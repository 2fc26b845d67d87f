"""Local Kubernetes testbed: etcd, kube-apiserver, kube-controller-manager,
kwok, Prometheus 2/3 and Alertmanager on 127.0.0.1, plus the scenario that
makes the endpoints controller truncate a 1200-node Service.

Entry points: ``testbed/testbed up|env|down`` and ``testbed.cluster.Cluster``.
"""
