import CausalLM
import CausalServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// Prompt scoring (echo + logprobs, max_tokens 0), prompt lists, n > 1, best_of, OpenAI's penalties and logit_bias,
/// and the tokenizer endpoints, against the library's own answers on the default model.
final class ChoicesTests: XCTestCase {
    var app: some ApplicationProtocol { buildApplication(service: Shared.service) }
    var model: String { Shared.modelID }
    var tok: any TextTokenizer { try! Shared.bundle.tokenizer }

    func completion(_ client: some TestClientProtocol, _ body: [String: Any], file: StaticString = #filePath,
                    line: UInt = #line) async throws -> [String: Any] {
        var b = body
        b["model"] = model
        let r = try await client.post("/v1/completions", json: b)
        XCTAssertEqual(r.status, .ok, r.text, file: file, line: line)
        return try r.json(file: file, line: line)
    }

    func choices(_ d: [String: Any]) -> [[String: Any]] { (d["choices"] as? [Any] ?? []).map(object) }

    /// echo + logprobs + max_tokens 0: the prompt's tokens with their log-probabilities (the first null) and
    /// alternatives, equal to what the same tokens get when the library generates them greedily one by one.
    func testEchoScoresThePromptAsGreedyGenerationDoes() async throws {
        let start = try tok.encode("The capital of France is")
        let gen = try Shared.alone(start, GenerateParameters(maxNewTokens: 8, stopAtEOS: false, logprobs: true, topLogprobs: 3))
        let lib = try XCTUnwrap(gen.logprobs)
        XCTAssertEqual(lib.count, 8)
        let prompt = start + gen.tokens
        try await app.test(.router) { client in
            let d = try await self.completion(client, ["prompt": prompt, "echo": true, "logprobs": 3, "max_tokens": 0, "temperature": 0])
            let c = self.choices(d)
            XCTAssertEqual(c.count, 1)
            XCTAssertEqual(c[0]["text"] as? String, try self.tok.decode(prompt, skipSpecial: false))
            XCTAssertEqual(c[0]["finish_reason"] as? String, "length")
            XCTAssertEqual(object(d["usage"])["completion_tokens"] as? Int, 0)
            XCTAssertEqual(object(d["usage"])["prompt_tokens"] as? Int, prompt.count)
            let lp = object(c[0]["logprobs"])
            let tokens = lp["tokens"] as? [String] ?? []
            let values = lp["token_logprobs"] as? [Any] ?? []
            let tops = lp["top_logprobs"] as? [Any] ?? []
            XCTAssertEqual(tokens, prompt.map { self.tok.tokenText($0) })
            XCTAssertEqual(values.count, prompt.count)
            XCTAssertTrue(values.first is NSNull, "the first prompt token has no log-probability")
            XCTAssertTrue(tops.first is NSNull)
            var worst: Float = 0
            for (i, want) in lib.enumerated() {
                let k = start.count + i
                let got = try XCTUnwrap((values[k] as? Double).map(Float.init), "token \(k)")
                worst = max(worst, abs(got - want.logprob))
                XCTAssertEqual(got, want.logprob, accuracy: 1e-5, "token \(k)")
                let top = (tops[k] as? [String: Double] ?? [:]).mapValues(Float.init)
                let wantTop = Dictionary(want.top.map { (self.tok.tokenText($0.id), $0.logprob) }) { a, _ in a }
                XCTAssertEqual(Set(top.keys), Set(wantTop.keys), "token \(k)")
                for (key, v) in wantTop { XCTAssertEqual(top[key] ?? 1, v, accuracy: 1e-5, "token \(k) alternative \(key)") }
                // Greedy: the token is its position's most likely one.
                XCTAssertEqual(got, top.values.max() ?? 1, accuracy: 1e-6, "token \(k)")
            }
            print("echo scoring vs greedy generation: max |diff| = \(worst) over \(lib.count) tokens")
            // text_offset: where each token starts in the text.
            let offsets = lp["text_offset"] as? [Int] ?? []
            XCTAssertEqual(offsets.count, prompt.count)
            XCTAssertEqual(offsets.first, 0)
            for i in 1..<offsets.count { XCTAssertEqual(offsets[i], offsets[i - 1] + tokens[i - 1].count) }

            // echo with new tokens: the prompt's entries, then the generated ones (as the library generates them).
            let d2 = try await self.completion(client, ["prompt": start, "echo": true, "logprobs": 1, "max_tokens": 8,
                                                        "temperature": 0, "ignore_eos": true])
            let c2 = self.choices(d2)[0]
            XCTAssertEqual(c2["text"] as? String, try self.tok.decode(start, skipSpecial: false) + gen.text)
            let v2 = object(c2["logprobs"])["token_logprobs"] as? [Any] ?? []
            XCTAssertEqual(v2.count, start.count + 8)
            XCTAssertEqual(v2.suffix(8).map { ($0 as? Double).map(Float.init) }, lib.map { Optional($0.logprob) })
            for k in 1..<start.count {
                XCTAssertEqual(Float(v2[k] as? Double ?? 1), Float(values[k] as? Double ?? 2), "prompt token \(k)")
            }

            // echo without logprobs: the prompt's text then the answer; no logprobs.
            let d3 = try await self.completion(client, ["prompt": "The capital of France is", "echo": true, "max_tokens": 8,
                                                        "temperature": 0, "ignore_eos": true])
            XCTAssertEqual(self.choices(d3)[0]["text"] as? String, "The capital of France is" + gen.text)
            XCTAssertTrue(self.choices(d3)[0]["logprobs"] is NSNull)
        }
    }

