"""Summary of a bench/gpu-check.sh run: summary.json (stage exits, test counts per executable, every benchmark record)
and results.md (native vs PyTorch per op and precision, with the issue's targets), both in the output dir.

Usage: python3 bench/gpu_check_summary.py OUT_DIR ARCHS SECONDS DRY STAGE=EXIT...

Inputs in OUT_DIR: ctest.log (ctest -V), nvidia-smi.log, bench_kernels.log (text), and JSON lines in
bench_sample.log, bench_model.log (native) and torch.log (PyTorch). Native records name the op in "op" or "bench"
and their peak memory in "peak_mem_bytes" or "peak_gib"; both are accepted.
"""

import datetime
import hashlib
import json
import os
import re
import subprocess
import sys

GIB = 2 ** 30
# The targets: speed-up over PyTorch eager in the same run (DPO step: bf16), and peak memory <= 1/4 (its
# anchor table gives peak memory for the DPO step only; the other ops' ratios are shown, without a target).
TARGETS = {"sample": 20.0, "logprobs": 2.0, "dpo_step": 2.5}
MEMORY_TARGET = 0.25


def read(path):
    return open(path, errors="replace").read() if os.path.exists(path) else ""


def json_lines(path):
    recs = []
    for line in read(path).splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return recs


def source_digest(root):
    """sha256 (first 16 hex digits) of the native sources and CMakeLists.txt, by path and content: matches a GPU
    result to the code it ran whatever git metadata travelled with the tree (`gpu_check_summary.py --digest` prints
    it for the working tree here)."""
    h = hashlib.sha256()
    paths = [os.path.join(root, "CMakeLists.txt")]
    for base, dirs, files in os.walk(os.path.join(root, "native")):
        dirs.sort()
        paths += [os.path.join(base, f) for f in sorted(files)]
    for p in paths:
        if os.path.isfile(p):
            h.update(os.path.relpath(p, root).encode() + b"\0")
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()[:16]


def ctest_counts(text):
    """Per test executable: the "ok"/"FAIL"/"SKIPPED: no CUDA device" case lines, as scripts/test.mjs counts them,
    and the notes a case prints, indented, when it skips part of its checks (e.g. early launches below sm_90)."""
    tests, names, notes = {}, {}, {}
    blank = {"ok": 0, "fail": 0, "skipped": 0, "summary": None}
    for line in text.splitlines():
        m = re.match(r"^(\d+):\s{2,}(SKIPPED\b.*?)\s*$", line)
        if m:
            notes.setdefault(m.group(1), []).append(m.group(2))
        m = re.match(r"^(\d+): (ok  |FAIL|SKIPPED)(: no CUDA device \S)?", line)
        if m and m.group(2) == "SKIPPED" and not m.group(3):
            m = None  # the "SKIPPED: N cases" note, not a case
        if m:
            t = tests.setdefault(m.group(1), dict(blank))
            t[{"ok  ": "ok", "FAIL": "fail", "SKIPPED": "skipped"}[m.group(2)]] += 1
        m = re.match(r"^(\d+): (\d+) cases, (\d+) failed\s*$", line)
        if m:
            tests.setdefault(m.group(1), dict(blank))["summary"] = [int(m.group(2)), int(m.group(3))]
        m = re.match(r"^\s*\d+/\d+ Test\s+#(\d+): (\S+) \.*\s*(.*?)\s+[\d.]+ sec\s*$", line)
        if m:
            names[m.group(1)] = (m.group(2), m.group(3))
    execs = []
    for n, (name, status) in sorted(names.items(), key=lambda kv: int(kv[0])):
        t = tests.get(n, blank)
        execs.append({"name": name, "status": status, "passed": t["ok"], "failed": t["fail"],
                      "skipped": t["skipped"], "summary": t["summary"], "partial_skips": notes.get(n, [])})
    return execs


# Native logs and the variant each measures (None: the defaults). bench_model_prefetch.log: bench_cuda_model again
# with OPTUNE_CUDA_ATTN_PREFETCH=1 (gpu-check.sh with OPTUNE_GPU_AB=1).
NATIVE_LOGS = (("bench_sample.log", None), ("bench_model.log", None), ("bench_model_prefetch.log", "attn prefetch"),
               ("bench_model_tf32.log", "TF32 matmuls"), ("bench_sample_tf32.log", "TF32 matmuls"))


# bench_cuda_sample's op names for its variant rows (summary and results.md list them beside "sample").
# The filtered rows' PyTorch peer is its unfiltered generate (their ratio shows what filtering costs optune).
SAMPLE_VARIANTS = {"sample_no_pdl": "no early launches", "sample_cublas": "cuBLAS GEMMs", "sample_own": "own GEMM",
                   "sample_own_unsplit": "own GEMM unsplit",
                   "sample_top_p": "top-p 0.9 sorted, peer unfiltered",
                   "sample_top_k": "top-k 50 sorted, peer unfiltered"}


