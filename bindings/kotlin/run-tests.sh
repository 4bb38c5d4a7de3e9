#!/usr/bin/env bash
# Compiles the generated Kotlin bindings with the JUnit 5 tests and runs them against the
# built library. Needs bindings/generate.sh to have run, and the tools of .ci/install-kotlin
# (kotlinc 2.4, JNA, JUnit 5's console launcher). Exits non-zero when any test fails.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
tools=${LAMINA_TOOLS:-$HOME/.cache/lamina-tools}
# shellcheck disable=SC1091
source "$tools/kotlin.env"

rm -rf build && mkdir -p build/classes
"$KOTLINC" -nowarn -d build/classes \
  -cp "$JNA_JAR:$JUNIT_CONSOLE_JAR:$KOTLIN_LIB/kotlin-test.jar" \
  generated/dev/lamina/lamina.kt src/test/kotlin/dev/lamina/LaminaTest.kt
export LAMINA_CLI=${LAMINA_CLI:-$root/target/release/lamina}
java -Djna.library.path="$root/target/release" \
  -cp "build/classes:$JNA_JAR:$JUNIT_CONSOLE_JAR:$KOTLIN_LIB/kotlin-stdlib.jar:$KOTLIN_LIB/kotlin-test.jar" \
  org.junit.platform.console.ConsoleLauncher --disable-banner --disable-ansi-colors \
  --fail-if-no-tests --details=tree --select-class dev.lamina.LaminaTest
