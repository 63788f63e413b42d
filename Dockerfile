# katiba-cache: a small, non-root, read-only-friendly image.
# Build: docker build -t katiba-cache .   Run: docker run -e UPSTREAM_URL=http://backend:8000 -p 8080:8080 katiba-cache

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md rules.yaml ./
COPY proxy ./proxy
COPY standin ./standin
RUN rm -f proxy/rules.yaml && cp rules.yaml proxy/rules.yaml \
 && pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home katiba
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY rules.yaml /etc/katiba-cache/rules.yaml
ENV RULES_PATH=/etc/katiba-cache/rules.yaml \
    LISTEN=0.0.0.0:8080 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["cache-proxy"]
CMD ["serve"]
