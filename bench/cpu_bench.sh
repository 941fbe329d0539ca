#!/bin/sh
# cnnrt against the frameworks a user would otherwise pick, on this machine's CPU (issue 4).
#
# The harness is `cnnrt bench` (cnnrt/bench/, peers in cnnrt/peers/); this script is the exact run
# behind the cpu-bench section of docs/benchmarks.md, so anyone can redo it:
#
#   make bench              # installs cnnrt[bench] (TensorFlow, ONNX Runtime, PyTorch 2.13.0 CPU,
#                           # matplotlib) into .venv, then runs the same command as below
#   sh bench/cpu_bench.sh   # the run alone, with whatever peers are installed
#
# Default run: 5,000 and 10,000 MNIST test images, 5 rounds, batch size chosen per runtime from
# 50,100,250,500,1000, 50 single-image calls per round, 3 fresh processes per runtime for the import
# and first-call times. Several minutes on 2 cores; `--quick` for a short try. Peers that are not
# installed are skipped with a note. Extra arguments are passed on (e.g. --peers onnxruntime,torch).
set -e
cd "$(dirname "$0")/.."
CNNRT="${CNNRT:-.venv/bin/cnnrt}"
[ -x "$CNNRT" ] || CNNRT="${PYTHON:-.venv/bin/python} -m cnnrt"
exec $CNNRT bench --chart docs/bench_cpu.png --json-out docs/bench_cpu.json --doc docs/benchmarks.md "$@"
