#!/bin/sh
# The compose stack for real on this machine, checked from outside by the doctor. Not run by
# `make test`: it needs Docker and builds images (about 10 minutes on 2 cores).
#
#   sh deploy/smoke.sh            # BUILD_CA_FILE=proxy-ca.pem if a proxy intercepts TLS;
#                                 # needs docker (dockerd running), docker compose or
#                                 # docker-compose (Debian's 1.29 works), debootstrap, openssl
#
# 1. the Debian base from debootstrap (deploy/build-base.sh) unless it exists, then the image
#    from deploy/Dockerfile, and Debian-package stand-ins for redis, coturn and caddy
#    (deploy/smoke/services.Dockerfile), for machines that reach no image registry;
# 2. a work directory with copies of docker-compose.yml, Caddyfile and coturn/, a test
#    certificate for localhost and 127.0.0.1 (TLS_MODE=files), fresh secrets and a .env;
# 3. `up -d` of sfu, auth, redis, coturn and caddy (not the matrix profile: no Synapse or
#    Element Call image here), waits for the healthchecks, runs scripts/doctor.py against
#    https://localhost/livekit/jwt, wss://localhost/livekit/sfu (with a token: ICE and DTLS to
#    the SFU's UDP port 7882) and coturn on 127.0.0.1:3478, checks coturn's TLS on 5349, makes
#    a call between two Chromium pages (deploy/smoke_call.py), checks the containers' users,
#    stops the SFU (SIGTERM: it drains and exits 0);
# 4. `down -v` and removes the work directory, also on failure.
# Uses host ports 80, 443, 3478, 5349, 7882/udp and 49160-49200/udp (what the stack publishes).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BASE=${BASE:-matrix-sfu-base:bookworm}
IMAGE=${IMAGE:-matrix-sfu:smoke}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WAIT_S=${WAIT_S:-120}
if docker compose version >/dev/null 2>&1; then COMPOSE="docker compose"
elif command -v docker-compose >/dev/null; then COMPOSE=docker-compose
else echo "smoke: neither 'docker compose' nor docker-compose is installed" >&2; exit 2
fi
step() { printf '\n== %s\n' "$*"; }

step "images"
docker image inspect "$BASE" >/dev/null 2>&1 || sh "$HERE/build-base.sh"
# BUILD_CA_FILE: the CA of a TLS-intercepting proxy between this machine and PyPI/npm
docker build -q -f "$HERE/Dockerfile" --build-arg BASE="$BASE" \
  --build-arg BUILD_CA_PEM="$(cat "${BUILD_CA_FILE:-/dev/null}")" -t "$IMAGE" "$ROOT"
for target in redis coturn caddy; do
  docker build -q -f "$HERE/smoke/services.Dockerfile" --build-arg BASE="$BASE" \
    --target $target -t matrix-sfu-smoke-$target:bookworm "$HERE/smoke"
done

step "work directory"
WORK=$(mktemp -d)
cp "$HERE/docker-compose.yml" "$HERE/Caddyfile" "$WORK/"
cp -r "$HERE/coturn" "$WORK/coturn"
mkdir "$WORK/secrets" "$WORK/certs"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$WORK/certs/tls.key" -out "$WORK/certs/tls.crt" 2>/dev/null
TURN_SECRET=$(openssl rand -hex 32)
API_KEY="APIsmoke$(openssl rand -hex 4)"
echo "$API_KEY: $(openssl rand -hex 32)" > "$WORK/secrets/livekit_keys"
sed -e 's/203\.0\.113\.10/127.0.0.1/' -e 's/turn\.example\.org/127.0.0.1/' \
    -e "s/secret: <[^>]*>/secret: $TURN_SECRET/" -e "s/api_key: <[^>]*>/api_key: $API_KEY/" \
    "$HERE/sfu.example.yaml" > "$WORK/secrets/sfu.yaml"
