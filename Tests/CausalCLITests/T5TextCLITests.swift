import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import XCTest

/// `causal` with text on a T5 directory that has a SentencePiece (Unigram) tokenizer.json: Tests/Fixtures/tiny/t5-text
/// (the tiny random T5 of tiny/t5 with the T5 tokenizer of t5-unigram). The text goes to the encoder (its pieces and
/// </s>) and only the decoder's new text comes back, equal to transformers' greedy output in refs.json there.
final class T5TextCLITests: XCTestCase {
    static let model = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/tiny/t5-text").path

    typealias Output = CLITests.Output

    func causal(_ args: [String], timeout: Double = 300) throws -> Output {
        try runCausal(args, timeout: timeout)
    }

    struct Case { let text: String; let ids: [Int]; let greedy: [Int]; let decoded: String }

    func cases() throws -> [Case] {
        let url = URL(fileURLWithPath: Self.model).appendingPathComponent("refs.json")
        let refs = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        return try XCTUnwrap(refs["cases"] as? [[String: Any]]).map {
            Case(text: try XCTUnwrap($0["text"] as? String), ids: try XCTUnwrap($0["ids"] as? [Int]),
                 greedy: try XCTUnwrap($0["greedy"] as? [Int]), decoded: try XCTUnwrap($0["decoded"] as? String))
        }
    }

