import CausalLM
import CausalServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// Every endpoint, in process through HummingbirdTesting's router client, against the default model.
final class ServerTests: XCTestCase {
    var app: some ApplicationProtocol { buildApplication(service: Shared.service) }
    var model: String { Shared.modelID }

    let france = "What is the capital of France?"

    func testModelsAndHealth() async throws {
        try await app.test(.router) { client in
            let r = try await client.execute(uri: "/v1/models", method: .get)
            XCTAssertEqual(r.status, .ok)
            let d = try r.json()
            XCTAssertEqual(d["object"] as? String, "list")
            let data = d["data"] as? [Any] ?? []
            XCTAssertEqual(data.count, 1)
            XCTAssertEqual(object(data.first)["id"] as? String, self.model)
            XCTAssertEqual(object(data.first)["object"] as? String, "model")

            let one = try await client.execute(uri: "/v1/models/\(self.model)", method: .get)
            XCTAssertEqual(one.status, .ok)
            let missing = try await client.execute(uri: "/v1/models/gpt-17", method: .get)
            XCTAssertEqual(missing.status, .notFound)
            XCTAssertEqual(try missing.apiError()["code"] as? String, "model_not_found")

            let h = try await client.execute(uri: "/health", method: .get)
            XCTAssertEqual(h.status, .ok)
            XCTAssertEqual(try h.json()["status"] as? String, "ok")
        }
    }

    func testGreedyChat() async throws {
        try await app.test(.router) { client in
            let r = try await client.post("/v1/chat/completions", json: [
                "model": self.model, "messages": [["role": "user", "content": self.france]], "temperature": 0,
            ])
            XCTAssertEqual(r.status, .ok, r.text)
            XCTAssertEqual(r.headers[.contentType], "application/json")
            let d = try r.json()
            XCTAssertTrue((d["id"] as? String ?? "").hasPrefix("chatcmpl-"))
            XCTAssertEqual(d["object"] as? String, "chat.completion")
            XCTAssertEqual(d["model"] as? String, self.model)
            XCTAssertNotNil(d["created"] as? Int)
            let choice = firstChoice(d)
            XCTAssertEqual(object(choice["message"])["role"] as? String, "assistant")
            XCTAssertEqual(object(choice["message"])["content"] as? String, "The capital of France is Paris.")
            XCTAssertEqual(choice["finish_reason"] as? String, "stop")
            let usage = object(d["usage"])
            let promptTokens = try Shared.chatIDs(self.france).count
            XCTAssertEqual(usage["prompt_tokens"] as? Int, promptTokens)
            let completion = usage["completion_tokens"] as? Int ?? -1
            XCTAssertGreaterThan(completion, 0)
            XCTAssertEqual(usage["total_tokens"] as? Int, promptTokens + completion)
            // Same tokens as the generator alone.
            let alone = try Shared.alone(try Shared.chatIDs(self.france), GenerateParameters(maxNewTokens: 512 - promptTokens))
            XCTAssertEqual(alone.text, "The capital of France is Paris.")
            XCTAssertEqual(alone.tokens.count, completion)
        }
    }

    func testChatStreamingMatchesNonStreaming() async throws {
        try await app.test(.router) { client in
            let body: [String: Any] = ["model": self.model, "messages": [["role": "system", "content": "Be brief."],
                                                                         ["role": "user", "content": "Name three colours."]],
                                       "temperature": 0, "max_tokens": 40]
            let plain = try await client.post("/v1/chat/completions", json: body)
            XCTAssertEqual(plain.status, .ok, plain.text)
            let full = try plain.json()
            let expected = object(firstChoice(full)["message"])["content"] as? String ?? "<none>"

            var streamBody = body
            streamBody["stream"] = true
            streamBody["stream_options"] = ["include_usage": true]
            let r = try await client.post("/v1/chat/completions", json: streamBody)
            XCTAssertEqual(r.status, .ok)
            XCTAssertEqual(r.headers[.contentType], "text/event-stream; charset=utf-8")
            XCTAssertTrue(r.text.hasSuffix("data: [DONE]\n\n"))
            let events = r.sseData
            XCTAssertEqual(events.last, "[DONE]")
            let chunks = try events.dropLast().map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
            XCTAssertGreaterThan(chunks.count, 3)
            var text = ""
            var finish: String? = nil
            var usage: [String: Any]? = nil
            for (i, c) in chunks.enumerated() {
                XCTAssertEqual(c["object"] as? String, "chat.completion.chunk")
                XCTAssertEqual(c["id"] as? String, chunks[0]["id"] as? String)
                if let u = c["usage"] as? [String: Any] { usage = u; XCTAssertEqual(i, chunks.count - 1); continue }
                let choice = firstChoice(c)
                let delta = object(choice["delta"])
                if i == 0 { XCTAssertEqual(delta["role"] as? String, "assistant") }
                text += delta["content"] as? String ?? ""
                if let f = choice["finish_reason"] as? String { finish = f }
            }
            XCTAssertEqual(text, expected)
            XCTAssertEqual(finish, firstChoice(full)["finish_reason"] as? String)
            XCTAssertEqual(usage?["completion_tokens"] as? Int, object(full["usage"])["completion_tokens"] as? Int)
            XCTAssertEqual(usage?["prompt_tokens"] as? Int, object(full["usage"])["prompt_tokens"] as? Int)
        }
    }

