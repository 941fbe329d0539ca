# A/B of the CPU path's environment switches on the device host, each variant in a fresh process:
#   bash dev/cpu_ab_env.sh "ARGS for benchmarks/cpu_threads.py" "VAR=a" "VAR=b VAR2=c" ...
# JSON per variant in $OUT (or /tmp). Switches: CNNRT_ALIGN_OFFSET, CNNRT_CONV_PARTS,
# CNNRT_DENSE_BLOCK, CNNRT_SPIN_US (cnnrt/backends/graph_kernels.py, cpu_kernels.py, native.py).
set -u
args=$1; shift
out=${OUT:-/tmp}
for v in "$@"; do
    echo "=== $v"
    env $v PYTHONPATH=. python3 benchmarks/cpu_threads.py $args --json "$out/ab_$(echo "$v" | tr ' =' '__').json" 2>&1 \
        | grep -v "^    native\|^    numpy\|(python)"
done
