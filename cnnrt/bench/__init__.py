"""`cnnrt bench`: cnnrt side by side with the runtimes a user would otherwise pick.

Nothing is imported here on purpose: `python -m cnnrt.bench.cold` runs in a fresh process to time
a framework's import, and must not have loaded NumPy (or anything else) before it does.

  stats    median and spread of timing samples, ratios
  system   the machine: CPU, matrix-product rate (the floor), installed sizes, fresh-process timings
  harness  the timing loop: warm-up, best batch size, rounds that alternate between runtimes
  report   terminal table, JSON, Markdown, PNG chart
"""
