"""`make sanitize-gpu`: compute-sanitizer's memcheck, initcheck, racecheck and synccheck over our
kernels (dev/cuda/sanitize_workload.py), the four tools in parallel, each in its own process.

Nothing is excluded up front: every report is attributed to a kernel by name. A report that names
one of our kernels (the workload lists them: every generated kernel and the Deep MNIST pattern's)
counts against us; one that names another kernel is the vendor's (cuBLAS, CuPy's fill/copy
kernels), is not counted, and its kernel is listed; one that names no kernel counts against us.
Writes, under --out: sanitize_<tool>.log (the tool's whole output), sanitize.json (the summary)
and prints one summary line per tool. Exit status 0 only if every tool ran to the end of the
workload with 0 reports in our kernels; 2 if compute-sanitizer is not found (it says where it looked).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TOOLS = ("memcheck", "initcheck", "racecheck", "synccheck")
INFO = re.compile(r"^(COMPUTE-SANITIZER|ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|Target application|"
                  r"Saved host backtrace|No hazard|Note:|This tool)", re.I)

ERRORISH = re.compile(r"error|invalid|uninitiali[sz]ed|race|barrier|hazard|fault|violation|illegal|misaligned|"
                      r"out of|out-of|leak|diverg|abort|fail", re.I)


def candidates() -> list[str]:
    out = [os.environ.get("CNNRT_SANITIZER", ""), shutil.which("compute-sanitizer") or "",
           "/usr/local/cuda/bin/compute-sanitizer", "/usr/local/cuda/compute-sanitizer/compute-sanitizer"]
    out += sorted(glob.glob("/usr/local/cuda-*/bin/compute-sanitizer"))
    out += sorted(glob.glob("/opt/nvidia/*/compute-sanitizer*/compute-sanitizer"))
    roots = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    for root in roots:
        out += sorted(glob.glob(os.path.join(root, "nvidia", "*", "compute-sanitizer", "compute-sanitizer")))
        out += sorted(glob.glob(os.path.join(root, "nvidia", "*", "bin", "compute-sanitizer")))
        out += sorted(glob.glob(os.path.join(root, "nvidia", "cu*", "*", "compute-sanitizer")))
        out += sorted(glob.glob(os.path.join(root, "nvidia", "**", "compute-sanitizer"), recursive=True))
    return [p for p in out if p]


PATTERNS = ["$CNNRT_SANITIZER", "compute-sanitizer on PATH", "/usr/local/cuda*/bin/compute-sanitizer",
            "/opt/nvidia/*/compute-sanitizer*/compute-sanitizer",
            "<site-packages>/nvidia/**/compute-sanitizer (pip nvidia-cuda-sanitizer-api-cu12 or -cu13)"]


def find() -> tuple[str | None, list[str]]:
    looked = candidates()
    for p in looked:
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p, looked
    return None, looked


def records(text: str) -> list[str]:
    """The sanitizer's reports: a '========= ' line that is not indented, with its indented lines."""
    recs, cur = [], None
    for line in text.splitlines():
        if not line.startswith("========="):
            continue
        body = line[len("========="):]
        if body.startswith("     ") or body.startswith("\t"):
            if cur is not None:
                cur.append(body.strip())
            continue
        body = body.strip()
        if not body:
            continue
        cur = [body]
        recs.append(cur)
    return ["\n".join(r) for r in recs]


def kernel_of(rec: str) -> str | None:
    """The kernel a report names: 'at NAME+0x1a0' (NAME may be a demangled C++ signature), or the
    older 'at 0x1a0 in NAME'."""
    for line in rec.splitlines():
        m = re.search(r"\bat (?:0x[0-9a-f]+ in )?(.+?)\+0x[0-9a-f]+", line)
        if m:
            return m.group(1).strip()
        m = re.search(r"\bat 0x[0-9a-f]+ in (.+)$", line)
        if m:
            return m.group(1).strip()
    return None


def classify(text: str, ours: set) -> dict:
    mine, vendor, unnamed, notes = [], {}, [], []
    for rec in records(text):
        head = rec.split("\n", 1)[0]
        if INFO.match(head):
            continue
        if any(k in rec for k in ours):
            mine.append(rec)
            continue
        k = kernel_of(rec)
        if k is not None:
            vendor[k] = vendor.get(k, 0) + 1
        elif ERRORISH.search(rec):
            unnamed.append(rec)
        else:
            notes.append(rec)
    total = None
    m = re.search(r"ERROR SUMMARY: (\d+) error", text)
    if m:
        total = int(m.group(1))
    m2 = re.search(r"RACECHECK SUMMARY: (\d+) hazard", text)
    printed = len(mine) + sum(vendor.values()) + len(unnamed)
    return {"ours": len(mine), "ours_examples": mine[:5], "vendor_kernels": vendor, "unnamed": len(unnamed),
            "unnamed_examples": unnamed[:5], "notes": notes[:20], "error_summary": total,
            "racecheck_hazards": int(m2.group(1)) if m2 else None, "printed": printed}


