import Foundation
import XCTest

/// `causal` on the tiny random T5 of Tests/Fixtures/tiny/t5 (no tokenizer): `--input` lines of `input_ids` are the
/// encoder's input, and only the decoder's new tokens come back, equal to transformers' greedy output for each row.
final class T5CLITests: XCTestCase {
    static let model = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/tiny/t5").path

    typealias Output = CLITests.Output

    /// Runs `causal`; after `timeout` seconds it is terminated (so a server that wrongly starts cannot hang the test).
    func causal(_ args: [String], timeout: Double = 300) throws -> Output {
        try runCausal(args, timeout: timeout)
    }

    func refs() throws -> (rows: [[Int]], greedy: [[Int]]) {
        let r = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Self.model).appendingPathComponent("refs.json"))) as! [String: Any]
        return (r["encoder_rows"] as! [[Int]], r["greedy_single"] as! [[Int]])
    }

    /// One `--input` batch of the three encoder rows (lengths 7, 3, 5), unpadded and through the padded entry point
    /// on either side: each row gives HF's greedy tokens (min_new_tokens 16), and nothing of the encoder input.
    func testGenerateInputIDsReproducesHFGreedyWithOnlyDecoderTokens() throws {
        let (rows, greedy) = try refs()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-cli-t5-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = dir.appendingPathComponent("t5.jsonl")
        let lines = rows.map { #"{"input_ids": [\#($0.map(String.init).joined(separator: ", "))]}"# }
        try (lines.joined(separator: "\n") + "\n").write(to: input, atomically: true, encoding: .utf8)
        for padding in ["none", "left", "right"] {
            for batchSize in ["8", "2"] {
                let r = try causal(["generate", "--model", Self.model, "--input", input.path, "--padding", padding,
                                    "--batch-size", batchSize, "--max-tokens", "16", "--min-tokens", "16", "--json"])
                XCTAssertEqual(r.status, 0, r.stderr)
                let out = r.stdout.split(separator: "\n").map {
                    try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
                }
                XCTAssertEqual(out.count, rows.count, r.stdout)
                for (i, o) in out.enumerated() {
                    XCTAssertEqual(o["tokens"] as? [Int], greedy[i], "padding \(padding), batch \(batchSize), row \(i): \(r.stdout)")
                    XCTAssertEqual(o["finish_reason"] as? String, "length")
                    XCTAssertEqual(o["text"] as? String, "")
                    // The encoder input plus the decoder start id; the output itself holds only decoder tokens.
                    XCTAssertEqual(o["prompt_tokens"] as? Int, rows[i].count + 1)
                }
            }
        }
        // Without min_new_tokens the end id 1 (EOS) stops a row once chosen: an end id in a row's greedy tokens
        // would end it there; these 16 steps never choose it, so the output is the same with reason "length".
        XCTAssertFalse(greedy.joined().contains(1))
        let plain = try causal(["generate", "--model", Self.model, "--input", input.path, "--max-tokens", "16", "--json"])
        XCTAssertEqual(plain.status, 0, plain.stderr)
        let tokens = plain.stdout.split(separator: "\n").map {
            (try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any])["tokens"] as? [Int]
        }
        XCTAssertEqual(tokens, greedy.map { Optional($0) })
        // Fewer tokens: the greedy prefix.
        let short = try causal(["generate", "--model", Self.model, "--input", input.path, "--max-tokens", "3", "--json"])
        XCTAssertEqual(short.status, 0, short.stderr)
        let shortTokens = short.stdout.split(separator: "\n").map {
            (try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any])["tokens"] as? [Int]
        }
        XCTAssertEqual(shortTokens, greedy.map { Optional(Array($0.prefix(3))) })
    }

    func testTextWithoutTokenizerIsAClearErrorAndInfoDescribesT5() throws {
        for args in [["--raw", "translate this"], ["translate this"]] {
            let r = try causal(["generate", "--model", Self.model] + args)
            XCTAssertEqual(r.status, 1, r.stdout)
            XCTAssertTrue(r.stderr.contains("tokenizer") && r.stderr.contains("input_ids"), r.stderr)
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr)
            XCTAssertEqual(r.stdout, "")
        }
        // In a batch, a text line gets an error line naming the tokenizer; the ids line still runs.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-cli-t5-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let (rows, greedy) = try refs()
        let input = dir.appendingPathComponent("mixed.jsonl")
        try (#"{"raw": "hello"}"# + "\n" + #"{"input_ids": [\#(rows[1].map(String.init).joined(separator: ", "))]}"# + "\n")
            .write(to: input, atomically: true, encoding: .utf8)
        let mixed = try causal(["generate", "--model", Self.model, "--input", input.path, "--max-tokens", "16", "--json"])
        XCTAssertEqual(mixed.status, 0, mixed.stderr)
        let out = mixed.stdout.split(separator: "\n").map { try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        XCTAssertEqual(out.count, 2, mixed.stdout)
        let message = try XCTUnwrap(out.first?["error"] as? String, mixed.stdout)
        XCTAssertTrue(message.contains("line 1") && message.contains("tokenizer"), message)
        XCTAssertEqual(out.last?["tokens"] as? [Int], greedy[1])

        let info = try causal(["info", "--model", Self.model])
        XCTAssertEqual(info.status, 0, info.stderr)
        XCTAssertTrue(info.stdout.contains("architecture: t5"), info.stdout)
        XCTAssertTrue(info.stdout.contains("layers: 2 encoder, 2 decoder"), info.stdout)
        XCTAssertTrue(info.stdout.contains("decoder start: 0"), info.stdout)
        XCTAssertTrue(info.stdout.contains("end tokens: 1"), info.stdout)
        XCTAssertTrue(info.stdout.contains("tokenizer: none"), info.stdout)

        // The server takes text: without tokenizer.json it refuses the directory before listening.
        let serve = try causal(["serve", "--model", Self.model, "--port", "0"], timeout: 30)
        XCTAssertEqual(serve.status, 1, serve.stdout)
        XCTAssertTrue(serve.stderr.contains("tokenizer.json"), serve.stderr)
    }
}
