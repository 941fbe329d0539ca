"""Run ONNX's conformance tests through cnnrt and write docs/onnx-conformance.{json,md} from the results.

    python benchmarks/onnx_conformance.py            # runs tests/test_onnx_conformance.py under pytest

The JSON holds every selected test with its outcome (and a skip's reason); the Markdown page is
written from the JSON only.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CATEGORY = {"OnnxBackendNodeModelTest": "node", "OnnxBackendRealModelTest": "real model",
            "OnnxBackendPyTorchConvertedModelTest": "PyTorch-converted", "OnnxBackendPyTorchOperatorModelTest":
            "PyTorch-operator", "OnnxBackendSimpleModelTest": "simple model"}


def run_tests() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "-p", "no:cacheprovider",
               f"--junitxml={xml}", str(ROOT / "tests" / "test_onnx_conformance.py")]
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        t0 = dt.datetime.now(dt.timezone.utc)
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        secs = (dt.datetime.now(dt.timezone.utc) - t0).total_seconds()
        tests = []
        for tc in ET.parse(xml).getroot().iter("testcase"):
            cls = tc.get("classname", "").rsplit(".", 1)[-1]
            name = tc.get("name")
            sk, fl = tc.find("skipped"), tc.find("failure") or tc.find("error")
            if fl is None:
                fl = tc.find("error")
            outcome = "skipped" if sk is not None else "failed" if fl is not None else "passed"
            rec = {"category": CATEGORY.get(cls, cls), "test": name.removesuffix("_cpu"), "outcome": outcome}
            if sk is not None:
                rec["reason"] = sk.get("message", "").removeprefix("unittest.case.SkipTest: ")
            if fl is not None:
                rec["message"] = (fl.get("message") or "")[:300]
            tests.append(rec)
    import numpy  # noqa: PLC0415
    import onnx  # noqa: PLC0415
    return {"command": "python benchmarks/onnx_conformance.py", "pytest_exit": proc.returncode,
            "date": t0.strftime("%Y-%m-%d %H:%M UTC"), "seconds": round(secs, 1),
            "onnx": onnx.__version__, "newest_opset": onnx.defs.onnx_opset_version(), "numpy": numpy.__version__,
            "python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "runner": "the NumPy backend's cnnrt.backends.numpy_graph.GraphRunner, float32", "tests": tests}


def markdown(res: dict) -> str:
    tests = res["tests"]
    count = defaultdict(lambda: defaultdict(int))
    for t in tests:
        count[t["category"]][t["outcome"]] += 1
    tot = defaultdict(int)
    for t in tests:
        tot[t["outcome"]] += 1
    lines = ["# ONNX conformance", "",
             f"ONNX's own backend tests (`onnx.backend.test`, onnx {res['onnx']}, opsets up to {res['newest_opset']}) "
             f"run through cnnrt: `from_onnx` imports each model, cnnrt runs it ({res['runner']}), and the outputs "
             "are compared with the ones the onnx wheel ships, at the tolerances it sets. Node tests are selected for "
             "the ops of cnnrt's IR; the wheel's real-model, PyTorch-exported and simple models all run. What is "
             "skipped is out of scope, with the reason given in `tests/test_onnx_conformance.py`.", "",
             f"**{tot['passed']} passed, {tot['skipped']} skipped, {tot['failed']} failed** "
             f"(generated {res['date']} by `{res['command']}` in {res['seconds']} s; Python {res['python']}, "
             f"NumPy {res['numpy']}, {res['machine']}). Raw results: `docs/onnx-conformance.json`.", "",
             "| tests | passed | skipped | failed |", "| --- | ---: | ---: | ---: |"]
    for cat in ["node", "real model", "PyTorch-converted", "PyTorch-operator", "simple model"]:
        if cat in count:
            c = count[cat]
            lines.append(f"| {cat} | {c['passed']} | {c['skipped']} | {c['failed']} |")
    real = [t["test"] for t in tests if t["category"] == "real model" and t["outcome"] == "passed"]
    lines += ["", f"Real models passed: {', '.join(sorted(real))}.", "", "## Skipped, by reason", ""]
    by = defaultdict(list)
    for t in tests:
        if t["outcome"] == "skipped":
            by[t["reason"]].append(t["test"])
    for why, names in sorted(by.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"- **{why}** ({len(names)}): {', '.join(sorted(names))}")
    failed = [t for t in tests if t["outcome"] == "failed"]
    if failed:
        lines += ["", "## Failed", ""] + [f"- {t['test']}: {t.get('message', '')}" for t in failed]
    passed = defaultdict(list)
    for t in tests:
        if t["outcome"] == "passed" and t["category"] == "node":
            passed[t["test"].removeprefix("test_").split("_")[0]].append(t["test"])
    lines += ["", "## Node tests passed, by name prefix", ""]
    lines += [f"- {k} ({len(v)})" for k, v in sorted(passed.items())]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=str(ROOT / "docs" / "onnx-conformance.json"))
    ap.add_argument("--md", default=str(ROOT / "docs" / "onnx-conformance.md"))
    ap.add_argument("--from-json", action="store_true", help="only rewrite the Markdown from the existing JSON")
    a = ap.parse_args()
    if a.from_json:
        res = json.loads(Path(a.json).read_text())
    else:
        res = run_tests()
        _write(Path(a.json), json.dumps(res, indent=1) + "\n")
    _write(Path(a.md), markdown(res))
    tot = defaultdict(int)
    for t in res["tests"]:
        tot[t["outcome"]] += 1
    print(f"{tot['passed']} passed, {tot['skipped']} skipped, {tot['failed']} failed -> {a.md}")
    return 1 if tot["failed"] or res["pytest_exit"] not in (0,) else 0


def _write(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