    func testCompletionsAndStreaming() async throws {
        let prompt = "The three primary colours are"
        let ids = try Shared.bundle.tokenizer.encode(prompt)
        let alone = try Shared.alone(ids, GenerateParameters(maxNewTokens: 12))
        try await app.test(.router) { client in
            let r = try await client.post("/v1/completions", json: ["model": self.model, "prompt": prompt, "max_tokens": 12, "temperature": 0])
            XCTAssertEqual(r.status, .ok, r.text)
            let d = try r.json()
            XCTAssertTrue((d["id"] as? String ?? "").hasPrefix("cmpl-"))
            XCTAssertEqual(d["object"] as? String, "text_completion")
            XCTAssertEqual(firstChoice(d)["text"] as? String, alone.text)
            XCTAssertEqual(firstChoice(d)["finish_reason"] as? String, alone.finishReason == .stop ? "stop" : "length")
            XCTAssertEqual(object(d["usage"])["prompt_tokens"] as? Int, ids.count)
            XCTAssertEqual(object(d["usage"])["completion_tokens"] as? Int, alone.tokens.count)

            // Token ids as the prompt give the same answer.
            let byIDs = try await client.post("/v1/completions", json: ["model": self.model, "prompt": ids, "max_tokens": 12, "temperature": 0])
            XCTAssertEqual(firstChoice(try byIDs.json())["text"] as? String, alone.text)

            let s = try await client.post("/v1/completions", json: ["model": self.model, "prompt": prompt, "max_tokens": 12,
                                                                  "temperature": 0, "stream": true])
            XCTAssertEqual(s.status, .ok)
            let events = s.sseData
            XCTAssertEqual(events.last, "[DONE]")
            var text = ""
            var finish: String? = nil
            for e in events.dropLast() {
                let c = try JSONSerialization.jsonObject(with: Data(e.utf8)) as! [String: Any]
                XCTAssertEqual(c["object"] as? String, "text_completion")
                text += firstChoice(c)["text"] as? String ?? ""
                if let f = firstChoice(c)["finish_reason"] as? String { finish = f }
            }
            XCTAssertEqual(text, alone.text)
            XCTAssertEqual(finish, alone.finishReason == .stop ? "stop" : "length")
        }
    }

