#!/usr/bin/env bash
# Soak of the whole cart pipeline, because a cart runs for hours and its memory, threads and
# open files must not grow: the edge runtime on the synthetic phantom with the demo bundle (the
# README's default), its web live view shown in a real headless Chromium for
# the whole run, and its cart MCU link talking to a simulated MCU (`firmware-host simulate`) on a
# pseudo-terminal. Samples the runtime's memory, threads and open files, and writes a verdict.
#
#   scripts/soak.sh [SECONDS] [OUT_DIR]     (default 3600 s, OUT_DIR target/soak/<UTC time>)
#
# It builds nothing: it runs target/release/{edge-runtime,firmware-host} (build them with
# `cargo build --release -p edge-runtime -p firmware-host`), or the binaries in SOAK_BIN_DIR.
# Needs chromium (or CHROMIUM=path) and python3 (the DevTools probe and the report).
#
# Environment (all optional):
#   SOAK_BIN_DIR          directory holding edge-runtime and firmware-host (target/release)
#   SOAK_SAMPLE_S         seconds between samples (60)
#   SOAK_WARMUP_S         warm-up: the first sample at or after it is the RSS baseline
#                         (default: 10 % of the run, at most 120 s)
#   SOAK_MAX_GROWTH_PCT   largest RSS growth after warm-up that passes (5)
#   SOAK_MAX_THREAD_GROWTH, SOAK_MAX_FD_GROWTH  threads / open files above the warm-up sample
#                         that still pass (2 / 8)
#   SOAK_RUNTIME_ARGS     extra arguments for `edge-runtime run`
#   CHROMIUM              the browser (default: chromium, chromium-browser, google-chrome)
#
# Output in OUT_DIR: samples.csv (one row per sample), soak.json (figures and verdict), run.jsonl
# (the runtime's JSON lines except predictions: started, status records, summary), run.err,
# sim.jsonl / sim.err (the simulated MCU), chromium.err, page.jsonl (the page as the browser
# shows it, at each sample). Exit status: 0 when the verdict is pass, 1 when it is fail, 2 when
# the soak could not run.
#
# The run ends with SIGTERM to the runtime, which stops it cleanly and makes it print its summary
# line (counters, latencies, peak RSS). Every process started here is stopped on exit, also when
# the script itself is interrupted.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
duration=${1:-3600}
out=${2:-$repo/target/soak/$(date -u +%Y%m%dT%H%M%SZ)}
sample_s=${SOAK_SAMPLE_S:-60}
bin_dir=${SOAK_BIN_DIR:-$repo/target/release}

die() { echo "soak: $*" >&2; exit 2; }
[[ $duration =~ ^[0-9]+$ ]] && ((duration > 0)) || die "SECONDS must be a positive integer, got $duration"
[[ $sample_s =~ ^[0-9]+$ ]] && ((sample_s > 0)) || die "SOAK_SAMPLE_S must be a positive integer"
warmup_s=${SOAK_WARMUP_S:-$(( duration / 10 < 120 ? duration / 10 : 120 ))}

er=$bin_dir/edge-runtime
fh=$bin_dir/firmware-host
for b in "$er" "$fh"; do
    [[ -x $b ]] || die "$b not found; build it first: cargo build --release -p edge-runtime -p firmware-host (or set SOAK_BIN_DIR)"
done
browser=${CHROMIUM:-}
if [[ -z $browser ]]; then
    for name in chromium chromium-browser google-chrome; do
        if command -v "$name" >/dev/null 2>&1; then browser=$(command -v "$name"); break; fi
    done
fi
[[ -n $browser && -x $browser ]] || die "no Chromium found (apt-get install chromium, or CHROMIUM=path)"
command -v python3 >/dev/null 2>&1 || die "python3 is needed for the DevTools probe and the report"

mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -rf "$out/chromium-profile" "$out/mcu"
: > "$out/page.jsonl"
# Created here, not by the redirections of the background jobs, which may not have run yet when
# the loops below first read them.
: > "$out/run.err"
: > "$out/chromium.err"
: > "$out/run.jsonl"
: > "$out/sim.jsonl"

