import Foundation
import XCTest

/// `causal export --merge` and `causal generate --adapter`, end to end, with the PEFT adapters of Tests/Fixtures/lora
/// (written by peft, make_lora_refs.py): the merged directory generates exactly what base + adapter generates, from a
/// Hugging Face directory base (tiny Qwen2, token ids) and a GGUF base (SmolLM2, text through the base's tokenizer).
final class ExportCLITests: XCTestCase {
    func causal(_ args: [String]) throws -> CLITests.Output { try runCausal(args) }

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    func adapter(_ caseName: String) throws -> String {
        let p = Self.fixtures.appendingPathComponent("lora/\(caseName)/adapter_step3").path
        guard FileManager.default.fileExists(atPath: p) else { throw XCTSkip("Tests/Fixtures/lora/\(caseName) has not landed") }
        return p
    }

    func tempDir() -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("export-\(UUID().uuidString)").path
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    /// Token lists of `causal generate --input` (one JSON line per request).
    func tokens(_ r: CLITests.Output) throws -> [[Int]] {
        XCTAssertEqual(r.status, 0, r.stderr)
        return try r.stdout.split(separator: "\n").map {
            let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any], String($0))
            return try XCTUnwrap(o["tokens"] as? [Int], String($0))
        }
    }

    func testMergeHFDirectoryEqualsAdapter() throws {
        let base = Self.fixtures.appendingPathComponent("tiny/qwen2").path
        let lora = try adapter("qwen2")
        let out = tempDir()
        let e = try causal(["export", "--model", base, "--adapter", lora, "--merge", "--out", out])
        XCTAssertEqual(e.status, 0, e.stderr)
        XCTAssertTrue(e.stderr.contains("14 adapted matrices merged"), e.stderr)
        for f in ["config.json", "model.safetensors", "generation_config.json"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/" + f), f)
        }
        let input = out + "-input.jsonl"
        addTeardownBlock { try? FileManager.default.removeItem(atPath: input) }
        try """
        {"input_ids": [5, 17, 99, 3], "max_tokens": 10}
        {"input_ids": [600, 1, 999, 45, 45, 7], "max_tokens": 10}
        """.write(toFile: input, atomically: true, encoding: .utf8)
        let withAdapter = try tokens(causal(["generate", "--model", base, "--adapter", lora, "--input", input, "--precision", "reference"]))
        let merged = try tokens(causal(["generate", "--model", out, "--input", input, "--precision", "reference"]))
        let plain = try tokens(causal(["generate", "--model", base, "--input", input, "--precision", "reference"]))
        XCTAssertEqual(withAdapter.count, 2)
        XCTAssertEqual(merged, withAdapter)
        XCTAssertNotEqual(plain, withAdapter, "the adapter should change the greedy tokens")
    }

    /// A GGUF base: the merged checkpoint takes SmolLM2's tokenizer and chat template (trainer_state.json).
    func testMergeGGUFBaseEqualsAdapter() throws {
        let lora = try adapter("smollm2")
        if !FileManager.default.fileExists(atPath: CLITests.modelPath) {
            let r = try causal(["info"])   // fetches the default model
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        let out = tempDir()
        let e = try causal(["export", "--model", CLITests.modelPath, "--adapter", lora, "--merge", "--out", out])
        XCTAssertEqual(e.status, 0, e.stderr)
        XCTAssertTrue(e.stderr.contains("21 adapted matrices merged"), e.stderr)   // 3 layers × 7 modules
        let prompt = "What is the capital of France?"
        let withAdapter = try causal(["generate", "--model", CLITests.modelPath, "--adapter", lora, "--max-tokens", "12", "--json", prompt])
        let merged = try causal(["generate", "--model", out, "--max-tokens", "12", "--json", prompt])
        XCTAssertEqual(withAdapter.status, 0, withAdapter.stderr)
        XCTAssertEqual(merged.status, 0, merged.stderr)
        XCTAssertEqual(merged.stdout, withAdapter.stdout)
        XCTAssertTrue(withAdapter.stdout.contains("\"prompt_tokens\": 37"), withAdapter.stdout)
    }

    /// --gguf: a merged GGUF file generates what base + adapter generates.
    func testMergeToGGUFEqualsAdapter() throws {
        let lora = try adapter("smollm2")
        if !FileManager.default.fileExists(atPath: CLITests.modelPath) {
            let r = try causal(["info"])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        let dir = tempDir()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let out = dir + "/merged.gguf"
        let e = try causal(["export", "--model", CLITests.modelPath, "--adapter", lora, "--merge", "--gguf", "--out", out])
        XCTAssertEqual(e.status, 0, e.stderr)
        let prompt = "Name three colours."
        let withAdapter = try causal(["generate", "--model", CLITests.modelPath, "--adapter", lora, "--max-tokens", "12", "--json", prompt])
        let merged = try causal(["generate", "--model", out, "--max-tokens", "12", "--json", prompt])
        XCTAssertEqual(withAdapter.status, 0, withAdapter.stderr)
        XCTAssertEqual(merged.status, 0, merged.stderr)
        XCTAssertEqual(merged.stdout, withAdapter.stdout)
        // A Hugging Face directory base has no GGUF to copy.
        let tiny = Self.fixtures.appendingPathComponent("tiny/qwen2").path
        let bad = try causal(["export", "--model", tiny, "--adapter", try adapter("qwen2"), "--merge", "--gguf", "--out", dir + "/x.gguf"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("GGUF base"), bad.stderr)
    }

    /// `causal chat --adapter`: a turn answers what `causal generate --adapter` answers.
    func testChatWithAdapter() throws {
        let lora = try adapter("smollm2")
        if !FileManager.default.fileExists(atPath: CLITests.modelPath) {
            let r = try causal(["info"])
            XCTAssertEqual(r.status, 0, r.stderr)
        }
        let prompt = "Name three colours."
        let gen = try causal(["generate", "--model", CLITests.modelPath, "--adapter", lora, "--max-tokens", "12", prompt])
        let chat = try runCausal(["chat", "--model", CLITests.modelPath, "--adapter", lora, "--max-tokens", "12"], stdin: prompt + "\n/exit\n")
        let plain = try causal(["generate", "--model", CLITests.modelPath, "--max-tokens", "12", prompt])
        XCTAssertEqual(gen.status, 0, gen.stderr)
        XCTAssertEqual(chat.status, 0, chat.stderr)
        XCTAssertEqual(chat.stdout, gen.stdout)
        XCTAssertNotEqual(plain.stdout, gen.stdout, "the adapter should change the answer")
    }

    func testErrors() throws {
        let base = Self.fixtures.appendingPathComponent("tiny/qwen2").path
        let noMerge = try causal(["export", "--model", base, "--adapter", base, "--out", tempDir()])
        XCTAssertNotEqual(noMerge.status, 0)
        XCTAssertTrue(noMerge.stderr.contains("--merge"), noMerge.stderr)
        // Not an adapter directory: the error names the missing file.
        let notAdapter = try causal(["export", "--model", base, "--adapter", base, "--merge", "--out", tempDir()])
        XCTAssertEqual(notAdapter.status, 1)
        XCTAssertTrue(notAdapter.stderr.contains("adapter_config.json"), notAdapter.stderr)
        let gen = try causal(["generate", "--model", base, "--adapter", base + "/missing", "--input", "/dev/null"])
        XCTAssertEqual(gen.status, 1)
        XCTAssertTrue(gen.stderr.contains("missing") && gen.stderr.contains("no such directory"), gen.stderr)
        // An adapter for another model: the shapes differ (SmolLM2's adapter on the tiny Qwen2).
        let wrong = try causal(["export", "--model", base, "--adapter", try adapter("smollm2"), "--merge", "--out", tempDir()])
        XCTAssertEqual(wrong.status, 1)
        XCTAssertTrue(wrong.stderr.contains("layers_to_transform") || wrong.stderr.contains("shape"), wrong.stderr)
    }
}