    func json(_ line: Substring) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] ?? [:]
    }

    /// `causal generate --model DIR "text"`: the new text only (streamed to stdout), with --raw or without (a model
    /// without a chat template reads the text itself), and with --json the tokens, text and prompt size.
    func testGenerateTextPrintsOnlyTheDecoderText() throws {
        let c = try cases()[0]
        for extra in [[], ["--raw"]] {
            let r = try causal(["generate", "--model", Self.model, "--max-tokens", "16"] + extra + [c.text])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(r.stdout, c.decoded + "\n", "args \(extra)")
            XCTAssertEqual(r.stderr, "")
        }
        let j = try causal(["generate", "--model", Self.model, "--max-tokens", "16", "--json", c.text])
        XCTAssertEqual(j.status, 0, j.stderr)
        let o = json(Substring(j.stdout.trimmingCharacters(in: .newlines)))
        XCTAssertEqual(o["tokens"] as? [Int], c.greedy)
        XCTAssertEqual(o["text"] as? String, c.decoded)
        XCTAssertEqual(o["finish_reason"] as? String, "length")
        XCTAssertEqual(o["prompt_tokens"] as? Int, c.ids.count + 1)   // the text's ids (with </s>) and the decoder start

        // A stop string cuts the text (and the answer stops there).
        let s = try causal(["generate", "--model", Self.model, "--max-tokens", "16", "--stop", "sameto", "--json", c.text])
        XCTAssertEqual(s.status, 0, s.stderr)
        let so = json(Substring(s.stdout.trimmingCharacters(in: .newlines)))
        XCTAssertEqual(so["text"] as? String, "This antoan What ")
        XCTAssertEqual(so["tokens"] as? [Int], Array(c.greedy.prefix(4)))
        XCTAssertEqual(so["finish_reason"] as? String, "stop")

        // --system needs a chat template, which this model does not have.
        let sys = try causal(["generate", "--model", Self.model, "--system", "Be brief.", c.text])
        XCTAssertEqual(sys.status, 1)
        XCTAssertTrue(sys.stderr.contains("--system") && sys.stderr.contains("chat template"), sys.stderr)
        XCTAssertEqual(sys.stdout, "")
    }

    /// One `--input` batch mixing "prompt", "raw" and "input_ids" lines for every case: each line's answer is the
    /// transformers greedy answer for that text, whatever the padding route and batch size.
    func testBatchOfTextLines() throws {
        let cases = try cases()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("causal-cli-t5-text-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = dir.appendingPathComponent("t5.jsonl")
        var lines: [String] = []
        for (i, c) in cases.enumerated() {
            let quoted = String(decoding: try JSONSerialization.data(withJSONObject: [c.text], options: [.withoutEscapingSlashes]), as: UTF8.self)
                .dropFirst().dropLast()
            switch i % 3 {
            case 0: lines.append(#"{"prompt": \#(quoted)}"#)
            case 1: lines.append(#"{"raw": \#(quoted)}"#)
            default: lines.append(#"{"input_ids": [\#(c.ids.map(String.init).joined(separator: ", "))]}"#)
            }
        }
        try (lines.joined(separator: "\n") + "\n").write(to: input, atomically: true, encoding: .utf8)
        for (padding, batch) in [("none", "8"), ("left", "4"), ("right", "2")] {
            let r = try causal(["generate", "--model", Self.model, "--input", input.path, "--max-tokens", "16",
                                "--padding", padding, "--batch-size", batch, "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let out = r.stdout.split(separator: "\n").map(json)
            XCTAssertEqual(out.count, cases.count, r.stdout)
            for (i, o) in out.enumerated() where i < cases.count {
                let label = "padding \(padding), batch \(batch), line \(i + 1)"
                XCTAssertEqual(o["tokens"] as? [Int], cases[i].greedy, label)
                XCTAssertEqual(o["text"] as? String, cases[i].decoded, label)
                XCTAssertEqual(o["prompt_tokens"] as? Int, cases[i].ids.count + 1, label)
            }
        }
    }

    func testTokenizeDetokenizeAndInfo() throws {
        let t = try causal(["tokenize", "--model", Self.model, "Hello world"])
        XCTAssertEqual(t.status, 0, t.stderr)
        XCTAssertEqual(t.stdout, "[28, 90, 1]\n")
        let plain = try causal(["tokenize", "--model", Self.model, "--no-special", "Hello world"])
        XCTAssertEqual(plain.stdout, "[28, 90]\n")
        let d = try causal(["detokenize", "--model", Self.model, "28", "90", "1"])
        XCTAssertEqual(d.status, 0, d.stderr)
        XCTAssertEqual(d.stdout, "Hello world</s>\n")
        let bad = try causal(["detokenize", "--model", Self.model, "28", "1000"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("1000"), bad.stderr)

        let info = try causal(["info", "--model", Self.model])
        XCTAssertEqual(info.status, 0, info.stderr)
        XCTAssertTrue(info.stdout.contains("architecture: t5"), info.stdout)
        XCTAssertTrue(info.stdout.contains("tokenizer: tokenizer.json, SentencePiece Unigram, 1000 tokens"), info.stdout)
        XCTAssertTrue(info.stdout.contains("end tokens: 1"), info.stdout)
        XCTAssertTrue(info.stdout.contains("chat template: no"), info.stdout)
    }

    /// `causal serve --model T5DIR` listens, answers /v1/completions with the decoder's text, refuses chat (400 naming
    /// `messages`), and stops on SIGINT.
    func testServeAnswersCompletions() throws {
        let c = try cases()[1]
        let p = Process()
        p.executableURL = CLITests.productsDirectory.appendingPathComponent("causal")
        p.arguments = ["serve", "--model", Self.model, "--port", "0", "--threads", "2", "--shutdown-grace", "1"]
        let err = Pipe(), out = Pipe()
        p.standardError = err
        p.standardOutput = out
        p.standardInput = FileHandle.nullDevice
        let log = Locked("")
        let listening = DispatchSemaphore(value: 0)
        err.fileHandleForReading.readabilityHandler = { h in
            let data = h.availableData
            let (had, has) = log.update { log -> (Bool, Bool) in
                let had = log.contains("serving ")
                log += String(decoding: data, as: UTF8.self)
                return (had, log.contains("serving ") && log.contains("/v1 ("))
            }
            if !had && has { listening.signal() }
            if data.isEmpty { h.readabilityHandler = nil }
        }
        try p.run()
        defer { if p.isRunning { p.terminate() } }
        XCTAssertEqual(listening.wait(timeout: .now() + 120), .success, "the server did not start")
        let text = log.update { $0 }
        // "serving t5-text at http://127.0.0.1:PORT/v1 (...)"
        let port = try XCTUnwrap(text.range(of: #"127\.0\.0\.1:(\d+)/v1"#, options: .regularExpression).map {
            Int(text[$0].dropFirst("127.0.0.1:".count).dropLast("/v1".count))
        } ?? nil, text)
        XCTAssertTrue(text.contains("serving t5-text"), text)

        func post(_ path: String, _ body: [String: Any]) throws -> (Int, [String: Any]) {
            var req = URLRequest(url: URL(string: "http://127.0.0.1:\(port)\(path)")!)
            req.httpMethod = "POST"
            req.setValue("application/json", forHTTPHeaderField: "Content-Type")
            req.httpBody = try JSONSerialization.data(withJSONObject: body)
            let done = DispatchSemaphore(value: 0)
            let got = Locked((0, Data()))
            URLSession.shared.dataTask(with: req) { data, response, _ in
                got.update { $0 = ((response as? HTTPURLResponse)?.statusCode ?? 0, data ?? Data()) }
                done.signal()
            }.resume()
            XCTAssertEqual(done.wait(timeout: .now() + 120), .success)
            let result = got.update { $0 }
            return (result.0, (try? JSONSerialization.jsonObject(with: result.1)) as? [String: Any] ?? [:])
        }
        let (status, d) = try post("/v1/completions", ["model": "t5-text", "prompt": c.text, "max_tokens": 16, "temperature": 0])
        XCTAssertEqual(status, 200, "\(d)")
        let choice = (d["choices"] as? [[String: Any]])?.first ?? [:]
        XCTAssertEqual(choice["text"] as? String, c.decoded)
        XCTAssertEqual(choice["finish_reason"] as? String, "length")
        XCTAssertEqual((d["usage"] as? [String: Any])?["prompt_tokens"] as? Int, c.ids.count + 1)

        let (chatStatus, chat) = try post("/v1/chat/completions", ["model": "t5-text", "messages": [["role": "user", "content": c.text]]])
        XCTAssertEqual(chatStatus, 400)
        XCTAssertEqual((chat["error"] as? [String: Any])?["param"] as? String, "messages")

        p.interrupt()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
    }

    /// A T5 directory without tokenizer.json cannot be served (the server takes text): the error names the tokenizer.
    func testServeWithoutTokenizerIsAClearError() throws {
        let dir = URL(fileURLWithPath: Self.model).deletingLastPathComponent().appendingPathComponent("t5").path
        let r = try causal(["serve", "--model", dir, "--port", "0"], timeout: 60)
        XCTAssertEqual(r.status, 1, r.stdout)
        XCTAssertTrue(r.stderr.contains("tokenizer.json") && r.stderr.contains("server takes text"), r.stderr)
    }
}
