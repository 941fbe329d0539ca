"""`cnnrt info --backend X`: which kernel runs each node of a model, without running it.

The CUDA plan is pure Python (cuda_plan.py), so it is printed even where no GPU is present
(planned for an H100's 132 SMs then, and it says so)."""
from __future__ import annotations


def plan_lines(model, backend: str, precision: str | None = None, batch_size: int | None = None) -> list[str]:
    from ..ir.chain import as_graph

    graph = as_graph(model)
    batch = int(batch_size or 1)
    if backend == "cuda":
        from . import cuda
        from .cuda_graph import plan_summary
        from .cuda_plan import Program

        precision = precision or cuda.DEFAULT_PRECISION
        reason = cuda.available()
        nsm = 132
        note = f" (no GPU here: {reason}; planned for 132 SMs)" if reason else ""
        if reason is None:
            import cupy

            nsm = int(cupy.cuda.Device().attributes["MultiProcessorCount"])
        if cuda._match_deep_mnist(graph, precision):
            rows = cuda.deep_mnist_rows(graph)
            summary = plan_summary(rows, precision) + " (the deep_mnist pattern)"
        else:
            rows = Program(graph, precision, nsm).describe(batch)
            summary = plan_summary(rows, precision)
    elif backend == "numpy":
        from .numpy_backend import NumpyRunner
        from .numpy_backend import prepare as numpy_prepare

        precision = precision or "fp32"
        note = ""
        from .chain_engine import ByBatch

        runner = numpy_prepare(graph, precision)  # the runner `cnnrt eval` would get
        rows = runner.describe()  # (two engines: the batches' one)
        if isinstance(runner.large if isinstance(runner, ByBatch) else runner, NumpyRunner):
            summary = f"{len(graph.nodes)} nodes in {len(rows)} fused stages (the layer-chain engine)"
        else:
            native = sum(1 for _, _, k in rows if k.startswith("native."))
            summary = f"{len(rows)} nodes, {native} on compiled kernels"
        if getattr(runner, "engine_choice", None):
            kind = "two engines" if isinstance(runner, ByBatch) else \
                "the planner" if not isinstance(runner, NumpyRunner) else "the staged engine"
            summary += f"; engine: {kind}, {runner.engine_choice}"
        runner.close()
    else:
        from ..errors import CnnrtError

        raise CnnrtError(f"unknown backend {backend!r} (expected numpy or cuda)")
    width = max((len(n) for n, _, _ in rows), default=4)
    out = [f"Plan on {backend}, {precision}, batch {batch}{note}:"]
    out += [f"  {n:<{width}}  {op:<18} {k}" for n, op, k in rows]
    out.append(f"  {summary}")
    return out
