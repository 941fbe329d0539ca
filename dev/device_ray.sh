#!/usr/bin/env bash
# Ray for the device machine, which has no Ray and takes at most 64 MiB of carried files.
#
# Ray's wheel is 79 MB. Its three native binaries are not stripped; stripped, without the Java jar,
# the libraries cnnrt does not use (RLlib, Serve, Tune, Train, LLM) and the dashboard's source map,
# and packed with xz, it is about 26 MB. This script (run here, with network) writes that archive
# and the wheels of Ray's requirements that the device image lacks into .whl/ (ignored by git):
#
#     dev/device_ray.sh            # Python 3.12, the device's
#     dev/device_ray.sh 3.11       # this machine's Python, to try the archive here first
#
# On the device, `make ray-gpu GPU_OUT=$OUT` unpacks it into .whl/site (run(..., carry=[".whl"])).
set -euo pipefail
PYV=${1:-3.12}
RAY_VERSION=${RAY_VERSION:-2.60.0}
TAG=cp${PYV/./}
OUT=.whl
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --only-binary=:all: --no-deps --python-version "$PYV" \
    --platform manylinux2014_x86_64 --dest "$work" "ray==$RAY_VERSION"
mkdir "$work/x"
(cd "$work/x" && python3 -m zipfile -e "$work"/ray-*.whl .)
cd "$work/x"
rm -rf ray/jars ray/rllib ray/llm ray/serve ray/tune ray/train
rm -f ray/dashboard/client/build/static/js/*.map
for f in ray/_raylet.so ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server; do
    strip --strip-unneeded "$f"
done
chmod +x ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server
cd - > /dev/null
tar -C "$work/x" -cJf "$OUT/ray-$RAY_VERSION-$TAG-stripped.tar.xz.part" .
mv "$OUT/ray-$RAY_VERSION-$TAG-stripped.tar.xz.part" "$OUT/ray-$RAY_VERSION-$TAG-stripped.tar.xz"
# Ray's requirements missing from the device image (jsonschema and its own)
python3 -m pip download -q --only-binary=:all: --python-version "$PYV" --platform manylinux2014_x86_64 \
    --dest "$OUT" jsonschema jsonschema-specifications referencing rpds-py attrs
ls -la "$OUT"
