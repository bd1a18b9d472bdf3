import Foundation
import XCTest

/// Checkpoints written by `causal train` load in Hugging Face transformers and give CausalLM's loss (LLaMA: to 1e-4
/// relative over the response tokens; T5: step-1 loss, grad norm, after-step loss and the reloaded checkpoint, each
/// to 1e-4). These run the scripts Tests/run-transformers-*-test.sh with the `causal` under test when a Python that
/// imports torch, transformers and safetensors is at hand (CAUSAL_TORCH_VENV, default .venv-train in the package
/// root: `Tests/run-transformers-checkpoint-test.sh` and `.ci/run` install one with pip); otherwise they are skipped
/// and say why. With CAUSAL_REQUIRE_TORCH=1 (set by `.ci/run` once its install worked) a missing or broken
/// environment fails instead of skipping, so CI cannot pass them without running them.
final class TransformersCheckpointTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    struct Unavailable: Error, CustomStringConvertible { let reason: String; var description: String { reason } }

    /// Skips with the reason, or fails with it (a thrown error fails the test) when CAUSAL_REQUIRE_TORCH=1.
    func unavailable(_ reason: String) -> Error {
        if ProcessInfo.processInfo.environment["CAUSAL_REQUIRE_TORCH"] == "1" {
            return Unavailable(reason: "CAUSAL_REQUIRE_TORCH=1 but \(reason)")
        }
        return XCTSkip(reason)
    }

    func venv() throws -> String {
        let env = ProcessInfo.processInfo.environment
        let venv = env["CAUSAL_TORCH_VENV"] ?? Self.root.appendingPathComponent(".venv-train").path
        let python = venv + "/bin/python"
        guard FileManager.default.isExecutableFile(atPath: python) else {
            throw unavailable("no \(python): run Tests/run-transformers-checkpoint-test.sh once to install torch + transformers there")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = ["-c", "import torch, transformers, safetensors"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw unavailable("\(python) cannot import torch, transformers and safetensors") }
        return venv
    }

    func runScript(_ name: String) throws {
        let venv = try venv()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = [Self.root.appendingPathComponent("Tests/\(name)").path]
        var env = ProcessInfo.processInfo.environment
        env["CAUSAL"] = CLITests.productsDirectory.appendingPathComponent("causal").path
        env["CAUSAL_TORCH_VENV"] = venv
        env["CAUSAL_NO_INSTALL"] = "1"
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        print(text)
        XCTAssertEqual(p.terminationStatus, 0, text)  // the scripts exit non-zero on any difference over 1e-4
    }

    func testLlamaCheckpointGivesTransformersTheSameLoss() throws {
        try runScript("run-transformers-checkpoint-test.sh")
    }

    func testT5CheckpointGivesTransformersTheSameLoss() throws {
        try runScript("run-transformers-t5-checkpoint-test.sh")
    }
}
