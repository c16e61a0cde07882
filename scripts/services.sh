#!/usr/bin/env bash
# Starts PostgreSQL, RabbitMQ and Redis where they are installed but stopped. Idempotent.
set -u

up() { timeout 3 bash -c "</dev/tcp/127.0.0.1/$1" 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 60); do up "$port" && return 0; sleep 1; done
  echo "services: $name did not come up on port $port" >&2
  return 1
}

status=0
if ! up 5432; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    wait_port 5432 PostgreSQL || status=1
  else
    echo "services: PostgreSQL is not running and not installed here" >&2; status=1
  fi
fi
if ! up 5672; then
  if command -v rabbitmq-server >/dev/null 2>&1; then
    echo "services: starting RabbitMQ"
    rabbitmq-server -detached || true
    wait_port 5672 RabbitMQ || status=1
  else
    echo "services: RabbitMQ is not running and not installed here" >&2; status=1
  fi
fi
# A stopped RabbitMQ app (rabbitmqctl stop_app) keeps the node up but closes the port.
if command -v rabbitmqctl >/dev/null 2>&1 && ! up 5672; then
  rabbitmqctl start_app >/dev/null 2>&1 || true
  wait_port 5672 RabbitMQ || status=1
fi
if ! up 6379; then
  if command -v redis-server >/dev/null 2>&1; then
    echo "services: starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    wait_port 6379 Redis || status=1
  else
    echo "services: Redis is not running and not installed here" >&2; status=1
  fi
fi
exit $status
