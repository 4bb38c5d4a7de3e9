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
model=$(realpath "${LAMINA_TEST_MODEL:-$("$LAMINA_CLI" fetch)}")
export LAMINA_TEST_MODEL="$model"
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$root/.ci/in-swift-root" --bind "$(dirname "$model")" "$root" \
  "cd bindings/swift && swift test -Xlinker -L$lib -Xlinker -rpath -Xlinker $lib"
