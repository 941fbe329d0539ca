"""Writers of other formats from a cnnrt graph (each imports its framework lazily)."""
