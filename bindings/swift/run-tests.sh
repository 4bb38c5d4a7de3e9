#!/usr/bin/env bash
# Builds the Swift package against the built library and runs its XCTest suite, inside the
# Debian trixie chroot of .ci/install-swift (no Swift 6 for bookworm). Needs
# bindings/generate.sh to have run. Exits non-zero when any test fails.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
lib="$root/target/release"
# The chroot sees the repository, and the model cache where the tests load the model from.
# The chroot has its own HOME, so the default model is fetched on the host (cached, as
# `lamina fetch` does) and named by path.
export LAMINA_CLI=${LAMINA_CLI:-$lib/lamina}
model=${LAMINA_TEST_MODEL:-smollm2}
if [ ! -e "$model" ]; then
  # A name (smollm2, qwen2.5-0.5b, ...): fetched and cached on the host.
  model=$("$LAMINA_CLI" fetch --model "$model")
fi
model=$(realpath -e -- "$model")
export LAMINA_TEST_MODEL="$model"
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$root/.ci/in-swift-root" --bind "$(dirname "$model")" --bind "$root" "$root/bindings/swift" \
  swift test -Xlinker "-L$lib" -Xlinker -rpath -Xlinker "$lib"
