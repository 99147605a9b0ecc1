#!/usr/bin/env python3
"""Table of scripts/board-fit.sh: per encoder, what `edge-runtime bench` measured here, and per
board profile whether the encoder keeps up with the profile's clip rate, projected from the int8
peak of the board's cores.

The projection assumes the encoder reaches the same fraction of its machine's int8 peak on the
board as here, so the board's inference time is this machine's times (peak here / peak there).
The peak here is the all-thread peak of the roofline loop of the int8 kernel this CPU selects,
from WORK_DIR/roofline.json (`cargo bench -p echojepa-kernels --bench roofline -- --json`), or
PEAK_HERE_GOPS when set. Each board's clip rate (capture fps / clip_every) and threads
(compute.threads) come from boards/profiles/*.toml. The Jetsons' peaks are instruction-throughput
figures, not measurements: Cortex-A78AE cores issue two 128-bit SDOT a cycle (16 int8
multiply-adds each, 64 operations a cycle a core) at the board's top CPU clock. Memory bandwidth
is not modelled; at 224 px the Orin Nano's profile notes it as the limit. Profiles without a
fixed CPU (generic-cpu, the x86 workstation) are projected as this machine.

An encoder is said to keep up when its projected median inference time (encoder and heads) is
within the clip interval; with the runtime's one-clip queue a slower one drops clips.

Usage: board_fit_table.py WORK_DIR   (reads NAME-RES.bench.json written by board-fit.sh)
"""

import json
import os
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The CPU of each board (not in its profile, which describes the cart, not the silicon): cores and
# top clock in GHz. Profiles not named here run on an unknown CPU and are projected as this machine.
BOARD_CPUS = {
    "jetson-orin-nano": (6, 1.5),
    "jetson-orin-nx": (8, 2.0),
    "jetson-agx-orin": (12, 2.2),
}
A78_OPS_PER_CYCLE = 64  # 2 SDOT x 16 multiply-adds x 2 operations


def boards():
    """(name, compute threads or None for every CPU, clip rate in clips/s) of each profile."""
    out = []
    for f in sorted((ROOT / "boards" / "profiles").glob("*.toml")):
        p = tomllib.loads(f.read_text())
        rate = p["capture"]["fps"] / p["model"]["clip_every"]
        out.append((p["name"], p["compute"].get("threads") or None, rate))
    return out


def peak_of_this_machine(work):
    if "PEAK_HERE_GOPS" in os.environ:
        return float(os.environ["PEAK_HERE_GOPS"]), "given by PEAK_HERE_GOPS"
    r = json.loads((work / "roofline.json").read_text())
    if r.get("int8_peak_gops") is None:
        sys.exit(f"the roofline has no peak loop for the int8 kernel {r['int8_kernel']}; set PEAK_HERE_GOPS")
    if r["int8_kernel"] == "amx":
        print(
            "warning: measured with AMX tiles; the boards have no matrix unit, so the projected rows"
            " below assume a fraction of peak they will not reach (run without ECHOJEPA_KERNEL_INT8=amx)",
            file=sys.stderr,
        )
    return r["int8_peak_gops"], f"int8 {r['int8_kernel']}"


def main():
    work = Path(sys.argv[1])
    peak_here, kernel = peak_of_this_machine(work)
    threads_here = int(os.environ.get("THREADS", os.cpu_count() or 1))
    rows = []
    for m in os.environ.get("MODELS", "").split():
        name, res = m.split("@")
        path = work / f"{name}-{res}.bench.json"
        if not path.exists():
            print(f"missing {path}", file=sys.stderr)
            continue
        b = json.loads(path.read_text())
        s = b["summary"]
        lat = s["latency_ms"]
        c = s["counters"]
        rows.append({
            "model": f"{name} {res} px",
            "encoder_p50": lat["encoder"]["p50"],
            "inference_p50": lat["inference"]["p50"],
            "inference_p99": lat["inference"]["p99"],
            "built": c["clips_built"],
            "dropped": c["clips_dropped"],
            "inferred": c["clips_inferred"],
        })
    if not rows:
        sys.exit("no bench results")

    print(f"Measured here ({threads_here} threads, phantom at 30 fps, a clip every 8 frames = 3.75 clips/s):\n")
    print("| encoder | encoder p50 ms | inference p50 / p99 ms | clips built | dropped | keeps up at 3.75/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ok = "yes" if r["dropped"] == 0 else "no"
        print(f"| {r['model']} | {r['encoder_p50']:.1f} | {r['inference_p50']:.1f} / {r['inference_p99']:.1f} "
              f"| {r['built']} | {r['dropped']} | {ok} |")

    print("\nProjected per board profile (inference p50 here x peak here / board peak; budget = 1 / clip rate):\n")
    head = "| board | threads | int8 peak GOP/s | budget ms | " + " | ".join(r["model"] for r in rows) + " | largest that keeps up |"
    print(head)
    print("|" + "---|" * (5 + len(rows)))
    for board, threads, rate in boards():
        cpu = BOARD_CPUS.get(board)
        if cpu is None:
            t, peak = threads or threads_here, peak_here
            peak_s = f"{peak:.0f} (this machine, {kernel})"
        else:
            t = threads or cpu[0]
            peak = t * cpu[1] * A78_OPS_PER_CYCLE
            peak_s = f"{peak:.0f}"
        budget = 1000.0 / rate
        cells, best = [], None
        for r in rows:
            ms = r["inference_p50"] * peak_here / peak
            fits = ms <= budget
            cells.append(f"{ms:.0f} {'fits' if fits else 'too slow'}")
            if fits and (best is None or r["inference_p50"] > best["inference_p50"]):
                best = r  # the largest is the slowest that still fits
        print(f"| {board} | {t} | {peak_s} | {budget:.0f} | " + " | ".join(cells)
              + f" | {best['model'] if best else 'none'} |")


if __name__ == "__main__":
    main()
