#!/usr/bin/env python3
"""Peer benchmark: the EchoJEPA encoder in PyTorch, ONNX Runtime f32, ONNX Runtime dynamic
int8, and the Rust encoders, timed side by side in one run on the same weights and input.

Why it exists: the edge runtime has to be faster than ONNX Runtime on the same machine, or a
device maker has no reason to use it. This script
(1) checks the PyTorch encoder (vjepa_encoder.py) against the conformance fixture, (2) builds
each benchmark encoder with deterministic synthetic weights, exports ONNX, quantizes it with
onnxruntime.quantization.quantize_dynamic (int8), (3) times every engine, the Rust commands
described in bench/README.md included, in interleaved rounds (one run of each engine per round)
on the same files, and (4) reports medians, ratios and token cosine similarity to PyTorch f32.

Run from the repository root: `python3 bench/peer_bench.py --help`. The first run creates
bench/.venv and installs its Python dependencies from PyPI.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv"
REQUIREMENTS = ["torch", "onnx", "onnxscript", "onnxruntime", "safetensors", "numpy"]


def ensure_venv():
    """Re-exec inside bench/.venv, creating it and installing the requirements if needed."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    py = VENV / "bin" / "python"
    if not py.exists():
        print(f"creating {VENV} and installing {' '.join(REQUIREMENTS)} from PyPI ...", flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    probe = subprocess.run([str(py), "-c", "import torch, onnx, onnxruntime, safetensors, numpy"],
                           capture_output=True)
    if probe.returncode != 0:
        subprocess.check_call([str(py), "-m", "pip", "install", "-q", *REQUIREMENTS])
    os.execv(str(py), [str(py), *sys.argv])


ensure_venv()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: E402
from safetensors.numpy import load_file as load_np, save_file as save_np  # noqa: E402

sys.path.insert(0, str(HERE))
from vjepa_encoder import PRESETS, Encoder, benchmark_weights, load_official  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "conformance"
DEFAULT_MODELS = "vit_tiny@112,vit_small@112,vit_base@112,vit_tiny@224,vit_small@224"
DEFAULT_RUST = "cargo run --release -q -p edge-runtime --example bench_encoder --"


def conformance(fixture):
    """Run the fixture's `encode` cases in float32 and compare with reference.safetensors."""
    meta = json.loads((fixture / "meta.json").read_text())
    arch = meta["encoder_arch"]
    tol = meta["tolerance"]
    ckpt = torch.load(fixture / meta["checkpoint"], map_location="cpu", weights_only=True)
    inputs = load_np(str(fixture / "inputs.safetensors"))
    ref = load_np(str(fixture / "reference.safetensors"))
    ok = True
    for case in meta["cases"]:
        if case["op"] != "encode":
            continue
        enc = Encoder(arch["embed_dim"], arch["depth"], arch["num_heads"], arch["mlp_ratio"],
                      arch["patch_size"], arch["tubelet_size"])
        load_official(enc, ckpt[case["checkpoint_key"]]).eval()
        with torch.no_grad():
            out = enc(torch.from_numpy(inputs[case["video"]])).numpy()
        exp = ref[case["output"]]
        max_abs = float(np.abs(out - exp).max())
        rel_l2 = float(np.linalg.norm(out - exp) / np.linalg.norm(exp))
        good = max_abs <= tol["max_abs"] and rel_l2 <= tol["rel_l2"]
        ok &= good
        print(f"  conformance {case['output']:42s} max_abs {max_abs:.2e} rel_l2 {rel_l2:.2e} "
              f"{'ok' if good else 'FAIL'}")
    if not ok:
        raise SystemExit("the PyTorch encoder does not match the conformance fixture")


def token_cosine(a, b):
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.mean()), float(cos.min())


def rust_args(cmd, weights, video, reps, out_dir, name):
    out_prefix = out_dir / f"{name}.rust"
    return shlex.split(cmd) + ["--weights", str(weights), "--input", str(video), "--reps", str(reps),
                               "--output-prefix", str(out_prefix), "--json"]


def rust_env(threads):
    env = dict(os.environ)
    env.setdefault("ECHOJEPA_THREADS", str(threads))
    return env


