#!/usr/bin/env bash
# Generates the bindings from the built library and runs each language's tests against the
# real default model: `bindings/test.sh` runs Python, Kotlin and Swift; name some to run only
# those (`bindings/test.sh python kotlin`). Kotlin needs .ci/install-kotlin, Swift
# .ci/install-swift (a Debian trixie chroot). Exits non-zero when any language's tests fail.
set -euo pipefail
cd "$(dirname "$0")/.."
languages=("$@")
[ ${#languages[@]} -gt 0 ] || languages=(python kotlin swift)

bash bindings/generate.sh
# The FFI crate's own tests: which error each bad input becomes at the boundary.
cargo test --release -p lamina-ffi
# The command line the tests compare generation with, and the default model, fetched once.
cargo build --release --bin lamina
target/release/lamina fetch >/dev/null

failed=()
for lang in "${languages[@]}"; do
  echo "== bindings: $lang"
  start=$SECONDS
  if bash "bindings/$lang/run-tests.sh"; then
    echo "== bindings: $lang passed in $((SECONDS - start)) s"
  else
    echo "== bindings: $lang FAILED" >&2
    failed+=("$lang")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "bindings tests failed: ${failed[*]}" >&2
  exit 1
fi
echo "bindings tests passed: ${languages[*]}"
