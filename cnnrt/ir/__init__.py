"""The graph IR, the centre of cnnrt: ops (ops.py), graphs (graph.py), rewrites (passes.py),
and the bridge to the classic layer chain (chain.py)."""
from .graph import Graph, Node, run_reference  # noqa: F401
from .ops import OPS  # noqa: F401