    func testStopSequencesSeedAndLogprobs() async throws {
        try await app.test(.router) { client in
            // A stop string cuts the text and reports "stop".
            let r = try await client.post("/v1/chat/completions", json: [
                "model": self.model, "messages": [["role": "user", "content": self.france]], "temperature": 0, "stop": "Paris",
            ])
            XCTAssertEqual(object(firstChoice(try r.json())["message"])["content"] as? String, "The capital of France is ")
            XCTAssertEqual(firstChoice(try r.json())["finish_reason"] as? String, "stop")

            // max_tokens reached: "length".
            let short = try await client.post("/v1/chat/completions", json: [
                "model": self.model, "messages": [["role": "user", "content": self.france]], "temperature": 0, "max_completion_tokens": 3,
            ])
            XCTAssertEqual(firstChoice(try short.json())["finish_reason"] as? String, "length")
            XCTAssertEqual(object(try short.json()["usage"])["completion_tokens"] as? Int, 3)

            // Same seed, same text; sampling at temperature 1.
            let seeded: [String: Any] = ["model": self.model, "messages": [["role": "user", "content": "Tell me a story."]],
                                         "temperature": 1.0, "top_p": 0.9, "seed": 1234, "max_tokens": 16]
            let a = try await client.post("/v1/chat/completions", json: seeded)
            let b = try await client.post("/v1/chat/completions", json: seeded)
            XCTAssertEqual(a.status, .ok, a.text)
            XCTAssertEqual(object(firstChoice(try a.json())["message"])["content"] as? String,
                           object(firstChoice(try b.json())["message"])["content"] as? String)
            let p = GenerateParameters(maxNewTokens: 16, temperature: 1, topP: 0.9, seed: 1234)
            XCTAssertEqual(object(firstChoice(try a.json())["message"])["content"] as? String,
                           try Shared.alone(try Shared.chatIDs("Tell me a story."), p).text)

            // Logprobs: one entry per token with its alternatives.
            let l = try await client.post("/v1/chat/completions", json: [
                "model": self.model, "messages": [["role": "user", "content": self.france]], "temperature": 0,
                "logprobs": true, "top_logprobs": 3,
            ])
            let d = try l.json()
            let content = object(firstChoice(d)["logprobs"])["content"] as? [Any] ?? []
            XCTAssertEqual(content.count, object(d["usage"])["completion_tokens"] as? Int)
            for e in content.map(object) {
                XCTAssertLessThanOrEqual(e["logprob"] as? Double ?? 1, 0)
                XCTAssertEqual((e["top_logprobs"] as? [Any])?.count, 3)
                XCTAssertNotNil(e["bytes"] as? [Any])
            }
            XCTAssertEqual(object(content.first)["token"] as? String, "The")
            // The values are the library's for the same tokens (Generator alone, same greedy request), to the float.
            let lib = try XCTUnwrap(try Shared.alone(try Shared.chatIDs(self.france),
                                                     GenerateParameters(temperature: 0, logprobs: true, topLogprobs: 3)).logprobs)
            XCTAssertEqual(content.count, lib.count)
            let tok = try Shared.bundle.tokenizer
            for (i, (e, want)) in zip(content.map(object), lib).enumerated() {
                XCTAssertEqual((e["logprob"] as? Double).map(Float.init), want.logprob, "token \(i)")
                XCTAssertEqual(e["bytes"] as? [Int], tok.tokenBytes(want.id).map(Int.init), "token \(i)")
                let top = (e["top_logprobs"] as? [Any] ?? []).map(object)
                XCTAssertEqual(top.map { ($0["logprob"] as? Double).map(Float.init) }, want.top.map { Optional($0.logprob) }, "token \(i)")
                XCTAssertEqual(top.map { $0["bytes"] as? [Int] }, want.top.map { Optional(tok.tokenBytes($0.id).map(Int.init)) }, "token \(i)")
            }

            let c = try await client.post("/v1/completions", json: ["model": self.model, "prompt": "Paris is the capital of",
                                                                  "max_tokens": 4, "temperature": 0, "logprobs": 2])
            let cl = object(firstChoice(try c.json())["logprobs"])
            XCTAssertEqual((cl["tokens"] as? [Any])?.count, 4)
            XCTAssertEqual((cl["token_logprobs"] as? [Any])?.count, 4)
            XCTAssertEqual((cl["top_logprobs"] as? [[String: Any]])?.first?.count, 2)
            let libC = try XCTUnwrap(try Shared.alone(try tok.encode("Paris is the capital of"),
                                                      GenerateParameters(maxNewTokens: 4, temperature: 0, logprobs: true, topLogprobs: 2)).logprobs)
            XCTAssertEqual((cl["token_logprobs"] as? [Double] ?? []).map(Float.init), libC.map(\.logprob))
            XCTAssertEqual((cl["tokens"] as? [String] ?? []), libC.map { tok.tokenText($0.id) })
            for (i, (top, want)) in zip(cl["top_logprobs"] as? [[String: Double]] ?? [], libC).enumerated() {
                XCTAssertEqual(top.mapValues(Float.init), Dictionary(want.top.map { (tok.tokenText($0.id), $0.logprob) }) { a, _ in a },
                               "completion token \(i)")
            }
        }
    }

