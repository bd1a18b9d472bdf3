import CausalLM
import CausalServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// `response_format` on `/v1/completions` (as on chat): the output is the library's constrained generation of the same
/// prompt, with n > 1 and streaming too; the same 400s as chat; and a budget that ends first gives `length` with the
/// unfinished output returned (no bound is put on an unconstrained string).
final class StructuredOutputTests: XCTestCase {
    var app: some ApplicationProtocol { buildApplication(service: Shared.service) }
    var model: String { Shared.modelID }

    static let schema = #"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}}, "required": ["name", "age"]}"#
    static let prompt = "Ann is 31 years old. Her record as JSON:"

    func completion(_ client: some TestClientProtocol, _ fields: String) async throws -> TestResponse {
        try await client.post("/v1/completions", raw: #"{"model": "\#(model)", "prompt": "\#(Self.prompt)", "#
            + #""response_format": {"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": \#(Self.schema)}}, "#
            + fields + "}")
    }

    func texts(_ d: [String: Any]) -> [String] { (d["choices"] as? [Any] ?? []).map { object($0)["text"] as? String ?? "?" } }

    func checkPerson(_ text: String, file: StaticString = #filePath, line: UInt = #line) {
        let o = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
        XCTAssertEqual(Set(o?.keys.map { $0 } ?? []), ["name", "age"], text, file: file, line: line)
        XCTAssertNotNil(o?["name"] as? String, text, file: file, line: line)
        XCTAssertTrue(o?["age"] is NSNumber && !(o?["age"] is Bool), text, file: file, line: line)
    }

