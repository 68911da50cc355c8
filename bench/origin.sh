# The scripted origin of bench/compare.sh, bench/cpu_split.sh and bench/pgo.sh, sourced by
# them: one nginx worker on ADDR answering /small (2 B), /4k (4 KiB), /flaky (503 for a
# random 20%), /fail (always 503) and /post (200, body read and dropped). Also nginx as the
# reverse proxy those runs compare against. Both need WORK (a scratch directory) and PIDS
# (the caller's list of processes to stop) to be set.
#
#   start_origin ADDR WORKER_CONNECTIONS
#   start_nginx_proxy LISTEN ORIGIN WORKER_CONNECTIONS   # sets NGINX_MASTER
start_origin() {
  head -c 4096 /dev/zero | tr "\\0" x > "$WORK/4k"; chmod 755 "$WORK"; chmod 644 "$WORK/4k"
  cat > "$WORK/origin.conf" <<NGINX
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/origin-error.log;
events { worker_connections $2; }
http {
  access_log off;
  keepalive_requests 10000000;
  split_clients "\${request_id}" \$fail { 20% 1; * 0; }
  server {
    listen $1;
    location = /small { return 200 "ok"; }
    location = /4k { root $WORK; try_files /4k =404; }
    location = /flaky { if (\$fail) { return 503 "down"; } return 200 "ok"; }
    location = /fail { return 503 "down"; }
    location = /post { return 200 "taken"; }
  }
}
NGINX
  nginx -c "$WORK/origin.conf" -g 'daemon off;' & PIDS+=($!)
}

# nginx as a reverse proxy: one worker, upstream keep-alive.
start_nginx_proxy() {
  cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections $3; }
http {
  access_log off;
  keepalive_requests 10000000;
  upstream origin { server $2; keepalive 128; }
  server {
    listen $1;
    location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
  nginx -c "$WORK/nginx.conf" -g 'daemon off;' & PIDS+=($!); NGINX_MASTER=$!
}