def native_records(out):
    recs = []
    for log, variant in NATIVE_LOGS:
        for r in json_lines(os.path.join(out, log)):
            op, var = r.get("op") or r.get("bench"), variant
            if op in SAMPLE_VARIANTS:  # bench_cuda_sample's later rows: the same op, other decode-step settings
                op, var = "sample", SAMPLE_VARIANTS[op]
            if op and "tok_per_s" in r:
                peak = r.get("peak_mem_bytes")
                if peak is None and r.get("peak_gib") is not None:
                    peak = r["peak_gib"] * GIB
                recs.append({"op": op, "variant": var, "precision": r.get("precision"),
                             "tok_per_s": r["tok_per_s"], "peak_mem_bytes": peak, "source": log, "record": r})
    return recs


def fmt_rate(x):
    if x is None:
        return "-"
    return f"{x / 1000:.1f}k" if x < 1e6 else f"{x / 1e6:.2f}M"


def fmt_gib(b):
    return "-" if not b else f"{b / GIB:.2f}"


def ratio(a, b):
    return a / b if a and b else None


def table(native, torch_recs):
    eager = {(r["op"], r["precision"]): r for r in torch_recs if r.get("impl") == "torch-eager" and "tok_per_s" in r}
    comp = {(r["op"], r["precision"]): r for r in torch_recs if r.get("impl") == "torch-compile" and "tok_per_s" in r}
    rows = []
    for n in native:
        key = (n["op"], n["precision"])
        e, c = eager.get(key), comp.get(key)
        target = TARGETS.get(n["op"])
        if n["op"] == "dpo_step" and n["precision"] != "bf16":
            target = None  # the DPO target is stated for bf16
        x_eager = ratio(n["tok_per_s"], e and e["tok_per_s"])
        mem = ratio(n["peak_mem_bytes"], e and e.get("peak_mem_bytes"))
        rows.append({
            "op": n["op"] + (f" ({n['variant']})" if n.get("variant") else ""), "precision": n["precision"],
            "native_tok_per_s": n["tok_per_s"],
            "torch_eager_tok_per_s": e and e["tok_per_s"], "speedup_vs_eager": x_eager, "target": target,
            "target_met": None if x_eager is None or target is None else x_eager >= target,
            "torch_compiled_tok_per_s": c and c["tok_per_s"],
            "speedup_vs_compiled": ratio(n["tok_per_s"], c and c["tok_per_s"]),
            "native_peak_mem_bytes": n["peak_mem_bytes"], "torch_eager_peak_mem_bytes": e and e.get("peak_mem_bytes"),
            "memory_ratio": mem,
            "memory_target_met": None if mem is None or n["op"] != "dpo_step" else mem <= MEMORY_TARGET,
        })
    return rows