    /// A list of prompts (strings or token-id arrays) answers one choice per prompt, in order, each as alone.
    func testPromptListsGiveOneChoiceEach() async throws {
        let texts = ["One, two, three,", "The sky is", "Water boils at"]
        let ids = try texts.map { try tok.encode($0) }
        let alone = try ids.map { try Shared.alone($0, GenerateParameters(maxNewTokens: 6)) }
        try await app.test(.router) { client in
            for prompt in [texts as Any, ids as Any] {
                let d = try await self.completion(client, ["prompt": prompt, "max_tokens": 6, "temperature": 0])
                let c = self.choices(d)
                XCTAssertEqual(c.map { $0["index"] as? Int }, [0, 1, 2])
                XCTAssertEqual(c.map { $0["text"] as? String }, alone.map { Optional($0.text) })
                XCTAssertEqual(object(d["usage"])["prompt_tokens"] as? Int, ids.reduce(0) { $0 + $1.count })
                XCTAssertEqual(object(d["usage"])["completion_tokens"] as? Int, alone.reduce(0) { $0 + $1.tokens.count })
            }
            // Streaming: each chunk names its choice; the texts put together per index equal the answers.
            let s = try await client.post("/v1/completions", json: ["model": self.model, "prompt": texts, "max_tokens": 6,
                                                                  "temperature": 0, "stream": true])
            XCTAssertEqual(s.status, .ok)
            var text = [String](repeating: "", count: 3)
            var finish = [String?](repeating: nil, count: 3)
            XCTAssertEqual(s.sseData.last, "[DONE]")
            for e in s.sseData.dropLast() {
                let c = firstChoice(try JSONSerialization.jsonObject(with: Data(e.utf8)) as! [String: Any])
                let i = try XCTUnwrap(c["index"] as? Int)
                text[i] += c["text"] as? String ?? ""
                if let f = c["finish_reason"] as? String { finish[i] = f }
            }
            XCTAssertEqual(text, alone.map(\.text))
            XCTAssertEqual(finish, alone.map { $0.finishReason == .stop ? "stop" : "length" })
        }
    }

