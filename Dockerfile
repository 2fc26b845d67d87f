# Slim, non-root image running `coverage-exporter serve`.
#   docker build --build-arg REVISION="$(git rev-parse HEAD)" -t coverage-exporter .
# The build stage's install steps are run by tests/local/test_image.py (no
# Docker engine in CI): the same RUN lines, into a clean venv, then `serve`
# as UID 65532 on a read-only tree with only /tmp writable.

# Pinned by version; both stages use the same base, so the venv's
# interpreter path is valid in the runtime stage. Not pinned by digest: the
# project's build machine has no access to a container registry, so the
# real digest of this tag could not be read, and a digest not read from the
# registry would be an invented one. Where a registry is reachable, pin it:
#   docker buildx imagetools inspect python:3.11.11-slim-bookworm
# then ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<that digest>.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The dependencies from the lock file only, each checked against its hash
# (`make lock` writes it from pyproject.toml with pip-tools), then the
# package alone, built with the locked setuptools (no build isolation,
# which would fetch an unpinned one): nothing is resolved at build time.
COPY requirements/image.txt ./requirements/image.txt
COPY pyproject.toml README.md LICENSE ./
COPY coverage_exporter ./coverage_exporter
ARG REVISION=unknown
RUN python -m venv /opt/coverage-exporter \
    && printf '%s\n' "${REVISION}" > coverage_exporter/REVISION \
    && /opt/coverage-exporter/bin/pip install --no-cache-dir --require-hashes --no-deps -r requirements/image.txt \
    && /opt/coverage-exporter/bin/pip install --no-cache-dir --no-deps --no-build-isolation /src

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="coverage-exporter" \
      org.opencontainers.image.description="Finds the nodes Prometheus does not scrape in large Kubernetes clusters" \
      org.opencontainers.image.source="https://github.com/coverage-exporter/coverage-exporter" \
      org.opencontainers.image.url="https://github.com/coverage-exporter/coverage-exporter" \
      org.opencontainers.image.documentation="https://github.com/coverage-exporter/coverage-exporter/blob/main/README.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="docker.io/library/${PYTHON_IMAGE}"
COPY --from=build /opt/coverage-exporter /opt/coverage-exporter
# A fixed numeric UID so that runAsNonRoot can verify it (the chart's runAsUser).
# No shell at run time: the entrypoint is exec form, and this last shell
# step removes the shells, so a compromised process finds no /bin/sh.
RUN useradd --uid 65532 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin exporter \
    && rm -f /bin/sh /bin/bash /bin/dash /bin/rbash /usr/bin/sh /usr/bin/bash /usr/bin/dash /usr/bin/rbash
ENV PATH=/opt/coverage-exporter/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 9842
ENTRYPOINT ["/opt/coverage-exporter/bin/coverage-exporter"]
CMD ["serve"]
