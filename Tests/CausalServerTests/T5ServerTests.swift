import CausalLM
import CausalServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// The tiny random T5 with its SentencePiece tokenizer (Tests/Fixtures/tiny/t5-text) served: the scheduler runs the
/// encoder over each request's prompt and returns only the decoder's text, equal to transformers' greedy output
/// (refs.json there) and to the library's `Generator` for the same request alone.
enum T5Shared {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/tiny/t5-text").path

    static let bundle: ModelBundle = {
        do { return try ModelBundle(path: dir, threads: 2) } catch { fatalError("cannot load \(dir): \(error)") }
    }()

    /// A context of 64 decoder positions (so the limits are cheap to reach).
    static let config = ServerConfiguration(maxSequences: 4, context: 64, maxTokensPerStep: 32, maxQueue: 16, logLevel: .warning)

    static let service: OpenAIService = {
        do { return try OpenAIService(bundle: bundle, configuration: config) } catch { fatalError("\(error)") }
    }()

    struct Case { let text: String; let ids: [Int]; let greedy: [Int]; let decoded: String }

    static let cases: [Case] = {
        let url = URL(fileURLWithPath: dir).appendingPathComponent("refs.json")
        let refs = try! JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        return (refs["cases"] as! [[String: Any]]).map {
            Case(text: $0["text"] as! String, ids: $0["ids"] as! [Int], greedy: $0["greedy"] as! [Int], decoded: $0["decoded"] as! String)
        }
    }()
}

final class T5ServerTests: XCTestCase {
    var app: some ApplicationProtocol { buildApplication(service: T5Shared.service) }
    var model: String { T5Shared.service.modelID }

    func testCompletionsReturnOnlyTheDecoderText() async throws {
        XCTAssertEqual(model, "t5-text")
        try await app.test(.router) { client in
            // Every case at once (one continuous batch), by text and by token ids.
            try await withThrowingTaskGroup(of: (Int, Bool, [String: Any]).self) { group in
                for (i, c) in T5Shared.cases.enumerated() {
                    for byIDs in [false, true] {
                        let prompt: Any = byIDs ? c.ids : c.text
                        group.addTask {
                            let r = try await client.post("/v1/completions", json: ["model": self.model, "prompt": prompt,
                                                                                  "max_tokens": 16, "temperature": 0])
                            XCTAssertEqual(r.status, .ok, r.text)
                            return (i, byIDs, try r.json())
                        }
                    }
                }
                var seen = 0
                for try await (i, byIDs, d) in group {
                    let c = T5Shared.cases[i]
                    let label = "\(c.text) (by ids: \(byIDs))"
                    XCTAssertEqual(d["object"] as? String, "text_completion", label)
                    XCTAssertEqual(firstChoice(d)["text"] as? String, c.decoded, label)
                    XCTAssertEqual(firstChoice(d)["finish_reason"] as? String, "length", label)
                    let usage = object(d["usage"])
                    XCTAssertEqual(usage["prompt_tokens"] as? Int, c.ids.count + 1, label)   // encoder input + decoder start
                    XCTAssertEqual(usage["completion_tokens"] as? Int, 16, label)
                    seen += 1
                }
                XCTAssertEqual(seen, 2 * T5Shared.cases.count)
            }
        }
    }

