# Stand-ins for the compose file's third-party images (redis:7-bookworm, coturn/coturn:4.6,
# caddy:2) built from Debian's packages, for machines that reach Debian's mirror but no image
# registry. deploy/smoke.sh builds each target and passes it as REDIS_IMAGE, COTURN_IMAGE,
# CADDY_IMAGE; the compose file's commands and mounts work unchanged with them.
ARG BASE=matrix-sfu-base:bookworm

FROM ${BASE} AS redis
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/*
USER redis
CMD ["redis-server"]

FROM ${BASE} AS coturn
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends coturn \
 && rm -rf /var/lib/apt/lists/*
# the official image's entrypoint is turnserver too: compose passes only its arguments
ENTRYPOINT ["turnserver"]

FROM ${BASE} AS caddy
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends caddy ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# where the official image keeps its state (compose mounts caddy_data at /data)
ENV XDG_CONFIG_HOME=/config XDG_DATA_HOME=/data
CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