sim_pid='' rt_pid='' br_pid=''
stop_pid() { # stop_pid PID SIGNAL: signal a process we started, wait up to 20 s, then kill it
    local pid=$1 sig=$2 i
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -"$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}
cleanup() {
    # Chromium runs in its own process group (setsid): stop the browser and its renderers.
    if [[ -n $br_pid ]] && kill -0 "$br_pid" 2>/dev/null; then
        kill -TERM -- "-$br_pid" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$br_pid" 2>/dev/null || true
    fi
    stop_pid "$rt_pid" TERM
    stop_pid "$sim_pid" TERM
    br_pid='' rt_pid='' sim_pid=''
}
trap cleanup EXIT
trap 'echo "soak: interrupted" >&2; exit 2' INT TERM HUP

# Sleeps in the background so that a signal to the script is handled at once.
nap() { sleep "$1" & wait $! || true; }

# --- the simulated MCU on a pseudo-terminal -------------------------------------------------
"$fh" simulate --link "$out/mcu" --json < /dev/null > "$out/sim.jsonl" 2> "$out/sim.err" &
sim_pid=$!
for ((i = 0; i < 100; i++)); do [[ -e $out/mcu ]] && break; nap 0.1; done
[[ -e $out/mcu ]] || die "the simulated MCU did not create $out/mcu (sim.err: $(tail -3 "$out/sim.err"))"

# --- the runtime: phantom + demo bundle, live view on loopback, MCU link -------------------
# Predictions (about 6 a second, a few kB each) are left out of run.jsonl; the page, the MCU and
# /latest.json see them.
# shellcheck disable=SC2086
"$er" run --serve 127.0.0.1:0 --serial "$out/mcu" --json ${SOAK_RUNTIME_ARGS:-} < /dev/null \
    > >(grep --line-buffered -v '^{"type":"prediction"' > "$out/run.jsonl") 2> "$out/run.err" &
rt_pid=$!
url=''
for ((i = 0; i < 1200; i++)); do
    url=$(sed -n 's/^live view: \(http[^ ]*\).*/\1/p' "$out/run.err" | head -1 || true)
    [[ -n $url ]] && break
    kill -0 "$rt_pid" 2>/dev/null || die "the runtime exited before serving (run.err: $(tail -5 "$out/run.err"))"
    nap 0.1
done
[[ -n $url ]] || die "the runtime did not print its live view address within 120 s"
start=$(date +%s)

# --- a real headless browser showing the page for the whole run -----------------------------
setsid "$browser" --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --no-first-run --no-default-browser-check --disable-background-networking \
    --disable-background-timer-throttling --disable-renderer-backgrounding \
    --remote-debugging-address=127.0.0.1 --remote-debugging-port=0 \
    --user-data-dir="$out/chromium-profile" "$url" < /dev/null > /dev/null 2> "$out/chromium.err" &
br_pid=$!
devtools=''
for ((i = 0; i < 600; i++)); do
    devtools=$(sed -n 's#.*DevTools listening on ws://\([^/]*\)/.*#\1#p' "$out/chromium.err" | head -1 || true)
    [[ -n $devtools ]] && break
    kill -0 "$br_pid" 2>/dev/null || die "Chromium exited (chromium.err: $(tail -5 "$out/chromium.err"))"
    nap 0.1
done
[[ -n $devtools ]] || die "Chromium did not print its DevTools address within 60 s"

# probe: the page's state as the browser shows it (one JSON line), and the runtime's newest
# prediction counters (/latest.json), taken together.
probe() {
    python3 - "$devtools" "$url" <<'PY'
import base64, json, os, socket, sys, urllib.request
devtools, url = sys.argv[1], sys.argv[2]
res = {}
try:
    latest = json.load(urllib.request.urlopen(url.rstrip("/") + "/latest.json", timeout=10))
    res["clips_inferred"] = (latest or {}).get("counters", {}).get("clips_inferred")
except Exception as e:
    res["latest_error"] = str(e)
def ws_eval(ws_url, expr):
    host, path = ws_url[len("ws://"):].split("/", 1)
    h, p = host.rsplit(":", 1)
    s = socket.create_connection((h, int(p)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise OSError("DevTools closed the connection")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise OSError("DevTools refused the WebSocket: " + head.split(b"\r\n")[0].decode())
    msg = json.dumps({"id": 1, "method": "Runtime.evaluate",
                      "params": {"expression": expr, "returnByValue": True}}).encode()
    mask = os.urandom(4)
    n = len(msg)
    hdr = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + n.to_bytes(2, "big"))
    s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
    def need(k):
        nonlocal buf
        while len(buf) < k:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("DevTools closed the connection")
            buf += chunk
        out, buf = buf[:k], buf[k:]
        return out
    while True:
        b0, b1 = need(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(need(2), "big")
        elif n == 127:
            n = int.from_bytes(need(8), "big")
        payload = need(n)
        if b0 & 0x0F == 1:
            v = json.loads(payload)
            if v.get("id") == 1:
                s.close()
                return v
expr = """JSON.stringify({
  predictions: Number(document.body.dataset.predictions || 0),
  frames: Number(document.body.dataset.frames || 0),
  view: (document.getElementById("view-label") || {}).textContent,
  conn: (document.getElementById("conn") || {}).textContent,
  notice: (document.getElementById("not-diagnostic") || {}).textContent,
  href: location.href})"""
try:
    pages = json.load(urllib.request.urlopen(f"http://{devtools}/json/list", timeout=10))
    page = next(p for p in pages if p.get("type") == "page" and p.get("url", "").startswith(url))
    r = ws_eval(page["webSocketDebuggerUrl"], expr)
    res["page"] = json.loads(r["result"]["result"]["value"])
except StopIteration:
    res["page_error"] = "no page showing the live view"
except Exception as e:
    res["page_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(res))
PY
}

# --- sampling ---------------------------------------------------------------------------------
echo "t_s,rss_kb,threads,fds,clips_inferred,page_predictions,page_frames,page_conn,mcu_predictions,browser_alive,load1" > "$out/samples.csv"
sample() {
    local t=$1 rss threads fds p pl clips pp pf pc mcu alive load1
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$rt_pid/status" 2>/dev/null || true)
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$rt_pid/status" 2>/dev/null || true)
    fds=$(find "/proc/$rt_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l || true)
    p=$(probe 2>/dev/null || echo '{"page_error":"probe failed"}')
    pl=$(printf '%s' "$p" | python3 -c 'import json,sys; d=json.load(sys.stdin); g=d.get("page") or {}; print(d.get("clips_inferred") if d.get("clips_inferred") is not None else "", g.get("predictions",""), g.get("frames",""), (g.get("conn") or "").replace(",", " ").replace(" ", "_") or "-", sep=",")' || echo ',,,-')
    printf '{"t_s":%s,"probe":%s}\n' "$t" "$p" >> "$out/page.jsonl"
    mcu=$(grep -c '"Prediction"' "$out/sim.jsonl" || true)
    alive=0; kill -0 "$br_pid" 2>/dev/null && alive=1
    # The machine's 1-minute load average: what else competed for the CPUs.
    load1=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || true)
    echo "$t,${rss:-},${threads:-},${fds:-},$pl,$mcu,$alive,${load1:-}" >> "$out/samples.csv"
    IFS=, read -r clips pp pf pc <<< "$pl"
    printf 'soak: t=%5ss rss=%s kB threads=%s fds=%s clips=%s page=%s/%s (%s) mcu=%s\n' \
        "$t" "${rss:-?}" "${threads:-?}" "${fds:-?}" "$clips" "$pp" "$pf" "$pc" "$mcu"
}

echo "soak: ${duration}s, a sample every ${sample_s}s, warm-up ${warmup_s}s, output in $out"
echo "soak: live view $url, DevTools $devtools, MCU $out/mcu"
next=$sample_s
while :; do
    now=$(( $(date +%s) - start ))
    if (( now >= duration )); then break; fi
    kill -0 "$rt_pid" 2>/dev/null || { echo "soak: the runtime exited early" >&2; break; }
    if (( now >= next )); then
        sample "$next"
        next=$(( next + sample_s ))
        continue
    fi
    wake=$(( next < duration ? next : duration ))
    nap $(( wake - now ))
done
early=0
if kill -0 "$rt_pid" 2>/dev/null; then
    # The last sample, then stop the runtime as systemd would.
    sample "$(( $(date +%s) - start ))"
else
    early=1
fi
stopped_at=$(( $(date +%s) - start ))
# What the MCU saw up to here counts; once the runtime stops, its watchdog trips by design.
sim_lines=$(wc -l < "$out/sim.jsonl")
stop_pid "$rt_pid" TERM
rt_status=0
wait "$rt_pid" 2>/dev/null || rt_status=$?
rt_pid=''
alive_end=0; kill -0 "$br_pid" 2>/dev/null && alive_end=1
sim_alive_end=0; kill -0 "$sim_pid" 2>/dev/null && sim_alive_end=1
cleanup
nap 0.5 # let the grep behind run.jsonl write the summary line

# --- report -----------------------------------------------------------------------------------
python3 - "$out" "$duration" "$sample_s" "$warmup_s" "$rt_status" "$early" "$alive_end" \
    "$sim_alive_end" "$stopped_at" "${SOAK_MAX_GROWTH_PCT:-5}" "${SOAK_MAX_THREAD_GROWTH:-2}" \
    "${SOAK_MAX_FD_GROWTH:-8}" "$er" "$browser" "$sim_lines" <<'PY'
import csv, json, sys, collections, datetime
(out, duration, sample_s, warmup_s, rt_status, early, browser_alive, sim_alive, stopped_at,
 max_growth, max_thr, max_fd, er, browser_exe, sim_lines) = sys.argv[1:]
duration, sample_s, warmup_s = int(duration), int(sample_s), int(warmup_s)
max_growth, max_thr, max_fd = float(max_growth), int(max_thr), int(max_fd)
def num(x):
    try:
        return int(x)
    except ValueError:
        return None
rows = []
with open(f"{out}/samples.csv") as f:
    for r in csv.DictReader(f):
        rows.append({k: (v if k in ("page_conn", "load1") else num(v)) for k, v in r.items()})
rows_rss = [r for r in rows if r["rss_kb"]]
base = next((r for r in rows_rss if r["t_s"] >= warmup_s), None)
after = [r for r in rows_rss if base and r["t_s"] >= base["t_s"]]
mb = lambda kb: round(kb / 1024, 2)
summary, started, status = None, None, []
with open(f"{out}/run.jsonl") as f:
    for line in f:
        try:
            v = json.loads(line)
        except ValueError:
            continue
        t = v.get("type")
        if t == "summary":
            summary = v
        elif t == "started":
            started = v
        elif t == "status":
            status.append(v)
sim = collections.Counter()
seqs = []
with open(f"{out}/sim.jsonl") as f:
    for line in f.readlines()[:int(sim_lines)]:
        try:
            v = json.loads(line)
        except ValueError:
            continue
        ev = v.get("event")
        if ev == "received" and isinstance(v.get("msg"), dict) and "Prediction" in v["msg"]:
            sim["predictions"] += 1
            seqs.append(v["msg"]["Prediction"].get("seq"))
        elif ev:
            sim[ev] += 1
seqs = [s for s in seqs if isinstance(s, int)]
# Predictions the host numbered but the MCU never got: gaps in the prediction sequence numbers
# (the link drops the oldest queued prediction when full, and drops, rather than queues, those
# made while the link is down).
mcu_gaps = (max(seqs) - min(seqs) + 1 - len(set(seqs))) if seqs else None
c = (summary or {}).get("counters", {})
by_code = collections.Counter(f'{s.get("level")}:{s.get("code")}' for s in status)
errors = [s for s in status if s.get("level") == "error"]
pages = [r for r in rows if r["page_predictions"] is not None]
first_p, last_p = (pages[0], pages[-1]) if pages else (None, None)
browser = {
    "samples_with_page": len(pages),
    "predictions_shown": last_p["page_predictions"] if last_p else None,
    "frames_shown": last_p["page_frames"] if last_p else None,
    "connection": last_p["page_conn"] if last_p else None,
    "alive_at_end": browser_alive == "1",
}
if first_p and last_p and first_p is not last_p and first_p["clips_inferred"] is not None \
        and last_p["clips_inferred"] is not None:
    made = last_p["clips_inferred"] - first_p["clips_inferred"]
    shown = last_p["page_predictions"] - first_p["page_predictions"]
    # The two are read a moment apart, so a prediction or two may fall either side.
    browser["between_first_and_last_sample"] = {"made": made, "shown": shown,
                                                "not_shown": made - shown}
threads = [r["threads"] for r in after if r["threads"] is not None]
fds = [r["fds"] for r in after if r["fds"] is not None]
res = {
    "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "command": f"scripts/soak.sh {duration} {out}",
    "runtime": er,
    "browser_exe": browser_exe,
    "browser": browser,
    "duration_s": duration,
    "stopped_at_s": int(stopped_at),
    "sample_s": sample_s,
    "warmup_s": warmup_s,
    "samples": len(rows),
    "rss_mb": {
        "first": mb(rows_rss[0]["rss_kb"]) if rows_rss else None,
        "after_warmup": mb(base["rss_kb"]) if base else None,
        "after_warmup_at_s": base["t_s"] if base else None,
        "max_after_warmup": mb(max(r["rss_kb"] for r in after)) if after else None,
        "last": mb(rows_rss[-1]["rss_kb"]) if rows_rss else None,
        "peak_reported_by_runtime": (summary or {}).get("peak_rss_mb"),
    },
    "threads": {"after_warmup": threads[0] if threads else None,
                "max": max(threads) if threads else None, "last": threads[-1] if threads else None},
    "fds": {"after_warmup": fds[0] if fds else None,
            "max": max(fds) if fds else None, "last": fds[-1] if fds else None},
    "runtime_exit_status": int(rt_status),
    "summary_reason": (summary or {}).get("reason"),
    "wall_s": (summary or {}).get("wall_s"),
    "capture_fps": (summary or {}).get("capture_fps"),
    "counters": c,
    "latency_ms": {k: v for k, v in (summary or {}).get("latency_ms", {}).items()
                   if k in ("capture_to_prediction", "inference", "queue_wait")},
    "status_records": dict(by_code),
    "error_records": [s.get("message") for s in errors][:20],
    "mcu": {"predictions_received": sim["predictions"], "sequence_gaps": mcu_gaps,
            "host_lost": sim["host_lost"], "rx_dropped": sim["rx_dropped"],
            "rx_stale": sim["rx_stale"], "booted": sim["booted"],
            "host_up": sim["host_up"], "alive_at_end": sim_alive == "1"},
}
if base and after:
    b = base["rss_kb"]
    res["rss_growth_pct"] = {
        "last": round(100 * (rows_rss[-1]["rss_kb"] - b) / b, 2),
        "max": round(100 * (max(r["rss_kb"] for r in after) - b) / b, 2),
    }
# The verdict. Drops allowed by the documented policies (SCHEMA.md, firmware-host/README.md,
# the live view's): clips evicted by the drop-oldest inference queue (clips_dropped), status
# records lost while an output was stuck (events_dropped), predictions the MCU link dropped
# (oldest first when its queue is full), messages a slow browser lost (its queue is bounded),
# video frames to the page (newest wins). Anything else that loses or spoils a frame is a
# failure: corrupt frames, preprocessing overruns, engine errors, restarts of the clip buffer.
checks = {}
def check(name, ok, detail):
    checks[name] = {"pass": bool(ok), "detail": detail}
check("summary", summary is not None and res["runtime_exit_status"] == 0 and early == "0",
      f'summary {"present" if summary else "missing"}, reason {res["summary_reason"]!r}, '
      f'exit status {rt_status}, ran to the end: {early == "0"}')
check("rss_growth", "rss_growth_pct" in res and res["rss_growth_pct"]["max"] < max_growth,
      f'max RSS after warm-up {res["rss_growth_pct"]["max"] if "rss_growth_pct" in res else "?"} % '
      f'above the warm-up sample (limit {max_growth} %)')
check("threads", threads and max(threads) - threads[0] <= max_thr,
      f"threads after warm-up {threads[0] if threads else '?'}, max {max(threads) if threads else '?'} "
      f"(allowed +{max_thr})")
check("fds", fds and max(fds) - fds[0] <= max_fd,
      f"open files after warm-up {fds[0] if fds else '?'}, max {max(fds) if fds else '?'} "
      f"(allowed +{max_fd})")
bad = {k: c.get(k) for k in ("engine_errors", "corrupt", "frame_overruns", "discontinuities",
                             "reconnects")}
check("no_errors", summary is not None and not errors and all(v == 0 for v in bad.values()),
      f"error records {len(errors)}, {bad}")
check("clips_flow", c.get("clips_inferred", 0) > 0
      and c.get("clips_built", 0) == c.get("clips_inferred", 0) + c.get("clips_dropped", 0),
      f'clips built {c.get("clips_built")} = inferred {c.get("clips_inferred")} + dropped by '
      f'the inference queue {c.get("clips_dropped")}')
check("browser", browser["alive_at_end"] and (browser["predictions_shown"] or 0) > 0
      and len(pages) == len(rows) and browser["connection"] == "live"
      and all(b["page_predictions"] > a["page_predictions"] for a, b in zip(pages, pages[1:])),
      f'page read at {len(pages)}/{len(rows)} samples, {browser["predictions_shown"]} predictions '
      f'and {browser["frames_shown"]} frames shown, more at every sample, connection '
      f'{browser["connection"]!r}, browser alive at the end: {browser["alive_at_end"]}')
check("mcu", sim["predictions"] > 0 and sim["host_lost"] == 0 and sim["booted"] == 1
      and res["mcu"]["alive_at_end"],
      f'MCU received {sim["predictions"]} predictions, watchdog trips {sim["host_lost"]}, '
      f'boots {sim["booted"]}, simulator alive at the end: {res["mcu"]["alive_at_end"]}')
res["thresholds"] = {"rss_growth_pct": max_growth, "thread_growth": max_thr, "fd_growth": max_fd}
res["checks"] = checks
res["verdict"] = "pass" if all(v["pass"] for v in checks.values()) else "fail"
with open(f"{out}/soak.json", "w") as f:
    json.dump(res, f, indent=2)
    f.write("\n")
for k, v in checks.items():
    print(f'soak: {"ok  " if v["pass"] else "FAIL"} {k}: {v["detail"]}')
print(f'soak: verdict {res["verdict"]} ({out}/soak.json)')
sys.exit(0 if res["verdict"] == "pass" else 1)
PY