    func testStreamingCompletionMatches() async throws {
        let c = T5Shared.cases[2]   // its answer holds <extra_id_N> tokens and multi-byte text
        try await app.test(.router) { client in
            let r = try await client.post("/v1/completions", json: ["model": self.model, "prompt": c.text, "max_tokens": 16,
                                                                  "temperature": 0, "stream": true,
                                                                  "stream_options": ["include_usage": true]])
            XCTAssertEqual(r.status, .ok)
            XCTAssertEqual(r.headers[.contentType], "text/event-stream; charset=utf-8")
            let events = r.sseData
            XCTAssertEqual(events.last, "[DONE]")
            var text = "", finish: String? = nil, usage: [String: Any]? = nil
            for e in events.dropLast() {
                let chunk = try JSONSerialization.jsonObject(with: Data(e.utf8)) as! [String: Any]
                XCTAssertEqual(chunk["object"] as? String, "text_completion")
                if let u = chunk["usage"] as? [String: Any] { usage = u; continue }
                text += firstChoice(chunk)["text"] as? String ?? ""
                if let f = firstChoice(chunk)["finish_reason"] as? String { finish = f }
            }
            XCTAssertGreaterThan(events.count, 5)
            XCTAssertEqual(text, c.decoded)
            XCTAssertEqual(finish, "length")
            XCTAssertEqual(usage?["prompt_tokens"] as? Int, c.ids.count + 1)
            XCTAssertEqual(usage?["completion_tokens"] as? Int, 16)
        }
    }

    func testStopStringAndLogprobs() async throws {
        let c = T5Shared.cases[0]   // "This antoan What sameto sameto ..."
        try await app.test(.router) { client in
            let stopped = try await client.post("/v1/completions", json: ["model": self.model, "prompt": c.text, "max_tokens": 16,
                                                                        "temperature": 0, "stop": ["sameto"]])
            XCTAssertEqual(stopped.status, .ok, stopped.text)
            let s = try stopped.json()
            XCTAssertEqual(firstChoice(s)["text"] as? String, "This antoan What ")
            XCTAssertEqual(firstChoice(s)["finish_reason"] as? String, "stop")
            XCTAssertEqual(object(s["usage"])["completion_tokens"] as? Int, 4)

            // Each token as its own text: a piece's "▁" is a space, so the tokens spell " " + the answer.
            let lp = try await client.post("/v1/completions", json: ["model": self.model, "prompt": c.text, "max_tokens": 16,
                                                                   "temperature": 0, "logprobs": 2])
            XCTAssertEqual(lp.status, .ok, lp.text)
            let logprobs = object(firstChoice(try lp.json())["logprobs"])
            let tokens = logprobs["tokens"] as? [String] ?? []
            XCTAssertEqual(tokens.count, 16)
            XCTAssertEqual(tokens.joined(), " " + c.decoded)
            XCTAssertEqual(tokens.first, " This")
            let offsets = logprobs["text_offset"] as? [Int] ?? []
            XCTAssertEqual(offsets, tokens.indices.map { tokens[..<$0].reduce(0) { $0 + $1.count } })
            XCTAssertEqual((logprobs["top_logprobs"] as? [[String: Any]])?.first?.count, 2)
        }
    }

    func testChatWithoutTemplateAndLengthLimitsAre400() async throws {
        try await app.test(.router) { client in
            let chat = try await client.post("/v1/chat/completions", json: ["model": self.model, "messages": [["role": "user", "content": "hi"]]])
            XCTAssertEqual(chat.status, .badRequest)
            let e = try chat.apiError()
            XCTAssertEqual(e["param"] as? String, "messages")
            XCTAssertEqual(e["code"] as? String, "chat_template_missing")
            let message = e["message"] as? String ?? ""
            XCTAssertTrue(message.contains("'t5-text'") && message.contains("chat template") && message.contains("/v1/completions"), message)

            // The encoder reads at most the context (64 here): 70 ids are refused, naming the prompt.
            let long = try await client.post("/v1/completions", json: ["model": self.model, "prompt": Array(repeating: 5, count: 70)])
            XCTAssertEqual(long.status, .badRequest)
            XCTAssertEqual(try long.apiError()["param"] as? String, "prompt")
            XCTAssertEqual(try long.apiError()["code"] as? String, "context_length_exceeded")
            XCTAssertTrue((try long.apiError()["message"] as? String ?? "").contains("70 tokens"))
            // The decoder starts from one token, so 64 new tokens do not fit a context of 64; 63 do.
            let tooMany = try await client.post("/v1/completions", json: ["model": self.model, "prompt": "Hello world", "max_tokens": 64])
            XCTAssertEqual(tooMany.status, .badRequest)
            XCTAssertEqual(try tooMany.apiError()["param"] as? String, "max_tokens")
            let fits = try await client.post("/v1/completions", json: ["model": self.model, "prompt": "Hello world", "max_tokens": 63,
                                                                     "temperature": 0, "ignore_eos": true])
            XCTAssertEqual(fits.status, .ok, fits.text)
            XCTAssertEqual(object(try fits.json()["usage"])["completion_tokens"] as? Int, 63)
            // Token ids outside the vocabulary name the entry.
            let bad = try await client.post("/v1/completions", json: ["model": self.model, "prompt": [5, 1000]])
            XCTAssertEqual(bad.status, .badRequest)
            XCTAssertEqual(try bad.apiError()["param"] as? String, "prompt")
            XCTAssertTrue((try bad.apiError()["message"] as? String ?? "").contains("prompt[1]"))
        }
    }

