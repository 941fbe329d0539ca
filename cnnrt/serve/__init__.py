"""`cnnrt serve`: the Open Inference Protocol (KServe v2) over HTTP, a draw-a-digit page, dynamic batching.

This package's __init__ stays empty on purpose: `cnnrt --help` imports `cnnrt.serve.cli`, and
Starlette, uvicorn and Pillow (the `serve` extra) are imported only when a server is built.
"""
