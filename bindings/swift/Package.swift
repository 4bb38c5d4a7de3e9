// swift-tools-version:5.9
// Lamina for Swift. Sources/Lamina/Lamina.swift and Sources/LaminaFFI/LaminaFFI.h are written
// by bindings/generate.sh from the Rust library; the library itself (liblamina_ffi) is linked
// from target/release here, or from the XCFramework on Apple platforms (bindings/README.md).
import PackageDescription

let package = Package(
    name: "Lamina",
    products: [.library(name: "Lamina", targets: ["Lamina"])],
    targets: [
        .systemLibrary(name: "LaminaFFI", path: "Sources/LaminaFFI"),
        .target(name: "Lamina", dependencies: ["LaminaFFI"], path: "Sources/Lamina"),
        .testTarget(name: "LaminaTests", dependencies: ["Lamina"], path: "Tests/LaminaTests"),
    ]
)