    /// The library's scheduler with an encoder-decoder model: encoder inputs admitted together at one step are
    /// encoded together, and every request gets what `Generator` gives it alone (tokens, text, logits' argmax).
    func testSchedulerRunsTheEncoder() async throws {
        let bundle = T5Shared.bundle
        let scheduler = try Scheduler(bundle: bundle, maxSequences: 3, contextLength: 64, maxTokensPerStep: 8, maxQueue: 16)
        var requests: [SequenceRequest] = []
        for (i, c) in T5Shared.cases.enumerated() {
            let p = GenerateParameters(maxNewTokens: 4 + 3 * i, temperature: i % 2 == 0 ? 0 : 0.9, seed: UInt64(40 + i))
            requests.append(SequenceRequest(encoderInput: try bundle.tokenizer.encode(c.text), parameters: p))
        }
        let alone = try requests.map { try bundle.makeGenerator().generate([$0])[0] }
        var tasks: [Task<SchedulerTests.Outcome, Never>] = []
        for (i, r) in requests.enumerated() {
            let (events, _) = try scheduler.submit(r)
            tasks.append(Task { await SchedulerTests.collect(events) })
            if i == 2 { try await Task.sleep(nanoseconds: 20_000_000) }
        }
        for (i, t) in tasks.enumerated() {
            let o = await t.value
            XCTAssertEqual(o.result, alone[i], "request \(i)")
            XCTAssertEqual(o.tokens, alone[i].tokens, "request \(i): token events")
            XCTAssertEqual(o.text, alone[i].text, "request \(i): text events")
        }
        XCTAssertEqual(Array(alone[0].tokens.prefix(4)), Array(T5Shared.cases[0].greedy.prefix(4)))
        let m = scheduler.metrics
        XCTAssertEqual(m.finishedStop + m.finishedLength, requests.count)
        // Prefill: every encoder input plus each decoder's start token.
        XCTAssertEqual(m.promptTokens, requests.reduce(0) { $0 + $1.encoderInput!.count + 1 })
        XCTAssertEqual(m.reservedKVTokens, 0)

        // Requests that cannot run on this model are refused when submitted, naming why.
        let p = GenerateParameters(maxNewTokens: 4)
        XCTAssertThrowsError(try scheduler.submit(SequenceRequest(prompt: [5, 6], parameters: p))) { e in
            XCTAssertTrue("\(e)".contains("encoder input"), "\(e)")
        }
        XCTAssertThrowsError(try scheduler.submit(SequenceRequest(encoderInput: [], parameters: p))) { e in
            XCTAssertTrue("\(e)".contains("encoder input has no tokens"), "\(e)")
        }
        XCTAssertThrowsError(try scheduler.submit(SequenceRequest(encoderInput: [5, 1000], parameters: p))) { e in
            XCTAssertEqual(e as? CausalError, .badTokenID(id: 1000, vocabularySize: 1000))
        }
        await scheduler.shutdown(cancelInFlight: false)
    }
}
