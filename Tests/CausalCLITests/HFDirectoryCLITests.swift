import Foundation
import XCTest

/// `causal` on Hugging Face model directories (the tiny random GPT-2 and LLaMA of Tests/Fixtures/tiny, which have no
/// tokenizer.json): batched `input_ids` requests through the padded entry point reproduce transformers' greedy tokens.
final class HFDirectoryCLITests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    typealias Output = CLITests.Output

    func causal(_ args: [String]) throws -> Output {
        try runCausal(args)
    }

    func refs(_ model: String) throws -> (rows: [[Int]], greedy: [[Int]]) {
        let r = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("tiny/\(model)/refs.json"))) as! [String: Any]
        return (r["rows"] as! [[Int]], r["greedy_single"] as! [[Int]])
    }

    func testGenerateInputIDsFromPaddedBatchReproducesHFGreedy() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-cli-hf-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for model in ["gpt2", "llama"] {
            let (rows, greedy) = try refs(model)
            let input = dir.appendingPathComponent("\(model).jsonl")
            // HF used min_new_tokens=16 (--min-tokens; the first line also says it per line).
            var lines = rows.map { #"{"input_ids": [\#($0.map(String.init).joined(separator: ", "))]}"# }
            lines[0] = #"{"input_ids": [\#(rows[0].map(String.init).joined(separator: ", "))], "min_tokens": 16}"#
            try (lines.joined(separator: "\n") + "\n").write(to: input, atomically: true, encoding: .utf8)
            for padding in ["left", "right", "none"] {
                for precision in ["fast", "reference"] {
                    let r = try causal(["generate", "--model", Self.fixtures.appendingPathComponent("tiny/\(model)").path,
                                        "--input", input.path, "--padding", padding, "--precision", precision,
                                        "--max-tokens", "16", "--min-tokens", "16", "--json"])
                    XCTAssertEqual(r.status, 0, r.stderr)
                    let out = r.stdout.split(separator: "\n").map {
                        try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
                    }
                    XCTAssertEqual(out.count, rows.count, r.stdout)
                    for (i, o) in out.enumerated() {
                        XCTAssertEqual(o["tokens"] as? [Int], greedy[i], "\(model) \(padding) \(precision) row \(i): \(r.stdout)")
                        XCTAssertEqual(o["prompt_tokens"] as? Int, rows[i].count)
                        XCTAssertEqual(o["text"] as? String, "")
                    }
                }
            }
        }
    }

    func testTextWithoutTokenizerJSONIsAClearError() throws {
        let model = Self.fixtures.appendingPathComponent("tiny/gpt2").path
        let r = try causal(["generate", "--model", model, "--raw", "hello"])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("tokenizer.json") && r.stderr.contains("input_ids"), r.stderr)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
        let info = try causal(["info", "--model", model])
        XCTAssertEqual(info.status, 0, info.stderr)
        XCTAssertTrue(info.stdout.contains("architecture: gpt2"), info.stdout)
        XCTAssertTrue(info.stdout.contains("tokenizer: none"), info.stdout)
        let bad = try causal(["generate", "--model", Self.fixtures.appendingPathComponent("tiny").path, "--raw", "hello"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("config.json"), bad.stderr)
    }
}