def variant_ranking(comparison):
    """bf16 sampling rows (the default and each knob's variant), fastest first, against the default: which knobs
    to make the default next (filtered draws do other work, so they are listed apart by their label)."""
    rows = [r for r in comparison if r["op"].startswith("sample") and r["precision"] == "bf16"]
    base = next((r["native_tok_per_s"] for r in rows if r["op"] == "sample"), None)
    if not base or len(rows) < 2:
        return []
    out = ["", "bf16 sampling, fastest first (x default: against the `sample` row of this run):", "",
           "| variant | optune tok/s | x default |", "|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["native_tok_per_s"]):
        out.append(f"| {r['op']} | {fmt_rate(r['native_tok_per_s'])} | {r['native_tok_per_s'] / base:.3f}x |")
    return out


def markdown(summary):
    gpu = summary["gpu"] or "no GPU"
    lines = [f"GPU check on **{gpu}** ({summary['date']}, commit {summary['commit']}, sources {summary.get('source_digest', '?')}, archs {summary['archs']}, "
             f"{summary['seconds']} s{', DRY RUN' if summary['dry_run'] else ''}). "
             f"Tests: {summary['passed']} passed, {summary['failed']} failed, {summary['skipped']} skipped.", ""]
    t = summary.get("torch_versions") or {}
    if t:
        lines += [f"PyTorch {t.get('torch')} + transformers {t.get('transformers')} in the same run "
                  f"(eager fp32 with TF32 matmuls, as the anchors; bf16 = autocast).", ""]
    lines += ["| op | precision | optune tok/s | PyTorch eager tok/s | x eager (target) | PyTorch compiled tok/s | "
              "x compiled | optune peak GiB | PyTorch eager peak GiB | memory ratio (DPO step target <= 0.25) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in summary["comparison"]:
        x = "-" if r["speedup_vs_eager"] is None else f"{r['speedup_vs_eager']:.2f}x"
        if r["target"] is not None:
            met = "" if r["target_met"] is None else (" met" if r["target_met"] else " not met")
            x += f" (>= {r['target']:g}x{met})"
        xc = "-" if r["speedup_vs_compiled"] is None else f"{r['speedup_vs_compiled']:.2f}x"
        mem = "-" if r["memory_ratio"] is None else f"{r['memory_ratio']:.2f}"
        if r["memory_target_met"] is not None:
            mem += " met" if r["memory_target_met"] else " not met"
        lines.append(f"| {r['op']} | {r['precision']} | {fmt_rate(r['native_tok_per_s'])} | "
                     f"{fmt_rate(r['torch_eager_tok_per_s'])} | {x} | {fmt_rate(r['torch_compiled_tok_per_s'])} | "
                     f"{xc} | {fmt_gib(r['native_peak_mem_bytes'])} | {fmt_gib(r['torch_eager_peak_mem_bytes'])} | "
                     f"{mem} |")
    if not summary["comparison"]:
        lines.append("| (no native benchmark records) | | | | | | | | | |")
    lines += variant_ranking(summary["comparison"])
    partial = [f"{e['name']}: {note}" for e in summary.get("executables", []) for note in e.get("partial_skips", [])]
    if partial:
        lines += ["", "Checks skipped inside passing cases (this GPU or build cannot run them):", ""]
        lines += [f"- {p}" for p in partial]
    errors = [r for r in summary["torch"] if "error" in r]
    if errors:
        lines += ["", "PyTorch measurements that failed: " +
                  "; ".join(f"{r.get('impl')} {r.get('op')} {r.get('precision')}: {r['error'][:120]}" for r in errors)]
    unavailable = [r["unavailable"] for r in summary["torch"] if "unavailable" in r]
    if unavailable:
        lines += ["", f"PyTorch unavailable: {unavailable[0]}"]
    skipped = [s for s in ("bench_kernels", "bench_sample", "bench_model") if summary["bench_notes"].get(s)]
    if skipped:
        lines += ["", "Native benchmarks that did not measure: " +
                  "; ".join(f"{s}: {summary['bench_notes'][s]}" for s in skipped)]
    return "\n".join(lines) + "\n"


def main():
    if sys.argv[1:] == ["--digest"]:
        print(source_digest(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        return
    out, archs, secs, dry = sys.argv[1:5]
    exits = {k: int(v) for k, v in (a.split("=", 1) for a in sys.argv[5:])}
    execs = ctest_counts(read(os.path.join(out, "ctest.log")))
    smi = read(os.path.join(out, "nvidia-smi.log")).splitlines()
    torch_recs = json_lines(os.path.join(out, "torch.log"))
    native = native_records(out)
    gpu = next((r.get("device") for r in native if r["record"].get("device")), None)
    versions = next((r for r in torch_recs if "torch" in r), None)
    if not gpu and versions and versions.get("gpu"):
        gpu = versions["gpu"]
    notes = {}
    for b in ("bench_kernels", "bench_sample", "bench_model"):
        text = read(os.path.join(out, b + ".log"))
        m = re.search(r"SKIPPED[^\n]*|\"(skipped|error)\"\s*:\s*\"([^\"]*)\"|bench_cuda_\w+: [^\n]*", text)
        if m or not text:
            notes[b] = "no output" if not m else f"{m.group(1)}: {m.group(2)}" if m.group(1) else m.group(0)
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=here).stdout.strip() or "unknown"
        # a copied working tree can carry an older HEAD than its files (seen with the device tool): say so
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "native", "CMakeLists.txt"],
                               cwd=here).returncode != 0
        if dirty and commit != "unknown":
            commit += "+changes"
    except OSError:
        commit = "unknown"
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "source_digest": source_digest(os.path.dirname(here)),
        "dry_run": dry == "1",
        "gpu": gpu,
        "archs": archs,
        "seconds": int(secs),
        "exit": exits,
        "passed": sum(e["passed"] for e in execs),
        "failed": sum(e["failed"] for e in execs) + sum(1 for e in execs if e["status"] != "Passed"),
        "skipped": sum(e["skipped"] for e in execs),
        "executables": execs,
        "native": [r["record"] | {"source": r["source"]} for r in native],
        "torch": torch_recs,
        "torch_versions": versions,
        "comparison": table(native, torch_recs),
        "bench_notes": notes,
        "nvidia_smi": smi[:12],
    }
    json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
    open(os.path.join(out, "results.md"), "w").write(markdown(summary))
    print(json.dumps({k: summary[k] for k in ("gpu", "archs", "seconds", "exit", "passed", "failed", "skipped")}))
    for r in summary["comparison"]:
        print(f"  {r['op']} {r['precision']}: optune {fmt_rate(r['native_tok_per_s'])} tok/s, "
              f"x eager {r['speedup_vs_eager'] and round(r['speedup_vs_eager'], 2)}, "
              f"memory ratio {r['memory_ratio'] and round(r['memory_ratio'], 3)}")


if __name__ == "__main__":
    main()
