"""Relabel regexes as Prometheus evaluates them (RE2, anchored as
`^(?s:...)$`, Go's `$1`/`${name}` expansion): a tenant's ServiceMonitor
regex on a tenant's own Service labels must never stall the collector,
and must mean what it means in Prometheus."""

from __future__ import annotations

import pytest

from coverage_exporter.model.intent import job_selects
from coverage_exporter.model.objects import RelabelRule, ScrapeJob, Service
from coverage_exporter.model.relabel_regex import compile_relabel_regex

META = "__meta_kubernetes_"


def keep(label: str, regex: str) -> RelabelRule:
    return RelabelRule("keep", (label,), regex=regex)


def service(**labels: str) -> Service:
    return Service("team-a", "web", {"a": "b"}, labels)


def test_dollar_is_the_end_of_the_value_not_before_a_trailing_newline() -> None:
    """Go's `$` without (?m) is the end of the text; Python's `re` also
    matched before a final newline, and kept what Prometheus drops."""
    job = ScrapeJob("j", "endpoints", None, (keep(META + "service_label_app", "web"),))
    assert job_selects(job, service(app="web"))
    assert not job_selects(job, service(app="web\n"))


def test_dot_matches_a_newline_in_a_value() -> None:
    job = ScrapeJob(
        "j", "endpoints", None, (keep(META + "service_annotation_team", "owner:.*:end"),)
    )
    assert job_selects(job, Service("ns", "s", {"a": "b"}, annotations={"team": "owner:a\nb:end"}))


@pytest.mark.parametrize("regex", ["(?=x)x", "(a)\\1", "(?<!a)b", "a{1001}", "\\C", "("])
def test_a_regex_re2_refuses_makes_the_rule_unknown_not_a_drop(regex: str) -> None:
    assert compile_relabel_regex(regex) is None
    job = ScrapeJob("j", "endpoints", None, (keep(META + "service_label_app", regex),))
    assert job_selects(job, service(app="anything"))


def test_named_groups_in_either_spelling_and_go_expansion() -> None:
    rule = RelabelRule(
        "replace",
        (META + "service_label_app",),
        regex="(?P<team>[a-z]+)-(?<tier>[a-z]+)",
        target_label="__tmp_team",
        replacement="$team/${tier}/$1x/$$/$/${2}",
    )
    job = ScrapeJob("j", "endpoints", None, (rule, keep("__tmp_team", "shop/db//\\$/\\$/db")))
    assert job_selects(job, service(app="shop-db"))
    assert not job_selects(job, service(app="shop-web"))


# What Go's regexp (1.26) answers when Prometheus compiles `^(?s:` + regex
# + `)$`, recorded with a Go program: RE2 here must accept and refuse the
# same (RE2 in C++ alone takes \C; it is refused on purpose).
GO_COMPILES = {
    "(?P<n>a)(?P<n>b)": True,
    "\\C": False,
    "a{1001}": False,
    "(?<n>a)": True,
    "\\pN": True,
    "[[:alpha:]]": True,
    "\\Q.\\C\\E": True,
    "(?U)a+": True,
    "\\z": True,
    "\\Z": False,
    "\\x{10FFFF}": True,
    "[a-\\d]": False,
    "x{2}{3}": False,
    "(a{1000}){1000}": False,
    "\\8": False,
    "(?m)^a$": True,
}


@pytest.mark.parametrize(("regex", "compiles"), GO_COMPILES.items())
def test_compiles_where_go_compiles(regex: str, compiles: bool) -> None:
    assert (compile_relabel_regex(regex) is not None) is compiles


def test_case_folding_is_unicode_as_in_go() -> None:
    compiled = compile_relabel_regex("(?i)k")
    assert compiled is not None and compiled.matches("\u212a")  # KELVIN SIGN


def test_labelmap_and_port_rules_use_the_same_semantics() -> None:
    job = ScrapeJob(
        "j",
        "endpoints",
        None,
        (
            RelabelRule("labelmap", regex=META + "service_label_(.+)", replacement="__tmp_l_${1}"),
            keep("__tmp_l_tier", "db"),
            keep(META + "endpoint_port_name", "metrics"),
        ),
    )
    assert job_selects(job, Service("ns", "s", {"a": "b"}, {"tier": "db"}, port_names=("x",)))
    assert not job_selects(job, Service("ns", "s", {"a": "b"}, {"tier": "web"}))