    /// n = 3 with a seed: three choices, choice i as the library samples with seed + i; the same request again gives
    /// the same choices. best_of returns the sequence with the highest cumulative log-probability.
    func testNChoicesAndBestOf() async throws {
        let prompt = "Once upon a time"
        let ids = try tok.encode(prompt)
        let p = GenerateParameters(maxNewTokens: 10, temperature: 1, logprobs: true)
        let alone = try (0..<3).map { i -> GenerationResult in
            var q = p
            q.seed = 77 &+ UInt64(i)
            return try Shared.alone(ids, q)
        }
        try await app.test(.router) { client in
            let body: [String: Any] = ["prompt": prompt, "max_tokens": 10, "temperature": 1, "seed": 77, "n": 3]
            let a = try await self.completion(client, body)
            let b = try await self.completion(client, body)
            let ta = self.choices(a).map { $0["text"] as? String ?? "<none>" }
            XCTAssertEqual(self.choices(a).map { $0["index"] as? Int }, [0, 1, 2])
            XCTAssertEqual(ta, alone.map(\.text))
            XCTAssertEqual(ta, self.choices(b).map { $0["text"] as? String ?? "<none>" })
            XCTAssertGreaterThan(Set(ta).count, 1, "three seeds gave the same text: \(ta)")

            // Chat too.
            let chatIDs = try Shared.chatIDs("Tell me a joke.")
            let chatAlone = try (0..<3).map { i in
                try Shared.alone(chatIDs, GenerateParameters(maxNewTokens: 10, temperature: 1, seed: 5 &+ UInt64(i)))
            }
            let r = try await client.post("/v1/chat/completions", json: [
                "model": self.model, "messages": [["role": "user", "content": "Tell me a joke."]], "max_tokens": 10,
                "temperature": 1, "seed": 5, "n": 3,
            ])
            XCTAssertEqual(r.status, .ok, r.text)
            let cc = self.choices(try r.json())
            XCTAssertEqual(cc.map { $0["index"] as? Int }, [0, 1, 2])
            XCTAssertEqual(cc.map { object($0["message"])["content"] as? String }, chatAlone.map { Optional($0.text) })

            // best_of 3, n 1: the highest sum of log-probabilities among the three seeded sequences; no logprobs
            // unless asked.
            let best = alone.max { x, y in
                x.logprobs!.reduce(0.0) { $0 + Double($1.logprob) } < y.logprobs!.reduce(0.0) { $0 + Double($1.logprob) }
            }!
            let bo = try await self.completion(client, ["prompt": prompt, "max_tokens": 10, "temperature": 1, "seed": 77, "best_of": 3])
            XCTAssertEqual(self.choices(bo).count, 1)
            XCTAssertEqual(self.choices(bo)[0]["text"] as? String, best.text)
            XCTAssertTrue(self.choices(bo)[0]["logprobs"] is NSNull)
            XCTAssertEqual(object(bo["usage"])["completion_tokens"] as? Int, alone.reduce(0) { $0 + $1.tokens.count })
        }
    }

    /// presence/frequency penalties, repetition_penalty, min_p, top_k and logit_bias reach the sampler per request.
    func testSamplingParametersAndLogitBias() async throws {
        let prompt = "List the numbers: one, two, three, four,"
        let ids = try tok.encode(prompt)
        let p = GenerateParameters(maxNewTokens: 12, temperature: 0.8, topK: 20, minP: 0.05, repetitionPenalty: 1.1, seed: 3,
                                   presencePenalty: 1.5, frequencyPenalty: 0.7)
        let want = try Shared.alone(ids, p)
        let plain = try Shared.alone(ids, GenerateParameters(maxNewTokens: 12, temperature: 0.8, topK: 20, minP: 0.05,
                                                             repetitionPenalty: 1.1, seed: 3))
        XCTAssertNotEqual(want.tokens, plain.tokens, "the penalties changed nothing; pick another prompt")
        let banned = plain.tokens[0]
        let biased = try Shared.alone(ids, GenerateParameters(maxNewTokens: 4, logitBias: [banned: -100]))
        try await app.test(.router) { client in
            let d = try await self.completion(client, ["prompt": prompt, "max_tokens": 12, "temperature": 0.8, "top_k": 20,
                                                       "min_p": 0.05, "repetition_penalty": 1.1, "seed": 3,
                                                       "presence_penalty": 1.5, "frequency_penalty": 0.7])
            XCTAssertEqual(self.choices(d)[0]["text"] as? String, want.text)
            // A bias of +100 forces a token; -100 bans it.
            let forced = try await self.completion(client, ["prompt": prompt, "max_tokens": 5, "temperature": 0,
                                                            "logit_bias": ["\(banned)": 100], "logprobs": 0])
            let toks = object(self.choices(forced)[0]["logprobs"])["tokens"] as? [String] ?? []
            XCTAssertEqual(toks, Array(repeating: self.tok.tokenText(banned), count: 5))
            let ban = try await self.completion(client, ["prompt": prompt, "max_tokens": 4, "temperature": 0,
                                                         "logit_bias": ["\(banned)": -100]])
            XCTAssertEqual(self.choices(ban)[0]["text"] as? String, biased.text)
            XCTAssertNotEqual(biased.tokens.first, banned)
        }
    }

