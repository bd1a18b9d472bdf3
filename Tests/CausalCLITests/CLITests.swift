import Foundation
import XCTest

/// End-to-end tests of the built `causal` executable: stdout, stderr and exit status.
final class CLITests: XCTestCase {
    static var productsDirectory: URL {
        #if os(macOS)
        for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
            return bundle.bundleURL.deletingLastPathComponent()
        }
        fatalError("no .xctest bundle")
        #else
        return Bundle.main.bundleURL
        #endif
    }

    struct Output { let status: Int32; let stdout: String; let stderr: String }

    func causal(_ args: [String], stdin: String? = nil) throws -> Output {
        try runCausal(args, stdin: stdin)
    }

    /// The default model, fetched once into the cache by the first command that needs it.
    static let modelPath: String = {
        if let p = ProcessInfo.processInfo.environment["CAUSAL_MODEL"], !p.isEmpty { return p }
        let env = ProcessInfo.processInfo.environment
        let cache = env["CAUSAL_CACHE"].map { URL(fileURLWithPath: $0) }
            ?? env["XDG_CACHE_HOME"].map { URL(fileURLWithPath: $0).appendingPathComponent("causal") }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/causal")
        return cache.appendingPathComponent("models/SmolLM2-135M-Instruct.Q4_1.gguf").path
    }()

    override func setUpWithError() throws {
        if !FileManager.default.fileExists(atPath: Self.modelPath) {
            let r = try causal(["info"])   // fetches the default model
            XCTAssertEqual(r.status, 0, r.stderr)
        }
    }

    func testGenerateJSONReferenceGreedyMatchesHF() throws {
        let r = try causal(["generate", "--model", Self.modelPath, "--precision", "reference", "--temperature", "0",
                            "--max-tokens", "48", "--json", "What is the capital of France?"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, #"{"tokens": [504, 3575, 282, 4649, 314, 7042, 30, 2], "text": "The capital of France is Paris.", "finish_reason": "stop", "prompt_tokens": 37}"# + "\n")
    }

    func testGenerateDefaultModelStreamsText() throws {
        let r = try causal(["generate", "What is the capital of France?"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("Paris"), r.stdout)
        XCTAssertFalse(r.stdout.contains("<|im_end|>"), r.stdout)
        XCTAssertFalse(r.stdout.contains("What is the capital"), "the prompt must not be echoed: \(r.stdout)")
    }

    func testGenerateRawWithStopAndLength() throws {
        let r = try causal(["generate", "--model", Self.modelPath, "--raw", "--max-tokens", "5", "--json", "1, 2, 3, 4,"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        XCTAssertEqual((obj["tokens"] as! [Int]).count, 5)
        XCTAssertEqual(obj["finish_reason"] as? String, "length")
        XCTAssertEqual(obj["prompt_tokens"] as? Int, 11)
        let s = try causal(["generate", "--model", Self.modelPath, "--raw", "--stop", "7", "--max-tokens", "30", "--json", "1, 2, 3, 4,"])
        let o2 = try JSONSerialization.jsonObject(with: Data(s.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(o2["finish_reason"] as? String, "stop", s.stdout)
        XCTAssertEqual(o2["text"] as? String, " 5, 6, ", s.stdout)
    }

    func testSeededSamplingIsReproducible() throws {
        let args = ["generate", "--model", Self.modelPath, "--temperature", "0.9", "--top-k", "40", "--top-p", "0.95",
                    "--seed", "1234", "--max-tokens", "24", "--json", "Tell me a story."]
        let a = try causal(args), b = try causal(args)
        XCTAssertEqual(a.status, 0, a.stderr)
        XCTAssertEqual(a.stdout, b.stdout)
        var other = args
        other[other.firstIndex(of: "1234")!] = "99"
        XCTAssertNotEqual(try causal(other).stdout, a.stdout)
    }

    func testTokenizeDetokenize() throws {
        let t = try causal(["tokenize", "--model", Self.modelPath, "Hello world<|im_end|>"])
        XCTAssertEqual(t.stdout, "[19556, 905, 2]\n")
        let n = try causal(["tokenize", "--model", Self.modelPath, "--no-special", "<|im_end|>"])
        XCTAssertFalse(n.stdout.contains(" 2]") || n.stdout == "[2]\n", n.stdout)
        let d = try causal(["detokenize", "--model", Self.modelPath, "19556", "905"])
        XCTAssertEqual(d.stdout, "Hello world\n")
        let bad = try causal(["detokenize", "--model", Self.modelPath, "49152"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("token id 49152"), bad.stderr)
    }

    func testInfo() throws {
        let r = try causal(["info", "--model", Self.modelPath])
        XCTAssertEqual(r.status, 0, r.stderr)
        for s in ["architecture: llama", "layers: 30, hidden: 576, MLP: 1536", "heads: 9 query, 3 key/value, head size 64",
                  "Q4_1 ×210", "Q8_0 ×1", "F32 ×61", "49152 tokens", "EOS: 2 \"<|im_end|>\""] {
            XCTAssertTrue(r.stdout.contains(s), "missing '\(s)' in:\n\(r.stdout)")
        }
    }

    func testChatKeepsConversationAndResets() throws {
        let r = try causal(["chat", "--model", Self.modelPath, "--max-tokens", "40"],
                           stdin: "What is the capital of France?\nAnd what is it famous for?\n/reset\n/exit\n")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("Paris"), r.stdout)
        XCTAssertTrue(r.stdout.contains("(conversation reset)"), r.stdout)
    }

    /// --input: one JSON line per request in input order, equal to each request run alone, whatever the batch
    /// size, padding side or chunk size; a bad line gets an error line and the others are still answered.
    func testBatchInputEqualsSingleRuns() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-batch-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let lines = [
            #"{"prompt": "What is the capital of France?", "max_tokens": 12}"#,
            #"{"raw": "1, 2, 3, 4,", "max_tokens": 6}"#,
            #"{"input_ids": [504, 3575, 282], "max_tokens": 5}"#,
            #"{"input_ids": [1, 99999]}"#,
            #"{"raw": "Once upon a time", "max_tokens": 8, "temperature": 0.8, "seed": 5}"#,
            #"not json"#,
            #"{"prompt": "Name two famous painters.", "max_tokens": 10, "bogus": 1}"#,
            #"{"prompt": "List three colors.", "max_tokens": 10}"#,
        ]
        let file = dir.appendingPathComponent("in.jsonl")
        try (lines.joined(separator: "\n") + "\n").write(to: file, atomically: true, encoding: .utf8)
        // Each good request alone.
        var single: [String] = []
        for line in lines {
            let one = dir.appendingPathComponent("one.jsonl")
            try (line + "\n").write(to: one, atomically: true, encoding: .utf8)
            let r = try causal(["generate", "--model", Self.modelPath, "--input", one.path, "--batch-size", "1"])
            XCTAssertEqual(r.status, 0, r.stderr)
            single.append(r.stdout)
        }
        XCTAssertTrue(single[3].contains(#""error": "line 1: token id 99999 is outside the vocabulary"#), single[3])
        XCTAssertTrue(single[5].contains(#""error": "line 1: not a JSON object"#), single[5])
        XCTAssertTrue(single[6].contains("unknown field 'bogus'"), single[6])
        XCTAssertTrue(single[0].contains("Paris"), single[0])
        for (batch, padding, chunk) in [("8", "none", "0"), ("3", "left", "7"), ("5", "right", "1"), ("8", "left", "0")] {
            var args = ["generate", "--model", Self.modelPath, "--input", file.path, "--batch-size", batch, "--padding", padding]
            if chunk != "0" { args += ["--chunk", chunk] }
            let r = try causal(args)
            XCTAssertEqual(r.status, 0, r.stderr)
            let out = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            XCTAssertEqual(out.count, lines.count + 1)
            for (i, s) in single.enumerated() {
                let want = s.replacingOccurrences(of: "line 1:", with: "line \(i + 1):").trimmingCharacters(in: .newlines)
                XCTAssertEqual(out[i], want, "request \(i), batch \(batch), padding \(padding), chunk \(chunk)")
            }
        }
    }

    /// HF's batch-size-1 greedy tokens (reference precision) from ONE --input batch of all prompts, padded left and
    /// right through the HF-style edge. (HF's own right-padded batch differs from its first token on.)
    func testHFGreedyFromOnePaddedCLIBatch() throws {
        let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/smollm2/greedy.json")
        let rows = try JSONSerialization.jsonObject(with: Data(contentsOf: fixture)) as! [[String: Any]]
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("greedy-\(UUID().uuidString).jsonl")
        defer { try? FileManager.default.removeItem(at: file) }
        let lines = try rows.map { r -> String in
            let ids = try JSONSerialization.data(withJSONObject: ["input_ids": r["prompt_ids"]!, "max_tokens": 48])
            return String(decoding: ids, as: UTF8.self)
        }
        try (lines.joined(separator: "\n") + "\n").write(to: file, atomically: true, encoding: .utf8)
        for side in ["left", "right"] {
            let r = try causal(["generate", "--model", Self.modelPath, "--precision", "reference", "--input", file.path,
                                "--batch-size", "\(rows.count)", "--padding", side])
            XCTAssertEqual(r.status, 0, r.stderr)
            let out = r.stdout.split(separator: "\n").map { try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
            XCTAssertEqual(out.count, rows.count)
            for (o, row) in zip(out, rows) {
                XCTAssertEqual(o["tokens"] as? [Int], row["tokens"] as? [Int], "padding \(side): \(row["prompt"]!)")
            }
        }
    }

    func testBenchJSONRows() throws {
        let r = try causal(["bench", "--model", Self.modelPath, "-p", "16", "-n", "4", "-r", "1", "--batch", "2", "--batch-prompt", "8", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let rows = try r.stdout.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        XCTAssertEqual(rows.map { $0["test"] as! String }, ["pp16", "tg4", "pp8+tg4 x2 prompt", "pp8+tg4 x2 decode"])
        for row in rows { XCTAssertGreaterThan(row["tokens_per_second"] as! Double, 0) }
    }

    /// `--kv-cache fp16`: a greedy count continues as with the fp32 cache; bench labels its rows; a bad value is named.
    func testKVCacheFP16() throws {
        let args = ["generate", "--model", Self.modelPath, "--raw", "--max-tokens", "8", "--json", "1, 2, 3, 4,"]
        let a = try causal(args), b = try causal(args + ["--kv-cache", "fp16"])
        XCTAssertEqual(a.status, 0, a.stderr)
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertEqual(b.stdout, a.stdout)
        XCTAssertTrue(b.stdout.contains(#""text": " 5, 6, 7""#), b.stdout)
        let r = try causal(["bench", "--model", Self.modelPath, "-p", "8", "-n", "2", "-r", "1", "--kv-cache", "fp16", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        for row in r.stdout.split(separator: "\n") {
            let o = try JSONSerialization.jsonObject(with: Data(row.utf8)) as! [String: Any]
            XCTAssertEqual(o["precision"] as? String, "fast+kv16", String(row))
        }
        let bad = try causal(["generate", "--kv-cache", "fp8", "hi"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("kv-cache"), bad.stderr)
    }

    // MARK: Bad input: one clear line on stderr, non-zero exit, no crash.

    func assertCleanFailure(_ r: Output, mentions: String..., file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 1, "stdout: \(r.stdout) stderr: \(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "one line expected: \(r.stderr)", file: file, line: line)
        for m in mentions { XCTAssertTrue(r.stderr.contains(m), "'\(r.stderr)' lacks '\(m)'", file: file, line: line) }
        XCTAssertEqual(r.stdout, "", file: file, line: line)
    }

    func testBadModelFiles() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }

        assertCleanFailure(try causal(["generate", "--model", dir.appendingPathComponent("missing.gguf").path, "hi"]),
                           mentions: "missing.gguf", "no such file")

        let text = dir.appendingPathComponent("notes.txt")
        try "just some text\n".write(to: text, atomically: true, encoding: .utf8)
        assertCleanFailure(try causal(["generate", "--model", text.path, "hi"]), mentions: "notes.txt", "not a GGUF file")

        // The real model cut short: header intact, tensor data missing.
        let truncated = dir.appendingPathComponent("truncated.gguf")
        let fh = try FileHandle(forReadingFrom: URL(fileURLWithPath: Self.modelPath))
        try fh.readData(ofLength: 40_000_000).write(to: truncated)
        try fh.close()
        assertCleanFailure(try causal(["generate", "--model", truncated.path, "hi"]), mentions: "truncated.gguf", "past the end")

        let headerOnly = dir.appendingPathComponent("header.gguf")
        let fh2 = try FileHandle(forReadingFrom: URL(fileURLWithPath: Self.modelPath))
        try fh2.readData(ofLength: 500_000).write(to: headerOnly)
        try fh2.close()
        assertCleanFailure(try causal(["info", "--model", headerOnly.path]), mentions: "header.gguf")

        // A tensor of a type this engine does not run (a valid GGUF otherwise).
        let unknown = dir.appendingPathComponent("unknown-type.gguf")
        var bytes = [UInt8]("GGUF".utf8)
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
        func str(_ s: String) { u64(UInt64(s.utf8.count)); bytes += Array(s.utf8) }
        u32(3); u64(1); u64(1)
        str("general.architecture"); u32(8); str("llama")
        str("token_embd.weight"); u32(2); u64(32); u64(4); u32(99); u64(0)
        while bytes.count % 32 != 0 { bytes.append(0) }
        bytes += [UInt8](repeating: 0, count: 512)
        try Data(bytes).write(to: unknown)
        assertCleanFailure(try causal(["generate", "--model", unknown.path, "hi"]), mentions: "token_embd.weight", "unknown tensor type 99")
    }

    func testBadArguments() throws {
        let r = try causal(["generate", "--temperature", "-1", "hi"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("temperature"), r.stderr)
        let p = try causal(["generate", "--precision", "half", "hi"])
        XCTAssertNotEqual(p.status, 0)
        XCTAssertTrue(p.stderr.contains("precision"), p.stderr)
    }
}