# Prometheus's own cases, read from prometheus/prometheus
# model/relabel/relabel_test.go (TestRelabel and BenchmarkRelabel's
# configurations, at d15adb9ad7): (regex, value, matches, template,
# expansion). Each relabel rule there comes down to one of these.
PROMETHEUS_CASES = [
    ("f(.*)", "foo", True, "ch${1}-ch${1}", "choo-choo"),
    ("f(.*);(.*)r", "foo;bar", True, "b${1}${2}m", "boobam"),
    ("(b).*b(.*)ba(.*)", "baz;boobam", True, "$1$2$2$3", "boooom"),
    (".*o.*", "foo", True, "", ""),
    (".*(b).*", "abc", True, "$1", "b"),
    ("no-match", "foo", False, "", None),
    ("f|o", "foo", False, "", None),
    ("f.*", "foo", True, "", ""),
    ("f", "boo", False, "bar", None),
    ("(f).*", "foo", True, "$2", ""),
    ("(f).*", "foo", True, "$1", "f"),
    ("(b.*)", "b1", True, "bar_${1}", "bar_b1"),
    ("(b.*)", "a", False, "bar_${1}", None),
    ("__meta_(my.*)", "__meta_my_bar", True, "${1}", "my_bar"),
    ("__meta_(my.*)", "__meta_other", False, "${1}", None),
    ("some-([^-]+)-([^,]+)", "some-name-value", True, "${2}", "value"),
    ("some-([^-]+)-([^,]+)", "some-name-value", True, "${1}", "name"),
    ("some-([^-]+)-([^,]+)", "some-name-value", True, "${3}", ""),
    ("some-([^-]+)(-[^,]+)", "some-name-0", True, "${3}", ""),
    (
        "(?:.+,|^)path:(/[^,]+).*",
        "path:/secret,job:some-job,label:foo=bar",
        True,
        "${1}",
        "/secret",
    ),
    ("(?:.+,|^)job:([^,]+).*", "path:/secret,job:some-job,label:foo=bar", True, "${1}", "some-job"),
    (
        "(?:.+,|^)label:([^=]+)=([^,]+).*",
        "path:/secret,job:some-job,label:foo=bar",
        True,
        "${1}=${2}",
        "foo=bar",
    ),
    (
        "^__meta_kubernetes_pod_container_port_name$",
        "__meta_kubernetes_pod_container_port_name",
        True,
        "",
        "",
    ),
    ("(.+)", "9091", True, "metrics", "metrics"),
    ("^metrics$", "metrics", True, "", ""),
    ("line1.*line2", "line1\nline2", True, "match${1}", "match"),
    (
        "(line1).*(?<second>line2)",
        "line1\nline2",
        True,
        "label1_${1}=val_${second}",
        "label1_line1=val_line2",
    ),
    (
        "(line1).*(?<second>line2)",
        "line1\nline2",
        True,
        "label2_$1=val_$second",
        "label2_line1=val_line2",
    ),
    (".*_total$", "http_requests_total", True, "counter", "counter"),
    (".*_bytes$", "disk_usage_bytes", True, "bytes", "bytes"),
    ("(.*)some-[regex]", "foo;example-some-x.com", False, "foo-${1}", None),
    (".*-metrics", "http-metrics", True, "", ""),
    ("", "promtail-loki-boltdb-shipper", False, "", None),
    ("", "", True, "", ""),
    ("Succeeded|Failed", "Running", False, "", None),
    ("(https?)", "http", True, "$1", "http"),
    ("(.+?)(\\:\\d+)?;(\\d+)", "10.132.183.40:80;9091", True, "$1:$3", "10.132.183.40:9091"),
    (
        "__meta_kubernetes_pod_annotation_prometheus_io_param_(.+)",
        "__meta_kubernetes_pod_annotation_prometheus_io_param_a",
        True,
        "__param_$1",
        "__param_a",
    ),
    ("^0$", "0", True, "", ""),
    ("(.*)", "", True, "$1", ""),
]


@pytest.mark.parametrize(("regex", "value", "matches", "template", "expanded"), PROMETHEUS_CASES)
def test_prometheus_relabel_cases(
    regex: str, value: str, matches: bool, template: str, expanded: str | None
) -> None:
    compiled = compile_relabel_regex(regex)
    assert compiled is not None
    assert compiled.matches(value) is matches
    assert compiled.expand(template, value) == expanded


@pytest.mark.parametrize(
    ("template", "expanded"),
    [
        ("$1x", ""),  # Go takes the longest name: ${1x}
        ("${1}x", "ax"),
        ("$01", ""),  # a leading zero makes it a name
        ("$0", "ab"),
        ("${", "${"),
        ("$-", "$-"),
        ("a$", "a$"),
        ("$$1", "$1"),
        ("${2", "${2"),
        ("$1234567890", ""),
        ("$é", ""),  # letters of any script form a name
    ],
)
def test_go_expansion_edges(template: str, expanded: str) -> None:
    compiled = compile_relabel_regex("(a)(b)")
    assert compiled is not None
    assert compiled.expand(template, "ab") == expanded


def test_values_beyond_ascii_match_and_expand_by_character() -> None:
    compiled = compile_relabel_regex("(.)é(.+)")
    assert compiled is not None
    assert compiled.expand("$2$1", "çéü☃") == "ü☃ç"
