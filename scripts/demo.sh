#!/usr/bin/env bash
# The README walk-through, end to end: start tidings, log two users in with curl (codes from the
# server log), listen with mosquitto_sub, send with mosquitto_pub, check the event arrived and is
# in history. Exits non-zero at the first step that fails.
#
# Needs curl and mosquitto-clients. Runs its own server (on DEMO_HTTP_PORT / DEMO_MQTT_PORT,
# default 18080 / 11883, with a temporary data dir) with `cargo run --release`, or with
# $DEMO_BIN if set.
set -euo pipefail
cd "$(dirname "$0")/.."

http_port=${DEMO_HTTP_PORT:-18080}
mqtt_port=${DEMO_MQTT_PORT:-11883}
work=$(mktemp -d)
log="$work/server.log"
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "demo: FAILED: $*" >&2; echo "--- server log" >&2; cat "$log" >&2; exit 1; }
step() { echo "demo: $*"; }

export TIDINGS_HTTP__LISTEN="127.0.0.1:$http_port" TIDINGS_MQTT__LISTEN="127.0.0.1:$mqtt_port"
export TIDINGS_STORAGE__PATH="$work/data"
step "starting tidings (HTTP $http_port, MQTT $mqtt_port)"
if [ -n "${DEMO_BIN:-}" ]; then
  "$DEMO_BIN" --config "$work/none.toml" >"$log" 2>&1 &
else
  cargo run --release --quiet -- --config "$work/none.toml" >"$log" 2>&1 &
fi
server=$!
for _ in $(seq 1 600); do
  grep -q "tidings ready" "$log" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || fail "the server exited"
  sleep 0.5
done
grep -q "tidings ready" "$log" || fail "the server did not get ready"
api="http://127.0.0.1:$http_port"

json_field() { grep -o "\"$1\":\"[^\"]*\"" | head -1 | cut -d'"' -f4; }

# Log in: ask for a code, read it from the server log (console SMS provider), verify it.
login() {
  local phone=$1 e164=$2 code tokens
  curl -sf "$api/v1/auth/otp" -d "{\"phone\": \"$phone\"}" >/dev/null || fail "POST /v1/auth/otp for $phone"
  for _ in $(seq 1 50); do
    code=$(grep "SMS to $e164" "$log" | grep -o 'code is [0-9]*' | tail -1 | cut -d' ' -f3) && [ -n "$code" ] && break
    sleep 0.1
  done
  [ -n "$code" ] || fail "no code for $e164 in the server log"
  tokens=$(curl -sf "$api/v1/auth/verify" -d "{\"phone\": \"$e164\", \"code\": \"$code\"}") || fail "verify for $e164"
  echo "$tokens"
}

step "logging in Ann and Bob with curl"
ann=$(login "+1 415 555 0101" "+14155550101")
bob=$(login "+1 415 555 0102" "+14155550102")
ann_id=$(echo "$ann" | json_field user_id); ann_token=$(echo "$ann" | json_field access_token)
bob_id=$(echo "$bob" | json_field user_id); bob_token=$(echo "$bob" | json_field access_token)
[ -n "$ann_id" ] && [ -n "$bob_id" ] || fail "no user ids in the verify answers"

step "Bob listens with mosquitto_sub"
# -d prints the protocol exchange too, so the demo can wait for the SUBACK before sending
# (stdbuf: line by line, not when mosquitto_sub exits).
stdbuf -oL mosquitto_sub -d -h 127.0.0.1 -p "$mqtt_port" -i bob-phone -u "$bob_id" -P "$bob_token" -q 1 \
  -t "users/$bob_id/inbox" -C 1 -W 15 >"$work/bob.txt" 2>"$work/bob.err" &
sub=$!
for _ in $(seq 1 100); do
  grep -q "received SUBACK" "$work/bob.txt" && break
  sleep 0.1
done
grep -q "received SUBACK" "$work/bob.txt" || fail "mosquitto_sub did not subscribe: $(cat "$work/bob.txt" "$work/bob.err")"

step "Ann sends with mosquitto_pub"
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -i ann-phone -u "$ann_id" -P "$ann_token" -q 1 \
  -t "users/$ann_id/outbox" \
  -m "{\"type\":\"send\",\"to\":\"$bob_id\",\"body\":\"hello from the demo\",\"client_msg_id\":\"demo-1\"}" \
  || fail "mosquitto_pub"

wait "$sub" || fail "mosquitto_sub got no event: $(cat "$work/bob.err")"
event=$(grep '^{' "$work/bob.txt" | tail -1)
step "Bob received: $event"
echo "$event" | grep -q '"type":"message"' || fail "not a message event"
echo "$event" | grep -q "\"from\":\"$ann_id\"" || fail "not from Ann"
echo "$event" | grep -q '"body":"hello from the demo"' || fail "wrong body"
echo "$event" | grep -q '"seq":1' || fail "not seq 1"

step "the message is in Bob's history"
history=$(curl -sf "$api/v1/conversations/$ann_id/messages" -H "Authorization: Bearer $bob_token") \
  || fail "GET history"
echo "$history" | grep -q '"client_msg_id":"demo-1"' || fail "not in history: $history"

step "OK"