    func testJSONSchemaOnCompletions() async throws {
        let constraint = try GrammarConstraint.jsonSchema(Self.schema, tokenizer: Shared.bundle.tokenizer)
        let ids = try Shared.bundle.tokenizer.encode(Self.prompt)
        let want = try Shared.alone(ids, GenerateParameters(maxNewTokens: 60, temperature: 0, constraint: constraint))
        try await app.test(.router) { client in
            // Greedy: the library's constrained generation of the same prompt.
            let r = try await self.completion(client, #""temperature": 0, "max_tokens": 60"#)
            XCTAssertEqual(r.status, .ok, r.text)
            let d = try r.json()
            XCTAssertEqual(self.texts(d), [want.text])
            XCTAssertEqual(firstChoice(d)["finish_reason"] as? String, "stop")
            self.checkPerson(want.text)
            // Streamed: the same text.
            let s = try await self.completion(client, #""temperature": 0, "max_tokens": 60, "stream": true"#)
            var streamed = ""
            for e in s.sseData where e != "[DONE]" {
                streamed += firstChoice(try JSONSerialization.jsonObject(with: Data(e.utf8)) as? [String: Any] ?? [:])["text"] as? String ?? ""
            }
            XCTAssertEqual(streamed, want.text)

            // n = 3 sampled: every choice valid; streamed, the same texts under their indexes.
            let n = try await self.completion(client, #""temperature": 1, "seed": 5, "max_tokens": 60, "n": 3"#)
            XCTAssertEqual(n.status, .ok, n.text)
            let nd = try n.json()
            let texts = self.texts(nd)
            XCTAssertEqual(texts.count, 3)
            for (c, t) in zip(nd["choices"] as? [Any] ?? [], texts) {
                XCTAssertEqual(object(c)["finish_reason"] as? String, "stop", n.text)
                self.checkPerson(t)
            }
            let ns = try await self.completion(client, #""temperature": 1, "seed": 5, "max_tokens": 60, "n": 3, "stream": true"#)
            var byIndex: [Int: String] = [:]
            for e in ns.sseData where e != "[DONE]" {
                for c in (try JSONSerialization.jsonObject(with: Data(e.utf8)) as? [String: Any] ?? [:])["choices"] as? [Any] ?? [] {
                    byIndex[object(c)["index"] as? Int ?? -1, default: ""] += object(c)["text"] as? String ?? ""
                }
            }
            XCTAssertEqual([byIndex[0], byIndex[1], byIndex[2]], texts.map { Optional($0) })

            // json_object: any object; a list of prompts, one constrained choice each.
            let jo = try await client.post("/v1/completions", json: ["model": self.model, "prompt": ["A JSON object:", "Some JSON:"], "temperature": 0,
                                                                      "max_tokens": 40, "response_format": ["type": "json_object"]])
            XCTAssertEqual(jo.status, .ok, jo.text)
            let objectConstraint = try GrammarConstraint.jsonObject(tokenizer: Shared.bundle.tokenizer)
            for (i, t) in self.texts(try jo.json()).enumerated() {
                let alone = try Shared.alone(try Shared.bundle.tokenizer.encode(i == 0 ? "A JSON object:" : "Some JSON:"),
                                             GenerateParameters(maxNewTokens: 40, temperature: 0, constraint: objectConstraint))
                XCTAssertEqual(t, alone.text)
                XCTAssertTrue(objectConstraint.acceptsPrefix(Array(t.utf8)), t)
            }
            // {"type": "text"}: unconstrained, as without it.
            let plain = try await client.post("/v1/completions", json: ["model": self.model, "prompt": Self.prompt, "temperature": 0, "max_tokens": 8,
                                                                        "response_format": ["type": "text"]])
            let unconstrained = try Shared.alone(ids, GenerateParameters(maxNewTokens: 8, temperature: 0))
            XCTAssertEqual(self.texts(try plain.json()), [unconstrained.text])
        }
    }

    /// A budget that ends inside the JSON: finish_reason `length` and the unfinished output (a prefix of a valid one)
    /// returned, on completions and chat, streamed or not. The schema's every valid output (a string of at least 1000
    /// characters) is longer than 12 tokens of the vocabulary's longest token (SmolLM2: 81 bytes) can be, so the budget
    /// surely ends first, whatever the model writes.
    func testLengthReturnsTheUnfinishedOutput() async throws {
        let tok = try Shared.bundle.tokenizer
        let longestID = (0..<tok.vocabularySize).max { tok.tokenBytes($0).count < tok.tokenBytes($1).count } ?? 0
        let longest = tok.tokenBytes(longestID).count
        XCTAssertLessThan(12 * longest, 1000, "12 tokens could hold a whole output: token \(longestID) has \(longest) bytes")
        try await app.test(.router) { client in
            let stringSchema = #"{"type": "object", "properties": {"story": {"type": "string", "minLength": 1000}}, "required": ["story"]}"#
            let constraint = try GrammarConstraint.jsonSchema(stringSchema, tokenizer: tok)
            let rf = #""response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": \#(stringSchema)}}"#
            for stream in [false, true] {
                let usage = stream ? #""stream_options": {"include_usage": true}, "# : ""
                let c = try await client.post("/v1/completions", raw: #"{"model": "\#(self.model)", "prompt": "Tell a long story as JSON:", "temperature": 0, "max_tokens": 12, "stream": \#(stream), \#(usage)"#
                    + rf + "}")
                let h = try await client.post("/v1/chat/completions", raw: #"{"model": "\#(self.model)", "messages": [{"role": "user", "content": "Tell a long story."}], "temperature": 0, "max_tokens": 12, "stream": \#(stream), \#(usage)"#
                    + rf + "}")
                for (r, chat) in [(c, false), (h, true)] {
                    XCTAssertEqual(r.status, .ok, r.text)
                    var text = "", finish: String? = nil, tokens: Int? = nil
                    if stream {
                        for e in r.sseData where e != "[DONE]" {
                            let d = try JSONSerialization.jsonObject(with: Data(e.utf8)) as? [String: Any] ?? [:]
                            if let u = d["usage"] as? [String: Any] { tokens = u["completion_tokens"] as? Int }
                            let ch = firstChoice(d)
                            text += (chat ? object(ch["delta"])["content"] as? String : ch["text"] as? String) ?? ""
                            if let f = ch["finish_reason"] as? String { finish = f }
                        }
                    } else {
                        let d = try r.json()
                        let ch = firstChoice(d)
                        text = (chat ? object(ch["message"])["content"] as? String : ch["text"] as? String) ?? ""
                        finish = ch["finish_reason"] as? String
                        tokens = object(d["usage"])["completion_tokens"] as? Int
                    }
                    XCTAssertEqual(finish, "length", "chat \(chat) stream \(stream): \(r.text)")
                    XCTAssertEqual(tokens, 12)
                    XCTAssertTrue(text.hasPrefix("{"), text)
                    XCTAssertTrue(constraint.acceptsPrefix(Array(text.utf8)), text)
                    XCTAssertFalse(constraint.matches(text), text)
                }
            }
        }
    }

    /// The same 400s as chat; tools stay chat-only.
    func testCompletionsResponseFormatErrors() async throws {
        try await app.test(.router) { client in
            let cases: [([String: Any], String, String)] = [
                (["type": "json_schema", "json_schema": ["name": "x", "schema": ["type": "object", "properties": ["a": ["not": ["type": "string"]]]]]],
                 "response_format.json_schema.schema", "invalid_schema"),
                (["type": "json_schema", "json_schema": ["name": "x"]], "response_format.json_schema.schema", "missing_required_parameter"),
                (["type": "json_schema"], "response_format.json_schema", "missing_required_parameter"),
                (["type": "yaml"], "response_format.type", "invalid_value"),
                ([:], "response_format.type", "missing_required_parameter"),
            ]
            for (rf, param, code) in cases {
                let r = try await client.post("/v1/completions", json: ["model": self.model, "prompt": "x", "response_format": rf])
                XCTAssertEqual(r.status, .badRequest, r.text)
                let e = try r.apiError()
                XCTAssertEqual(e["param"] as? String, param, r.text)
                XCTAssertEqual(e["code"] as? String, code, r.text)
            }
            let r = try await client.post("/v1/completions", json: ["model": self.model, "prompt": "x", "response_format": "json"])
            XCTAssertEqual(try r.apiError()["param"] as? String, "response_format")
            for key in ["tools", "tool_choice"] {
                let t = try await client.post("/v1/completions", json: ["model": self.model, "prompt": "x", key: "none"])
                XCTAssertEqual(t.status, .badRequest)
                XCTAssertEqual(try t.apiError()["param"] as? String, key)
            }
        }
    }
}