# bind-mounted secrets keep their mode: the services run as uid 10001
chmod 644 "$WORK"/secrets/* "$WORK"/certs/*
cat > "$WORK/.env" <<EOF
COMPOSE_PROJECT_NAME=matrix-sfu-smoke
RTC_DOMAIN=localhost
TURN_DOMAIN=127.0.0.1
NODE_IP=127.0.0.1
FULL_ACCESS_HOMESERVERS=example.org
TURN_SECRET=$TURN_SECRET
TLS_MODE=files
TURN_CERT_FILE=/certs/tls.crt
TURN_KEY_FILE=/certs/tls.key
MATRIX_SFU_IMAGE=$IMAGE
REDIS_IMAGE=matrix-sfu-smoke-redis:bookworm
COTURN_IMAGE=matrix-sfu-smoke-coturn:bookworm
CADDY_IMAGE=matrix-sfu-smoke-caddy:bookworm
EOF
cd "$WORK"
dc() { $COMPOSE --env-file "$WORK/.env" -f "$WORK/docker-compose.yml" "$@"; }
cleanup() {
  status=$?
  [ $status -eq 0 ] || dc logs --no-color --tail 60 || true
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit $status
}
trap cleanup EXIT INT TERM

step "compose up"
dc up -d --no-build
waited=0
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$(dc ps -q sfu)")" = healthy ] \
   && [ "$(docker inspect -f '{{.State.Health.Status}}' "$(dc ps -q auth)")" = healthy ] \
   && curl -fsS --cacert certs/tls.crt https://localhost/healthz >/dev/null 2>&1; do
  waited=$((waited + 2))
  [ $waited -le "$WAIT_S" ] || { echo "smoke: not healthy after $WAIT_S s" >&2; dc ps; exit 1; }
  sleep 2
done
dc ps

step "doctor"
# a token for a test room, as `lk token create` would make it (the media check joins with it)
TOKEN=$("$PYTHON" -c '
import sys, time, jwt
key, secret = (p.strip() for p in open(sys.argv[1]).read().split(":"))
grant = {"room": "smoke", "roomJoin": True, "roomCreate": True, "canPublish": True}
now = int(time.time())
print(jwt.encode({"iss": key, "sub": "doctor", "nbf": now, "exp": now + 600, "video": grant},
                 secret, algorithm="HS256"))' secrets/livekit_keys)
"$PYTHON" "$ROOT/scripts/doctor.py" --cafile certs/tls.crt \
  --service-url https://localhost/livekit/jwt --sfu-url wss://localhost/livekit/sfu \
  --turn 127.0.0.1:3478 --token "$TOKEN"

# coturn's turns: listener serves the certificate compose mounted (TURN_CERT_FILE)
openssl s_client -connect 127.0.0.1:5349 -CAfile certs/tls.crt -verify_return_error \
  </dev/null >/dev/null 2>&1 || { echo "PROBLEM  coturn: no verified TLS on 5349" >&2; exit 1; }
echo "ok       coturn serves TLS (turns:) on 5349 with the mounted certificate"

step "a call between two browsers"
# livekit-client in Chromium through Caddy and the SFU's published UDP port (SMOKE_CALL=0 skips
# it: it needs the dev venv and tests/browser's npm packages)
if [ "${SMOKE_CALL:-1}" != 0 ]; then "$PYTHON" "$HERE/smoke_call.py" "$WORK"; fi

step "users, drain"
for service in sfu auth; do
  uid=$(docker exec "$(dc ps -q $service)" id -u)
  [ "$uid" = 10001 ] || { echo "smoke: $service runs as uid $uid, not 10001" >&2; exit 1; }
  echo "ok       $service runs as uid $uid"
done
sfu=$(dc ps -q sfu)
dc stop sfu >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$sfu")
docker logs "$sfu" 2>&1 | grep -q "drained" || { echo "smoke: the SFU did not drain" >&2; exit 1; }
[ "$code" = 0 ] || { echo "smoke: the SFU exited $code on SIGTERM" >&2; exit 1; }
echo "ok       SIGTERM: the SFU drained and exited 0"
echo "smoke: passed"
