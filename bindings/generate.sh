#!/usr/bin/env bash
# Builds the FFI library (release) and writes the Kotlin, Swift and Python sources from the
# metadata uniffi keeps in it. Generated sources (ignored by git) go where each language's
# build looks for them: bindings/kotlin/generated, bindings/swift/Sources, bindings/python/lamina;
# never edit them by hand: change bindings/ffi/src/lib.rs and run this again.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p lamina-ffi -p uniffi-bindgen
lib=target/release/liblamina_ffi.so
[ "$(uname -s)" = Darwin ] && lib=target/release/liblamina_ffi.dylib
bindgen=target/release/uniffi-bindgen

rm -rf bindings/kotlin/generated bindings/python/lamina/lamina.py
"$bindgen" generate --library "$lib" --language kotlin --out-dir bindings/kotlin/generated --no-format
swift_out=$(mktemp -d)
"$bindgen" generate --library "$lib" --language swift --out-dir "$swift_out" --no-format
# The SwiftPM layout: the Swift sources in the Lamina target, the C header beside the
# hand-written module map of the LaminaFFI system-library target.
mkdir -p bindings/swift/Sources/Lamina
mv "$swift_out/Lamina.swift" bindings/swift/Sources/Lamina/Lamina.swift
mv "$swift_out/LaminaFFI.h" bindings/swift/Sources/LaminaFFI/LaminaFFI.h
rm -rf "$swift_out"
"$bindgen" generate --library "$lib" --language python --out-dir bindings/python/lamina --no-format
# Python loads the library from the module's folder.
cp "$lib" bindings/python/lamina/
echo "generated: bindings/kotlin/generated bindings/swift/Sources bindings/python/lamina (from $lib)"