def parse_summary(lines):
    """The Rust command's per-variant JSON lines -> {label: (times_ms, tokens)}."""
    results = {}
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if "label" not in r:
            continue
        tokens = load_np(r["output"])["tokens"]
        results[r["label"]] = (r["times_ms"], tokens)
    return results


def run_rust(cmd, weights, video, reps, out_dir, name, threads):
    """Run one Rust encoder command on its own (it times its repetitions back to back);
    returns {label: (times_ms, tokens)} or an error string."""
    args = rust_args(cmd, weights, video, reps, out_dir, name)
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=rust_env(threads))
    if proc.returncode != 0:
        return f"`{cmd}` failed ({proc.returncode}): {proc.stderr.strip()[-400:]}"
    return parse_summary(proc.stdout.splitlines())


class InterleavedRust:
    """A Rust encoder command started with `--interleave`: it loads and warms up once, then
    times one run of each of its variants whenever `round()` asks, so that its runs take turns
    with ONNX Runtime's on the same machine instead of running in a separate time window."""

    def __init__(self, cmd, weights, video, reps, out_dir, name, threads):
        self.cmd = cmd
        args = rust_args(cmd, weights, video, reps, out_dir, name) + ["--interleave"]
        self.proc = subprocess.Popen(args, cwd=ROOT, env=rust_env(threads), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        ready = self._json_line()
        if "ready" not in ready:
            raise RuntimeError(f"`{cmd}` did not report ready: {ready}")
        self.labels = ready["ready"]

    def _json_line(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read().strip()[-400:]
                raise RuntimeError(f"`{self.cmd}` ended early ({self.proc.wait()}): {err}")
            if line.startswith("{"):
                return json.loads(line)

    def round(self):
        """One timed run of every variant: {label: ms}."""
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self._json_line()["times_ms"]

    def abandon(self, times):
        """Stop the command (if it still runs) and drop its variants' times."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for label in self.labels:
            times.pop(label, None)

    def finish(self):
        """Close the rounds; {label: (times_ms, tokens)} from the summary."""
        out, err = self.proc.communicate()
        if self.proc.returncode != 0:
            raise RuntimeError(f"`{self.cmd}` failed ({self.proc.returncode}): {err.strip()[-400:]}")
        return parse_summary(out.splitlines())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help="comma-separated PRESET@SIZE list (16 frames each); default: %(default)s")
    ap.add_argument("--reps", type=int, default=10, help="timed repetitions per engine (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs per engine first")
    ap.add_argument("--threads", type=int, default=2, help="threads for PyTorch and ONNX Runtime")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "out", help="weights, inputs, ONNX and results")
    ap.add_argument("--rust-cmd", action="append", default=None,
                    help=f"Rust encoder command(s), see bench/README.md; default: {DEFAULT_RUST!r}; "
                         "pass 'none' to skip")
    ap.add_argument("--skip-conformance", action="store_true")
    ap.add_argument("--skip-torch", action="store_true", help="do not time PyTorch (still used as f32 reference)")
    ap.add_argument("--sequential-rust", action="store_true",
                    help="run each Rust command once after the Python engines, timing its repetitions "
                         "back to back (for commands without --interleave, e.g. the kernels' encoder_bench); "
                         "default: one Rust run per round, interleaved with the Python engines")
    ap.add_argument("--pause", type=float, default=0.05,
                    help="seconds of idle time between two engines' runs, so that one engine's "
                         "spinning worker threads have gone to sleep before the next one starts")
    ap.add_argument("--roofline", metavar="FILE|run", default=None,
                    help="also report each engine's rate as a fraction of this machine's peak: "
                         "FILE is the JSON line of `cargo bench -p echojepa-kernels --bench roofline "
                         "-- --json`; `run` runs that bench first (about a minute). int8 engines are "
                         "measured against the int8 peak, f32 engines against the f32 peak")
    args = ap.parse_args()
    roof = load_roofline(args.roofline, args.threads) if args.roofline else None
    rust_cmds = [c for c in (args.rust_cmd or [DEFAULT_RUST]) if c != "none"]

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, threads {args.threads}, "
          f"cpu: {cpu_name()}", flush=True)
    if not args.skip_conformance:
        conformance(FIXTURE)

    rows = []
    for spec in args.models.split(","):
        preset, size = spec.split("@")
        size = int(size)
        dim, depth, heads = PRESETS[preset]
        name = f"{preset}_{size}"
        enc = benchmark_weights(Encoder(dim, depth, heads), args.seed).eval()
        g = torch.Generator().manual_seed(args.seed + 1)
        video = torch.randn(1, 3, args.frames, size, size, generator=g)
        tokens_n = (args.frames // 2) * (size // 16) ** 2
        print(f"\n== {name}: {tokens_n} tokens, dim {dim}, depth {depth}, heads {heads}", flush=True)

        weights_path = args.out / f"{name}.weights.safetensors"
        video_path = args.out / f"{name}.input.safetensors"
        sd = {k: v.detach().numpy().copy() for k, v in enc.state_dict().items()}
        save_np(sd, str(weights_path), metadata={
            "embed_dim": str(dim), "depth": str(depth), "num_heads": str(heads), "mlp_ratio": "4.0",
            "patch_size": "16", "tubelet_size": "2", "note": "synthetic benchmark weights, not trained"})
        save_np({"video": video.numpy()}, str(video_path))

        onnx_f32 = args.out / f"{name}.f32.onnx"
        onnx_i8 = args.out / f"{name}.int8.onnx"
        with torch.no_grad():
            ref = enc(video).numpy()
            export(enc, video, onnx_f32)
        quantize_dynamic(str(onnx_f32), str(onnx_i8), weight_type=QuantType.QInt8)

        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = {
            "ort_f32": ort.InferenceSession(str(onnx_f32), so, providers=["CPUExecutionProvider"]),
            "ort_int8": ort.InferenceSession(str(onnx_i8), so, providers=["CPUExecutionProvider"]),
        }
        feed = {sess["ort_f32"].get_inputs()[0].name: video.numpy()}
        engines = {k: (lambda s=s: s.run(None, feed)[0]) for k, s in sess.items()}
        if not args.skip_torch:
            def run_torch():
                with torch.no_grad():
                    return enc(video).numpy()
            engines = {"torch_f32": run_torch, **engines}

        outputs = {k: f() for k, f in engines.items()}
        for _ in range(args.warmup - 1):
            for f in engines.values():
                f()
        rust = []
        if not args.sequential_rust:
            for cmd in rust_cmds:
                try:
                    rust.append(InterleavedRust(cmd, weights_path, video_path, args.reps, args.out,
                                                name, args.threads))
                except RuntimeError as e:
                    print("  rust:", e, flush=True)
        times = {k: [] for k in engines}
        for r in rust:
            for label in r.labels:
                times[label] = []
        for _ in range(args.reps):
            for k, f in engines.items():
                time.sleep(args.pause)
                t0 = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t0) * 1e3)
            for r in list(rust):
                time.sleep(args.pause)
                try:
                    for label, ms in r.round().items():
                        times[label].append(ms)
                except (RuntimeError, OSError) as e:
                    # A Rust command that dies mid-rounds loses its rows, not the others'.
                    print("  rust:", e, flush=True)
                    r.abandon(times)
                    rust.remove(r)
        for r in list(rust):
            try:
                for label, (t, toks) in r.finish().items():
                    outputs[label] = toks
            except RuntimeError as e:
                print("  rust:", e, flush=True)
                r.abandon(times)
                rust.remove(r)
        if args.sequential_rust:
            for cmd in rust_cmds:
                res = run_rust(cmd, weights_path, video_path, args.reps, args.out, name, args.threads)
                if isinstance(res, str):
                    print("  rust:", res, flush=True)
                    continue
                for label, (t, toks) in res.items():
                    times[label] = t
                    outputs[label] = toks

        best_ort = min(statistics.median(times["ort_f32"]), statistics.median(times["ort_int8"]))
        ort_f32 = statistics.median(times["ort_f32"])
        # Interleaved rounds also give a ratio per round (this engine's run over the faster ORT
        # run of the same round); its median is less sensitive to the machine's slow spells.
        round_best_ort = [min(a, b) for a, b in zip(times["ort_f32"], times["ort_int8"])]
        round_engines = set(engines) | {label for r in rust for label in r.labels}
        for k in times:
            med = statistics.median(times[k])
            cmean, cmin = token_cosine(outputs[k], ref)
            row = {"model": name, "tokens": tokens_n, "engine": k, "median_ms": round(med, 2),
                   "min_ms": round(min(times[k]), 2), "reps": len(times[k]),
                   "ratio_to_best_ort": round(med / best_ort, 3),
                   "ratio_to_ort_f32": round(med / ort_f32, 3),
                   "cos_mean": round(cmean, 6), "cos_min": round(cmin, 6),
                   "rust_interleaved": not args.sequential_rust}
            # (Only for engines that ran in the rounds: a --sequential-rust command's runs were
            # timed apart from them.)
            if k in round_engines:
                row["median_round_ratio_to_best_ort"] = round(
                    statistics.median(t / b for t, b in zip(times[k], round_best_ort)), 3)
            peak_note = ""
            if roof is not None:
                gops = encoder_ops(dim, depth, tokens_n) / med / 1e6
                peak = roof["int8_peak_gops"] if "int8" in k else roof["f32_peak_gflops"]
                row["gops"] = round(gops, 1)
                row["of_peak"] = round(gops / peak, 3) if peak else None
                if peak:
                    peak_note = f"  {gops:6.0f} GOP/s = {gops / peak:4.0%} of peak"
            rows.append(row)
            per_round = row.get("median_round_ratio_to_best_ort", float("nan"))
            print(f"  {k:28s} median {med:8.1f} ms  (min {min(times[k]):7.1f})  "
                  f"/best ORT {med / best_ort:5.2f} (per round {per_round:5.2f})  "
                  f"/ORT f32 {med / ort_f32:5.2f}  "
                  f"token cos mean {cmean:.6f} min {cmin:.6f}{peak_note}", flush=True)

    if roof is not None:
        print(f"\npeaks ({roof['threads']} threads): int8 {roof['int8_peak_gops']} GOP/s "
              f"({roof['int8_kernel']}), f32 {roof['f32_peak_gflops']} GFLOP/s ({roof['f32_kernel']}); "
              "an encoder's operations are its multiply-adds x 2 (patch embedding, the four "
              "linears of every block and attention's two products)")
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"\nresults: {args.out / 'results.json'}")


def encoder_ops(dim, depth, tokens, mlp_ratio=4, patch_in=3 * 2 * 16 * 16):
    """Operations of one encoder pass (a multiply-add is 2): the patch embedding, per block
    qkv, proj, fc1 and fc2 (2·N·(4 + 2·mlp_ratio)·D²) and attention's two products
    (2·2·N²·D)."""
    block = 2 * tokens * (4 + 2 * mlp_ratio) * dim * dim + 4 * tokens * tokens * dim
    return 2 * tokens * patch_in * dim + depth * block


def load_roofline(arg, threads):
    """The roofline bench's JSON object, from a file or (`run`) from running it."""
    if arg == "run":
        print("running the roofline bench (cargo bench -p echojepa-kernels --bench roofline) ...",
              flush=True)
        proc = subprocess.run(["cargo", "bench", "-q", "-p", "echojepa-kernels", "--bench",
                               "roofline", "--", "--json"], cwd=ROOT, capture_output=True,
                              text=True, env=rust_env(threads))
        if proc.returncode != 0:
            raise SystemExit(f"the roofline bench failed: {proc.stderr.strip()[-400:]}")
        text = proc.stdout
    else:
        try:
            text = Path(arg).read_text()
        except OSError as e:
            raise SystemExit(f"--roofline {arg}: {e}")
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                roof = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"--roofline {arg}: not the roofline bench's JSON ({e})")
            if "int8_peak_gops" in roof and "f32_peak_gflops" in roof:
                return roof
    raise SystemExit(f"--roofline {arg}: no JSON line with int8_peak_gops and f32_peak_gflops")


def export(enc, video, path):
    try:
        torch.onnx.export(enc, (video,), str(path), input_names=["video"], output_names=["tokens"],
                          opset_version=17, dynamo=False)
    except TypeError:
        torch.onnx.export(enc, (video,), str(path), input_names=["video"], output_names=["tokens"],
                          opset_version=17)


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
