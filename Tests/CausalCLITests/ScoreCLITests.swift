import Foundation
import XCTest

/// `causal score` with token-id lines and `--adapter`: on the tiny random Qwen2 (no tokenizer.json) with the adapter
/// peft trained and saved (Tests/Fixtures/lora/qwen2/adapter_step3), the last-position log-probabilities equal
/// log_softmax of peft's logits (logits_step3.npy), and without the adapter those of the base (logits_base.npy).
final class ScoreCLITests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    /// A float32 little-endian .npy file of shape (rows, cols), row-major.
    static func npyMatrix(_ relative: String) throws -> [[Float]] {
        let data = try Data(contentsOf: fixtures.appendingPathComponent(relative))
        let bytes = [UInt8](data)
        guard bytes.count > 10, bytes[0] == 0x93, bytes[6] == 1 else { throw CocoaError(.fileReadCorruptFile) }
        let headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
        let header = String(decoding: bytes[10..<(10 + headerLength)], as: UTF8.self)
        guard header.contains("'<f4'"), header.contains("False"),
              let open = header.range(of: "'shape': ("), let close = header[open.upperBound...].firstIndex(of: ")") else {
            throw CocoaError(.fileReadCorruptFile)
        }
        let shape = header[open.upperBound..<close].split(separator: ",").compactMap {
            Int($0.trimmingCharacters(in: .whitespaces))
        }
        guard shape.count == 2 else { throw CocoaError(.fileReadCorruptFile) }
        let start = 10 + headerLength
        return (0..<shape[0]).map { r in
            (0..<shape[1]).map { c in
                let o = start + 4 * (r * shape[1] + c)
                return Float(bitPattern: UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16
                             | UInt32(bytes[o + 3]) << 24)
            }
        }
    }

    static func logSoftmax(_ x: [Float]) -> [Double] {
        let m = Double(x.max()!)
        let lse = m + log(x.reduce(0.0) { $0 + exp(Double($1) - m) })
        return x.map { Double($0) - lse }
    }

    func testTokenIDLinesWithPEFTAdapterMatchPEFTLogits() throws {
        let model = Self.fixtures.appendingPathComponent("tiny/qwen2").path
        let adapter = Self.fixtures.appendingPathComponent("lora/qwen2/adapter_step3").path
        let refs = try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("lora/qwen2/refs.json"))) as! [String: Any]
        let prompts = refs["prompts"] as! [[Int]]
        let withAdapter = try Self.npyMatrix("lora/qwen2/logits_step3.npy").map(Self.logSoftmax)
        let base = try Self.npyMatrix("lora/qwen2/logits_base.npy").map(Self.logSoftmax)
        XCTAssertEqual(withAdapter.count, prompts.count)

        // Per prompt: a few fixed ids, and the most likely next token with and without the adapter.
        var lines: [String] = [], expected: [(prompt: Int, token: Int)] = []
        for (i, p) in prompts.enumerated() {
            let best = [withAdapter[i], base[i]].map { lp in lp.indices.max { lp[$0] < lp[$1] }! }
            for c in Array(Set([0, 1, 2, 7, 42, 500, 999] + best)).sorted() {
                lines.append(#"{"context_ids": \#(p), "continuation_ids": [\#(c)]}"#)
                expected.append((i, c))
            }
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-score-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = dir.appendingPathComponent("score.jsonl")
        try (lines.joined(separator: "\n") + "\n").write(to: input, atomically: true, encoding: .utf8)

        var worst = 0.0, effect = 0.0
        for (args, ref) in [(["--adapter", adapter], withAdapter), ([], base)] {
            let r = try runCausal(["score", "--model", model, "--input", input.path] + args)
            XCTAssertEqual(r.status, 0, r.stderr)
            let out = r.stdout.split(separator: "\n").map {
                try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
            }
            XCTAssertEqual(out.count, expected.count, r.stdout)
            for (o, e) in zip(out, expected) {
                let got = (o["token_logprobs"] as! [Double])[0], want = ref[e.prompt][e.token]
                XCTAssertEqual(o["context_tokens"] as? Int, prompts[e.prompt].count)
                XCTAssertEqual(o["continuation_tokens"] as? Int, 1)
                let rel = abs(got - want) / max(abs(want), 1)
                worst = max(worst, rel)
                XCTAssertLessThanOrEqual(rel, 1e-4, "\(args) prompt \(e.prompt) token \(e.token): causal \(got), peft \(want)")
                let isBest = ref[e.prompt].indices.max { ref[e.prompt][$0] < ref[e.prompt][$1] }! == e.token
                XCTAssertEqual(o["is_greedy"] as? Bool, isBest, "\(args) prompt \(e.prompt) token \(e.token)")
                effect = max(effect, abs(withAdapter[e.prompt][e.token] - base[e.prompt][e.token]))
            }
        }
        XCTAssertGreaterThan(effect, 0.1, "the adapter must change these log-probabilities for the test to mean anything")
        print("causal score vs peft (tiny qwen2, adapter_step3 and base): max relative difference \(worst), adapter effect \(effect)")
    }

    func testTokenIDLineErrors() throws {
        let model = Self.fixtures.appendingPathComponent("tiny/qwen2").path
        let cases: [(String, [String])] = [
            (#"{"context_ids": [5, 1.5], "continuation_ids": [7]}"#, ["line 1", "context_ids"]),
            (#"{"context_ids": [5]}"#, ["line 1", "continuation_ids"]),
            (#"{"context_ids": [], "continuation_ids": [7]}"#, ["line 1", "empty"]),
            (#"{"context_ids": [5], "continuation_ids": [7000]}"#, ["7000"]),
            (#"{"context": "a", "continuation": " b"}"#, ["tokenizer.json"]),
        ]
        for (line, words) in cases {
            let r = try runCausal(["score", "--model", model, "--input", "-"], stdin: line + "\n")
            XCTAssertEqual(r.status, 1, "\(line): \(r.stdout)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
            for w in words { XCTAssertTrue(r.stderr.contains(w), "\(line): \(r.stderr)") }
        }
        // An adapter shaped for another model (SmolLM2's) on the tiny Qwen2: one clear line, no crash.
        let r = try runCausal(["score", "--model", model, "--adapter",
                               Self.fixtures.appendingPathComponent("lora/smollm2/adapter_step3").path, "--input", "-"],
                              stdin: #"{"context_ids": [5], "continuation_ids": [7]}"# + "\n")
        XCTAssertEqual(r.status, 1, r.stdout)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
    }
}
