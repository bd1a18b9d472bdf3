// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "CausalLM",
    platforms: [.macOS(.v14)],
    products: [
        .library(name: "CausalLM", targets: ["CausalLM"]),
        .library(name: "CausalKernels", targets: ["CausalKernels"]),
        .executable(name: "causal", targets: ["causal"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
    ],
    targets: [
        // Kernels: innermost SIMD loops in C (per-function target attributes, run-time CPU dispatch),
        // the Swift layer around them (threading, blocking, dispatch) on raw buffers.
        .target(name: "CCausalKernels"),
        .target(name: "CausalKernels", dependencies: ["CCausalKernels"]),

        // Library
        .target(name: "CausalLM", dependencies: ["CausalKernels"]),

        // OpenAI-compatible HTTP server
        .target(
            name: "CausalServer",
            dependencies: [
                "CausalLM",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        // CLI
        .executableTarget(
            name: "causal",
            dependencies: ["CausalLM", "CausalServer", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),

        // Tests
        .testTarget(name: "CausalKernelsTests", dependencies: ["CausalKernels"]),
        .testTarget(
            name: "CausalLMTests", dependencies: ["CausalLM"]
            
        ),
        .testTarget(name: "CausalCLITests", dependencies: ["causal"]),
        .testTarget(
            name: "CausalServerTests",
            dependencies: ["CausalServer", .product(name: "HummingbirdTesting", package: "hummingbird")]
        ),
    ],
    swiftLanguageModes: [.v5]
)
