# Slim, non-root image running `coverage-exporter serve`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY coverage_exporter ./coverage_exporter
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
# A fixed numeric UID so that runAsNonRoot can verify it.
RUN useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin exporter
USER 65532:65532
EXPOSE 9842
ENTRYPOINT ["coverage-exporter"]
CMD ["serve"]