    /// Bad input gets an OpenAI-style 4xx and the server keeps serving.
    func testErrors() async throws {
        try await app.test(.router) { client in
            let chat = "/v1/chat/completions"
            let msgs = [["role": "user", "content": "Hi"]]
            func check(_ r: TestResponse, _ status: HTTPResponse.Status, param: String?, code: String? = nil,
                       file: StaticString = #filePath, line: UInt = #line) throws {
                XCTAssertEqual(r.status, status, r.text, file: file, line: line)
                XCTAssertEqual(r.headers[.contentType], "application/json", file: file, line: line)
                let e = try r.apiError(file: file, line: line)
                XCTAssertEqual(e["param"] as? String, param, r.text, file: file, line: line)
                if let code { XCTAssertEqual(e["code"] as? String, code, r.text, file: file, line: line) }
            }
            try check(try await client.post(chat, raw: "{\"model\": "), .badRequest, param: nil, code: "invalid_json")
            try check(try await client.post(chat, raw: ""), .badRequest, param: nil, code: "invalid_json")
            try check(try await client.post(chat, raw: "[1, 2]"), .badRequest, param: nil, code: "invalid_json")
            try check(try await client.post(chat, json: ["messages": msgs]), .badRequest, param: "model", code: "missing_required_parameter")
            try check(try await client.post(chat, json: ["model": 7, "messages": msgs]), .badRequest, param: "model", code: "invalid_type")
            try check(try await client.post(chat, json: ["model": "gpt-4o", "messages": msgs]), .notFound, param: "model", code: "model_not_found")
            try check(try await client.post(chat, json: ["model": self.model]), .badRequest, param: "messages", code: "missing_required_parameter")
            try check(try await client.post(chat, json: ["model": self.model, "messages": []]), .badRequest, param: "messages")
            try check(try await client.post(chat, json: ["model": self.model, "messages": "Hi"]), .badRequest, param: "messages", code: "invalid_type")
            try check(try await client.post(chat, json: ["model": self.model, "messages": [["content": "Hi"]]]), .badRequest, param: "messages[0].role")
            try check(try await client.post(chat, json: ["model": self.model, "messages": [["role": "wizard", "content": "Hi"]]]),
                      .badRequest, param: "messages[0].role")
            try check(try await client.post(chat, json: ["model": self.model, "messages": [["role": "user", "content": 5]]]),
                      .badRequest, param: "messages[0].content", code: "invalid_type")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "temperature": "hot"]),
                      .badRequest, param: "temperature", code: "invalid_type")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "temperature": 5]), .badRequest, param: "temperature")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "top_p": 0]), .badRequest, param: "top_p")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "max_tokens": -5]), .badRequest, param: "max_tokens")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "max_tokens": 0]), .badRequest, param: "max_tokens")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "max_tokens": 1.5]),
                      .badRequest, param: "max_tokens", code: "invalid_type")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "max_tokens": 1_000_000_000]),
                      .badRequest, param: "max_tokens", code: "context_length_exceeded")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "max_tokens": 500]),
                      .badRequest, param: "max_tokens", code: "context_length_exceeded")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "n": 0]), .badRequest, param: "n")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "stream": "yes"]),
                      .badRequest, param: "stream", code: "invalid_type")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "stop": [1]]), .badRequest, param: "stop[0]")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "top_logprobs": 2]),
                      .badRequest, param: "top_logprobs")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "stream_options": ["include_usage": true]]),
                      .badRequest, param: "stream_options")
            try check(try await client.post(chat, json: ["model": self.model, "messages": msgs, "presence_penalty": 2.5]),
                      .badRequest, param: "presence_penalty")
            let long = String(repeating: "the quick brown fox jumps over the lazy dog ", count: 80)
            try check(try await client.post(chat, json: ["model": self.model, "messages": [["role": "user", "content": long]]]),
                      .badRequest, param: "messages", code: "context_length_exceeded")
            try check(try await client.post("/v1/completions", json: ["model": self.model, "prompt": long]),
                      .badRequest, param: "prompt", code: "context_length_exceeded")
            try check(try await client.post("/v1/completions", json: ["model": self.model]), .badRequest, param: "prompt",
                      code: "missing_required_parameter")
            try check(try await client.post("/v1/completions", json: ["model": self.model, "prompt": ""]), .badRequest, param: "prompt")
            try check(try await client.post("/v1/completions", json: ["model": self.model, "prompt": [1, 99_999_999]]), .badRequest, param: "prompt")
            try check(try await client.post("/v1/completions", json: ["model": self.model, "prompt": ["a", []]]), .badRequest, param: "prompt[1]")
            try check(try await client.post("/v1/completions", json: ["model": self.model, "prompt": true]), .badRequest, param: "prompt",
                      code: "invalid_type")
            let huge = "{\"model\": \"\(self.model)\", \"prompt\": \"" + String(repeating: "a", count: 70_000) + "\"}"
            try check(try await client.post("/v1/completions", raw: huge), .contentTooLarge, param: nil, code: "request_too_large")
            try check(try await client.execute(uri: "/v1/nothing", method: .get), .notFound, param: nil)

            // Still serving.
            let ok = try await client.post(chat, json: ["model": self.model, "messages": msgs, "temperature": 0, "max_tokens": 4])
            XCTAssertEqual(ok.status, .ok, ok.text)
        }
    }

    func testAPIKey() async throws {
        var config = Shared.config
        config.apiKey = "sekrit"
        let app = try buildApplication(bundle: Shared.bundle, config: config)
        try await app.test(.router) { client in
            let body: [String: Any] = ["model": self.model, "messages": [["role": "user", "content": "Hi"]], "max_tokens": 2]
            let none = try await client.post("/v1/chat/completions", json: body)
            XCTAssertEqual(none.status, .unauthorized)
            XCTAssertEqual(try none.apiError()["code"] as? String, "invalid_api_key")
            let wrong = try await client.post("/v1/chat/completions", json: body, headers: [.authorization: "Bearer nope"])
            XCTAssertEqual(wrong.status, .unauthorized)
            let models = try await client.execute(uri: "/v1/models", method: .get)
            XCTAssertEqual(models.status, .unauthorized)
            let right = try await client.post("/v1/chat/completions", json: body, headers: [.authorization: "Bearer sekrit"])
            XCTAssertEqual(right.status, .ok, right.text)
            let health = try await client.execute(uri: "/health", method: .get)
            XCTAssertEqual(health.status, .ok)
        }
    }

    func testQueueFullGives429() async throws {
        let config = ServerConfiguration(maxSequences: 1, context: 256, maxTokensPerStep: 64, maxQueue: 0)
        let service = try OpenAIService(bundle: Shared.bundle, configuration: config)
        let app = buildApplication(service: service, ownsScheduler: true)
        let model = service.modelID
        try await app.test(.router) { client in
            let long: [String: Any] = ["model": model, "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": true,
                                       "temperature": 0]
            let first = Task { try await client.post("/v1/completions", json: long) }
            while service.scheduler.metrics.running == 0 { try await Task.sleep(nanoseconds: 5_000_000) }
            let r = try await client.post("/v1/completions", json: ["model": model, "prompt": "Hi", "max_tokens": 2])
            XCTAssertEqual(r.status, .tooManyRequests, r.text)
            XCTAssertNotNil(r.headers[.retryAfter].flatMap { Int($0) })
            XCTAssertEqual(try r.apiError()["code"] as? String, "rate_limit_exceeded")
            let f = try await first.value
            XCTAssertEqual(f.status, .ok)
            XCTAssertEqual(object(try f.json()["usage"])["completion_tokens"] as? Int, 200)
            XCTAssertEqual(firstChoice(try f.json())["finish_reason"] as? String, "length")
            // Free again.
            let again = try await client.post("/v1/completions", json: ["model": model, "prompt": "Hi", "max_tokens": 2])
            XCTAssertEqual(again.status, .ok, again.text)
        }
        XCTAssertEqual(service.scheduler.metrics.rejected, 1)
    }

    func testMetrics() async throws {
        try await app.test(.router) { client in
            _ = try await client.post("/v1/chat/completions", json: ["model": self.model, "messages": [["role": "user", "content": "Hi"]],
                                                                     "max_tokens": 3, "temperature": 0])
            _ = try await client.post("/v1/chat/completions", json: ["model": "nope", "messages": [["role": "user", "content": "Hi"]]])
            let r = try await client.execute(uri: "/metrics", method: .get)
            XCTAssertEqual(r.status, .ok)
            XCTAssertTrue(r.headers[.contentType]?.hasPrefix("text/plain") ?? false)
            let t = r.text
            for needle in [
                #"causal_requests_total{endpoint="/v1/chat/completions",status="200"}"#,
                #"causal_requests_total{endpoint="/v1/chat/completions",status="404"}"#,
                "# TYPE causal_prompt_tokens_total counter", "causal_generation_tokens_total ",
                "causal_running_sequences 0", "causal_queued_requests 0",
                "# TYPE causal_step_batch_tokens histogram", #"causal_step_batch_sequences_bucket{le="+Inf"}"#,
                "# TYPE causal_time_to_first_token_seconds histogram", "causal_inter_token_latency_seconds_count",
            ] {
                XCTAssertTrue(t.contains(needle), "metrics lack \(needle)")
            }
        }
    }
}
