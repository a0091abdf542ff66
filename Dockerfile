# jupiterd in a container: the package built from this source tree, run as
# a non-root user, configured from /etc/jupiterd (mount it read-only).
#
#   docker build -t jupiterd .
#   docker run -d --name jupiterd --restart unless-stopped \
#     -v /etc/jupiterd:/etc/jupiterd:ro -v jupiterd-state:/var/lib/jupiterd \
#     --env-file /etc/jupiterd/jupiterd.env -p 127.0.0.1:9478:9478 jupiterd
#
# Inside a container the daemon must listen on all interfaces for the
# published port to reach it: set `http.listen: 0.0.0.0:9478` in the config
# (and publish the port on 127.0.0.1 or firewall it: POST /pause and
# /resume are on the same listener).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY probes ./probes
COPY jupiterd ./jupiterd
# A virtual environment, copied whole into the runtime stage: no compiler,
# no pip cache and no source tree in the final image.
RUN python -m venv /opt/jupiterd \
    && /opt/jupiterd/bin/pip install --no-cache-dir /src

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="jupiterd" \
      org.opencontainers.image.description="Application-level health checks and safe EC2 failover for the Jupiter WebRTC/IoT stack" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed uid/gid so that host files (secrets, the state volume) and
# net.ipv4.ping_group_range can name it.
RUN groupadd --system --gid 10001 jupiterd \
    && useradd --system --uid 10001 --gid jupiterd --home-dir /var/lib/jupiterd \
       --no-create-home --shell /usr/sbin/nologin jupiterd \
    && mkdir -p /etc/jupiterd /var/lib/jupiterd \
    && chown jupiterd:jupiterd /var/lib/jupiterd \
    && chmod 0750 /var/lib/jupiterd
COPY --from=build /opt/jupiterd /opt/jupiterd
COPY config/jupiter.example.yaml config/minimal.yaml /usr/share/doc/jupiterd/
ENV PATH=/opt/jupiterd/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JUPITERD_CONFIG=/etc/jupiterd/jupiterd.yaml \
    JUPITERD_HEALTHZ_URL=http://127.0.0.1:9478/healthz
# The journal of the plan in flight, its lock and the pause flag: keep them
# on a volume so a restarted container resumes an interrupted failover.
VOLUME ["/var/lib/jupiterd"]
USER 10001:10001
EXPOSE 9478
# /healthz is 200 only while the main loop runs; slim has no curl, so
# Python's urllib (an HTTP error or no answer exits 1: unhealthy).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['JUPITERD_HEALTHZ_URL'], timeout=4)"]
ENTRYPOINT ["jupiterd"]
CMD ["run"]