def run_tool(exe: str, tool: str, args, help_text: str) -> dict:
    names = os.path.join(args.out, f"sanitize_{tool}_kernels.json")
    log = os.path.join(args.out, f"sanitize_{tool}.log")
    cmd = [exe, "--tool", tool, "--print-limit", str(args.print_limit)]
    if "--report-api-errors" in help_text:
        cmd += ["--report-api-errors", "no"]  # CuPy and cuBLAS probe the driver; we judge kernels only
    if tool == "memcheck" and "--leak-check" in help_text:
        cmd += ["--leak-check", "no"]
    batches = args.race_batches if tool == "racecheck" else args.batches
    cmd += [sys.executable, os.path.join(HERE, "sanitize_workload.py"), names, "--batches", batches,
            "--fused-batches", args.fused_batches]
    t0 = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    timed_out = False
    # own process group: on a timeout the sanitizer and the Python it watches are both killed
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                         start_new_session=True)
    try:
        text, _ = p.communicate(timeout=args.timeout)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        text, _ = p.communicate()
        rc, timed_out = None, True
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n\n" + text)
    try:
        with open(names) as f:
            wl = json.load(f)
    except (OSError, ValueError):
        wl = {"kernels": [], "runs": [], "done": False}
    res = classify(text, set(wl["kernels"]))
    res.update(tool=tool, seconds=round(time.perf_counter() - t0, 1), exit_status=rc, timed_out=timed_out,
               workload_done=bool(wl.get("done")), runs=[r["run"] for r in wl["runs"]], log=log,
               command=" ".join(cmd))
    # unprinted reports (past --print-limit) cannot be attributed: they count against us
    unattributed = max(0, (res["error_summary"] or 0) - res["printed"]) if tool != "racecheck" else 0
    res["unattributed"] = unattributed
    res["ok"] = (not timed_out and rc == 0 and res["workload_done"] and res["ours"] == 0 and res["unnamed"] == 0
                 and unattributed == 0)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per tool")
    ap.add_argument("--batches", default="1,7,300")
    ap.add_argument("--race-batches", default="1,7",
                    help="generic-plan batch sizes for racecheck, which runs each kernel 100x slower or more "
                         "(shared-memory hazards do not depend on the batch size: every block runs the same code)")
    ap.add_argument("--fused-batches", default="1,7,300,1100")
    ap.add_argument("--print-limit", type=int, default=2000)
    ap.add_argument("--serial", action="store_true", help="one tool at a time (default: all four in parallel)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    exe, looked = find()
    summary_path = os.path.join(args.out, "sanitize.json")
    if exe is None:
        print("sanitize: compute-sanitizer not found; looked in:\n  " + "\n  ".join(PATTERNS + looked), file=sys.stderr)
        with open(summary_path, "w") as f:
            json.dump({"error": "compute-sanitizer not found", "looked_in": looked}, f, indent=1)
        return 2
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    print(f"sanitize: {exe} ({version[-1] if version else '?'}), tools {args.tools}, batches {args.batches}, "
          f"fused {args.fused_batches}", flush=True)
    tools = [t for t in args.tools.split(",") if t]
    with ThreadPoolExecutor(max_workers=1 if args.serial else len(tools)) as ex:
        results = list(ex.map(lambda t: run_tool(exe, t, args, help_text), tools))
    vendor_all: dict = {}
    for r in results:
        for k, v in r["vendor_kernels"].items():
            vendor_all[k] = vendor_all.get(k, 0) + v
        state = "OK" if r["ok"] else "FAIL"
        why = []
        if r["timed_out"]:
            why.append(f"timed out after {args.timeout:.0f} s")
        elif r["exit_status"] != 0:
            why.append(f"exit status {r['exit_status']}")
        if not r["workload_done"]:
            why.append(f"workload stopped after {len(r['runs'])} runs")
        print(f"sanitize {r['tool']:<9} {state}: {r['ours']} reports in our kernels, {r['unnamed']} naming no kernel, "
              f"{r['unattributed']} unattributed, {sum(r['vendor_kernels'].values())} in vendor kernels "
              f"({len(r['vendor_kernels'])} kernels), summary {r['error_summary']}, {r['seconds']} s"
              + (f" [{'; '.join(why)}]" if why else ""), flush=True)
        for ex_ in r["ours_examples"][:2] + r["unnamed_examples"][:2]:
            print("    " + ex_.replace("\n", "\n    "))
    if vendor_all:
        print("vendor kernels excluded by name (reports not counted): " +
              ", ".join(f"{k} ({v})" for k, v in sorted(vendor_all.items())))
    summary = {"sanitizer": exe, "version": version, "tools": results, "vendor_kernels": vendor_all,
               "ok": all(r["ok"] for r in results), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp = summary_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, summary_path)
    print(f"sanitize: {'all clean' if summary['ok'] else 'FAILED'}; summary in {summary_path}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
