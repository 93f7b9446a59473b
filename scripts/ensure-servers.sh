#!/usr/bin/env bash
# Installs the real servers the integration tests start (Debian packages):
# VictoriaMetrics (InfluxDB v2 write API), InfluxDB 1.6 (v1 API) and the
# forward proxy tinyproxy (the custom writer's proxy tests); with --bench also
# the load generator wrk.
set -euo pipefail
need=()
if [ "${1:-}" = "--bench" ]; then
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
fi
command -v victoria-metrics >/dev/null 2>&1 || need+=(victoria-metrics)
command -v influxd >/dev/null 2>&1 || need+=(influxdb)
command -v tinyproxy >/dev/null 2>&1 || need+=(tinyproxy)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing ${need[*]} (Debian packages) for the integration tests" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
