import CausalLM
import CausalServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// Qwen2.5-Coder-0.5B-Instruct (its template renders the tools) under `tool_choice: auto` answers a weather question
/// with a fenced ```json {"name": ..., "arguments": {...}} ``` block instead of `<tool_call>` tags: the server reads it
/// as the call, whole and streamed. Runs only when the model is already in the cache (`causal pull
/// qwen2.5-coder-0.5b-instruct`); skipped otherwise, so CI does not download it.
final class QwenToolCallTests: XCTestCase {
    func testQwenCoderFencedJSONIsReadAsACall() async throws {
        guard let entry = ModelRegistry.model(named: "qwen2.5-coder-0.5b-instruct"), let path = ModelRegistry.cachedPath(of: entry) else {
            throw XCTSkip("qwen2.5-coder-0.5b-instruct is not in the model cache (causal pull qwen2.5-coder-0.5b-instruct)")
        }
        let bundle = try ModelBundle(path: path)
        let service = try OpenAIService(bundle: bundle, configuration: ServerConfiguration(maxSequences: 2, context: 1024, maxTokensPerStep: 512,
                                                                                           logLevel: .warning))
        // The tools as fixed JSON text: the template prints them as given, so key order is part of the prompt (a
        // Swift dictionary serialized by JSONSerialization changes its key order from one process to the next, and
        // with it what the model writes).
        let body = #"{"model": "\#(service.modelID)", "messages": [{"role": "user", "content": "What is the weather in Paris?"}], "temperature": 0, "max_tokens": 60, "tools": "#
            + ToolsTests.toolsText
        // What the model writes (tools rendered by its template, nothing forced): a fenced JSON call.
        let raw = try bundle.makeGenerator().generate([SequenceRequest(
            prompt: try bundle.chatPromptIDs(turns: [ChatTurn(role: "user", content: "What is the weather in Paris?")],
                                            tools: try XCTUnwrap(HFJSON.parse(Data(ToolsTests.toolsText.utf8)).arrayValue).map { try ChatTool(json: $0) }),
            parameters: GenerateParameters(maxNewTokens: 60))])[0].text
        XCTAssertTrue(raw.hasPrefix("```json\n{"), raw)
        try await buildApplication(service: service).test(.router) { client in
            let r = try await client.post("/v1/chat/completions", raw: body + "}")
            XCTAssertEqual(r.status, .ok, r.text)
            let c = firstChoice(try r.json())
            let msg = object(c["message"])
            let calls = (msg["tool_calls"] as? [Any] ?? []).map(object)
            XCTAssertEqual(calls.count, 1, r.text)
            let f = object(calls.first?["function"])
            XCTAssertEqual(f["name"] as? String, "get_weather", r.text)
            let args = try JSONSerialization.jsonObject(with: Data((f["arguments"] as? String ?? "").utf8)) as? [String: Any]
            XCTAssertEqual(args?["city"] as? String, "Paris", r.text)
            XCTAssertTrue(msg["content"] is NSNull, r.text)
            XCTAssertEqual(c["finish_reason"] as? String, "tool_calls")

            let s = try await client.post("/v1/chat/completions", raw: body + #", "stream": true}"#)
            var content = "", streamed: [String] = [], finish: String? = nil
            for d in s.sseData where d != "[DONE]" {
                let ch = firstChoice(try JSONSerialization.jsonObject(with: Data(d.utf8)) as? [String: Any] ?? [:])
                content += object(ch["delta"])["content"] as? String ?? ""
                for tc in object(ch["delta"])["tool_calls"] as? [Any] ?? [] {
                    streamed.append((object(object(tc)["function"])["name"] as? String ?? "") + (object(object(tc)["function"])["arguments"] as? String ?? ""))
                }
                if let fr = ch["finish_reason"] as? String { finish = fr }
            }
            XCTAssertEqual(content, "")
            XCTAssertEqual(streamed, [(f["name"] as? String ?? "") + (f["arguments"] as? String ?? "")])
            XCTAssertEqual(finish, "tool_calls")
        }
        await service.scheduler.shutdown(cancelInFlight: true)
    }
}