    func testTokenizerEndpoints() async throws {
        let text = "Hello <|im_start|>world, 1 + 1 = 2."
        let ids = try tok.encode(text)
        try await app.test(.router) { client in
            let r = try await client.post("/tokenize", json: ["prompt": text, "add_special_tokens": false])
            XCTAssertEqual(r.status, .ok, r.text)
            let d = try r.json()
            XCTAssertEqual(d["tokens"] as? [Int], ids)
            XCTAssertEqual(d["count"] as? Int, ids.count)
            XCTAssertEqual(d["max_model_len"] as? Int, 512)
            XCTAssertTrue(d["token_strs"] is NSNull)
            let strs = try await client.post("/tokenize", json: ["model": self.model, "prompt": "Hi there", "return_token_strs": true])
            XCTAssertEqual(try strs.json()["token_strs"] as? [String], try self.tok.encode("Hi there").map { self.tok.tokenString($0)! })

            let chat = try await client.post("/tokenize", json: ["messages": [["role": "user", "content": "Hi"]]])
            XCTAssertEqual(try chat.json()["tokens"] as? [Int], try Shared.chatIDs("Hi"))

            let back = try await client.post("/detokenize", json: ["tokens": ids])
            XCTAssertEqual(back.status, .ok, back.text)
            XCTAssertEqual(try back.json()["prompt"] as? String, text)

            let info = try await client.execute(uri: "/tokenizer_info", method: .get)
            XCTAssertEqual(info.status, .ok)
            let i = try info.json()
            let eos = try XCTUnwrap(self.tok.eosTokenID)
            XCTAssertEqual(i["eos_token"] as? String, self.tok.tokenString(eos))
            XCTAssertEqual(i["eos_token_id"] as? Int, eos)
            XCTAssertEqual(i["model_max_length"] as? Int, 512)
            XCTAssertEqual(i["vocab_size"] as? Int, self.tok.vocabularySize)
            XCTAssertEqual(i["chat_template"] as? String, Shared.bundle.chatTemplate?.source)
            XCTAssertTrue(i.keys.contains("bos_token") && i.keys.contains("pad_token"))

            // Errors name the field.
            func check(_ r: TestResponse, _ status: HTTPResponse.Status, param: String, file: StaticString = #filePath, line: UInt = #line) throws {
                XCTAssertEqual(r.status, status, r.text, file: file, line: line)
                XCTAssertEqual(try r.apiError(file: file, line: line)["param"] as? String, param, file: file, line: line)
            }
            try check(try await client.post("/tokenize", json: ["add_special_tokens": false]), .badRequest, param: "prompt")
            try check(try await client.post("/tokenize", json: ["prompt": 5]), .badRequest, param: "prompt")
            try check(try await client.post("/tokenize", json: ["prompt": "a", "model": "gpt-9"]), .notFound, param: "model")
            try check(try await client.post("/detokenize", json: ["tokens": [1, -4]]), .badRequest, param: "tokens")
            try check(try await client.post("/detokenize", json: ["tokens": "abc"]), .badRequest, param: "tokens")
        }
    }

    func testChoiceErrors() async throws {
        try await app.test(.router) { client in
            func check(_ body: [String: Any], param: String, endpoint: String = "/v1/completions",
                       file: StaticString = #filePath, line: UInt = #line) async throws {
                var b = body
                b["model"] = self.model
                if endpoint == "/v1/completions" && b["prompt"] == nil { b["prompt"] = "Hi" }
                if endpoint != "/v1/completions" { b["messages"] = [["role": "user", "content": "Hi"]] }
                let r = try await client.post(endpoint, json: b)
                XCTAssertEqual(r.status, .badRequest, r.text, file: file, line: line)
                XCTAssertEqual(try r.apiError(file: file, line: line)["param"] as? String, param, r.text, file: file, line: line)
            }
            try await check(["n": 0], param: "n")
            try await check(["n": 1000], param: "n")
            try await check(["n": 3, "best_of": 2], param: "best_of")
            try await check(["best_of": 3, "stream": true], param: "best_of")
            try await check(["max_tokens": 0], param: "max_tokens")
            try await check(["prompt": ["a", 1]], param: "prompt[1]")
            try await check(["prompt": ["a", ""]], param: "prompt")
            try await check(["prompt": Array(repeating: "a", count: 300)], param: "prompt")
            try await check(["prompt": Array(repeating: "a", count: 100), "n": 3], param: "n")
            try await check(["logit_bias": ["abc": 1]], param: "logit_bias")
            try await check(["logit_bias": ["99999999": 1]], param: "logit_bias")
            try await check(["logit_bias": ["5": 101]], param: "logit_bias")
            try await check(["logit_bias": ["5": "x"]], param: "logit_bias.5")
            try await check(["presence_penalty": 3], param: "presence_penalty")
            try await check(["frequency_penalty": "x"], param: "frequency_penalty")
        }
    }
}
