import CausalLM
import CausalServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// Tool calls: rendering (the model's template, or the generic system prompt), parsing the output (whole and
/// streamed), and the server's `tools` / `tool_choice` / history handling on the default model (SmolLM2, whose
/// template has no tool section).
final class ToolsTests: XCTestCase {
    var app: some ApplicationProtocol { buildApplication(service: Shared.service) }
    var model: String { Shared.modelID }

    static let weatherTool: [String: Any] = [
        "type": "function",
        "function": [
            "name": "get_weather", "description": "Get the current weather in a city.",
            "parameters": [
                "type": "object",
                "properties": ["city": ["type": "string", "maxLength": 30], "unit": ["type": "string", "enum": ["celsius", "fahrenheit"]]],
                "required": ["city", "unit"], "additionalProperties": false,
            ] as [String: Any],
        ] as [String: Any],
    ]
    static let timeTool: [String: Any] = [
        "type": "function",
        "function": [
            "name": "get_time", "description": "Get the local time in a time zone.",
            "parameters": ["type": "object", "properties": ["zone": ["type": "string", "maxLength": 30]], "required": ["zone"]] as [String: Any],
        ] as [String: Any],
    ]

    /// `weatherTool` and `timeTool` as fixed JSON text. Templates print the tools as given, so their key order is part of
    /// the prompt, and a Swift dictionary serialized by JSONSerialization changes its key order from one process to the
    /// next: tests whose assertions depend on what the model writes send this text.
    static let toolsText = #"[{"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"], "additionalProperties": false}}}, {"type": "function", "function": {"name": "get_time", "description": "Get the local time in a time zone.", "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 30}}, "required": ["zone"]}}}]"#

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    // MARK: Rendering

    /// Qwen2.5's template renders tools, an assistant tool call and a tool result from `ChatTurn`s exactly as
    /// transformers' apply_chat_template does from the OpenAI-shaped messages (fixture text).
    func testQwenTemplateRendersToolTurnsAsTransformers() throws {
        let root = try HFJSON.parse(Data(contentsOf: Self.fixtures.appendingPathComponent("real/qwen2.5-coder-0.5b-instruct/chat_template.json")))
        let template = try ChatTemplate(XCTUnwrap(root["chat_template"]?.stringValue))
        XCTAssertTrue(template.rendersTools)
        var checked = 0
        for r in root["renders"]?.arrayValue ?? [] {
            guard let toolsJSON = r["tools"]?.arrayValue else { continue }
            let tools = try toolsJSON.map { try ChatTool(json: $0) }
            let turns: [ChatTurn] = try (r["messages"]?.arrayValue ?? []).map { m in
                let calls = try (m["tool_calls"]?.arrayValue ?? []).enumerated().map { i, c -> ChatToolCall in
                    let f = try XCTUnwrap(c["function"])
                    return ChatToolCall(id: "call_\(i)", name: try XCTUnwrap(f["name"]?.stringValue),
                                        arguments: ToolJSON.compact(try XCTUnwrap(f["arguments"])))
                }
                return ChatTurn(role: try XCTUnwrap(m["role"]?.stringValue), content: m["content"]?.stringValue, toolCalls: calls,
                                toolCallID: m["role"]?.stringValue == "tool" ? "call_0" : nil)
            }
            let text = try template.render(turns: turns, tools: tools, addGenerationPrompt: r["add_generation_prompt"]?.boolValue ?? false)
            XCTAssertEqual(text, r["text"]?.stringValue, r["name"]?.stringValue ?? "?")
            checked += 1
        }
        XCTAssertEqual(checked, 3)   // tools, tools_no_system, tool_call_and_response
    }

    /// SmolLM2's template has no tool section: tools go into the system message, calls into the assistant's text and
    /// results into a user message, in the documented format.
    func testGenericRenderingForTemplateWithoutTools() throws {
        let template = try XCTUnwrap(Shared.bundle.chatTemplate)
        XCTAssertFalse(template.rendersTools)
        let tool = try ChatTool(json: HFJSON.parse(JSONSerialization.data(withJSONObject: Self.timeTool)))
        let turns = [ChatTurn(role: "system", content: "Be brief."),
                     ChatTurn(role: "user", content: "Time in Paris?"),
                     ChatTurn(role: "assistant", content: nil, toolCalls: [ChatToolCall(id: "c1", name: "get_time", arguments: "{\"zone\":\"Europe/Paris\"}")]),
                     ChatTurn(role: "tool", content: "12:00", toolCallID: "c1"),
                     ChatTurn(role: "tool", content: "ok", toolCallID: "c2")]
        let m = ChatTemplate.genericMessages(turns: turns, tools: [tool])
        XCTAssertEqual(m.map(\.role), ["system", "user", "assistant", "user"])
        XCTAssertTrue(m[0].content.hasPrefix("Be brief.\n\n# Tools\n"), m[0].content)
        XCTAssertTrue(m[0].content.contains("\n<tools>\n" + ToolJSON.python(tool.json) + "\n</tools>\n"), m[0].content)
        XCTAssertTrue(m[0].content.hasSuffix("<tool_call>\n{\"name\": \"<function name>\", \"arguments\": <the arguments as a JSON object>}\n</tool_call>"))
        XCTAssertEqual(m[2].content, "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"Europe/Paris\"}}\n</tool_call>")
        XCTAssertEqual(m[3].content, "<tool_response>\n12:00\n</tool_response>\n<tool_response>\nok\n</tool_response>")
        // Through the template: the same as rendering those plain messages.
        XCTAssertEqual(try template.render(turns: turns, tools: [tool], addGenerationPrompt: true),
                       try template.render(messages: m, addGenerationPrompt: true))
        // Without a system message one is added in front.
        let m2 = ChatTemplate.genericMessages(turns: [ChatTurn(role: "user", content: "hi")], tools: [tool])
        XCTAssertEqual(m2.map(\.role), ["system", "user"])
        XCTAssertTrue(m2[0].content.hasPrefix("# Tools\n"))
    }

    // MARK: Parsing

    func testParserWholeAndStreamedAgree() throws {
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}\n</tool_call>\n<tool_call>{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Oslo\\\"}\"}</tool_call> done <tool"
        let whole = ToolCallParser.parse(text, names: ["get_time", "get_weather"])
        XCTAssertEqual(whole.content, "Let me check.\n\n done <tool")
        XCTAssertEqual(whole.calls.map(\.name), ["get_time", "get_weather"])
        XCTAssertEqual(whole.calls.map(\.arguments), ["{\"zone\":\"UTC\"}", "{\"city\":\"Oslo\"}"])
        // Fed in pieces of every size, the events add up to the same content and calls.
        let chars = Array(text)
        for size in [1, 2, 3, 5, 7, 11] {
            var p = ToolCallParser(names: ["get_time", "get_weather"])
            var events: [ToolCallParser.Event] = []
            var i = 0
            while i < chars.count {
                events += p.feed(String(chars[i..<min(i + size, chars.count)]))
                i += size
            }
            events += p.finish()
            var content = ""
            var calls: [String] = []
            for e in events {
                switch e {
                case let .text(s):
                    XCTAssertFalse(s.contains("<tool_call>"), "size \(size): \(s)")
                    content += s
                case let .call(n, a): calls.append(n + a)
                }
            }
            XCTAssertEqual(content, whole.content, "size \(size)")
            XCTAssertEqual(calls, whole.calls.map { $0.name + $0.arguments }, "size \(size)")
        }
    }

    func testParserKeepsMalformedBlocksAsText() {
        // Not JSON, an unknown function, arguments that are not an object: text.
        for body in ["not json", "{\"name\": \"rm_rf\", \"arguments\": {}}", "{\"name\": \"get_time\", \"arguments\": 3}", "{\"arguments\": {}}"] {
            let t = "<tool_call>\n\(body)\n</tool_call>"
            let r = ToolCallParser.parse(t, names: ["get_time"])
            XCTAssertEqual(r.calls.count, 0, body)
            XCTAssertEqual(r.content, t, body)
        }
        // A block left open at the end is a call when its JSON is complete (a forced call stops after its JSON).
        let open = ToolCallParser.parse("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}", names: ["get_time"])
        XCTAssertEqual(open.calls.first?.arguments, "{\"zone\":\"UTC\"}")
        XCTAssertEqual(open.content, "")
        let cut = ToolCallParser.parse("<tool_call>\n{\"name\": \"get_time\", \"argu", names: ["get_time"])
        XCTAssertEqual(cut.calls.count, 0)
        XCTAssertEqual(cut.content, "<tool_call>\n{\"name\": \"get_time\", \"argu")
    }

    /// A message that is only a fenced (or bare) JSON call of a known function is a call (Qwen2.5-Coder's answer under
    /// `tool_choice: auto`); anything else around it, an unknown name or arguments that are not an object keep it text.
    /// Streamed in pieces of any size it gives the same; text that cannot become such a message is not held back.
    func testParserReadsAMessageThatIsOnlyAJSONCall() {
        let names: Set<String> = ["get_weather", "get_time"]
        let calls = [
            "```json\n{\n  \"name\": \"get_weather\",\n  \"arguments\": {\n    \"city\": \"Paris\",\n    \"unit\": \"celsius\"\n  }\n}\n```",
            "  \n```\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}```\n",
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}",
            "\n```json {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n```  ",
        ]
        let notCalls = [
            "Here it is:\n```json\n{\"name\": \"get_weather\", \"arguments\": {}}\n```",
            "```json\n{\"name\": \"get_weather\", \"arguments\": {}}\n```\nDone.",
            "{\"name\": \"get_weather\", \"arguments\": {}} and more",
            "```json\n{\"name\": \"delete_all\", \"arguments\": {}}\n```",
            "```json\n{\"name\": \"get_weather\", \"arguments\": \"{}\"}\n```",
            "```json\n{\"name\": \"get_weather\"}\n```",
            "```json\n{\"name\": \"get_weather\", \"arguments\": 3}\n```",
            "```python\nprint({\"name\": 1})\n```",
            "```json\n[{\"name\": \"get_weather\", \"arguments\": {}}]\n```",
            "```json\n{\"name\": \"get_weather\", \"arguments\": {}}",
            "{\"name\": \"get_weather\", \"arguments\": {",
            "{\"a\": \"}\"} x",
        ]
        func streamed(_ text: String, _ size: Int) -> (String, [String]) {
            var p = ToolCallParser(names: names)
            let chars = Array(text)
            var events: [ToolCallParser.Event] = []
            var i = 0
            while i < chars.count { events += p.feed(String(chars[i..<min(i + size, chars.count)])); i += size }
            events += p.finish()
            var content = "", out: [String] = []
            for e in events {
                switch e {
                case let .text(s): content += s
                case let .call(n, a): out.append(n + a)
                }
            }
            return (content, out)
        }
        for text in calls {
            let r = ToolCallParser.parse(text, names: names)
            XCTAssertEqual(r.content, "", text)
            XCTAssertEqual(r.calls.map(\.name), ["get_weather"], text)
            XCTAssertEqual(r.calls.map(\.arguments), [#"{"city":"Paris","unit":"celsius"}"#], text)
            for size in [1, 2, 5, 13] {
                let s = streamed(text, size)
                XCTAssertEqual(s.0, "", "\(size): \(text)")
                XCTAssertEqual(s.1, [#"get_weather{"city":"Paris","unit":"celsius"}"#], "\(size): \(text)")
            }
            // Not read so without names, or when switched off.
            XCTAssertEqual(ToolCallParser.parse(text).calls.count, 0)
            XCTAssertEqual(ToolCallParser.parse(text, names: names, wholeMessageCalls: false).content, text)
        }
        for text in notCalls {
            let r = ToolCallParser.parse(text, names: names)
            XCTAssertEqual(r.calls.count, 0, text)
            XCTAssertEqual(r.content, text)
            for size in [1, 3, 8] {
                let s = streamed(text, size)
                XCTAssertEqual(s.0, text, "\(size)")
                XCTAssertEqual(s.1, [], "\(size)")
            }
        }
        // Held back only while it may still be such a message.
        var p = ToolCallParser(names: names)
        XCTAssertEqual(p.feed(" \n``"), [])
        XCTAssertEqual(p.feed("`json\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"}\"}}\n`"), [])
        XCTAssertEqual(p.feed("``"), [])
        XCTAssertEqual(p.feed("\nMore text"), [.text(" \n```json\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"}\"}}\n```\nMore text")])
        var q = ToolCallParser(names: names)
        XCTAssertEqual(q.feed("The"), [.text("The")])
        XCTAssertEqual(q.feed(" answer {"), [.text(" answer {")])
    }

    /// A forced answer's grammar: one call (parallel_tool_calls false), or one or more calls each closed by its tag.
    func testCallGrammarOneOrSeveralCalls() throws {
        let params = try HFJSON.parse(Data(#"{"type":"object","properties":{"x":{"type":"string"}},"required":["x"]}"#.utf8))
        let tools = [ChatTool(name: "f", parameters: params), ChatTool(name: "g")]
        let tok = try Shared.bundle.tokenizer
        let one = try GrammarConstraint(grammar: ToolCallFormat.callGrammar(tools, parallel: false), tokenizer: tok)
        let many = try GrammarConstraint(grammar: ToolCallFormat.callGrammar(tools, parallel: true), tokenizer: tok)
        let a = #"{"name": "f", "arguments": {"x": "1"}}"#, b = #"{"name":"g","arguments":{}}"#
        let close = "\n</tool_call>", next = "\n</tool_call>\n<tool_call>\n"
        XCTAssertTrue(one.matches(a))
        XCTAssertFalse(one.acceptsPrefix(Array((a + "\n").utf8)))
        XCTAssertFalse(many.matches(a))
        XCTAssertTrue(many.matches(a + close))
        XCTAssertTrue(many.matches(a + next + b + close))
        XCTAssertTrue(many.matches(a + next + b + next + a + close))
        XCTAssertFalse(many.matches(a + next + b))
        XCTAssertFalse(many.acceptsPrefix(Array((a + close + "\nhello").utf8)))
        XCTAssertFalse(many.matches(a + next + #"{"name": "h", "arguments": {}}"# + close))
        // The prompt's `<tool_call>\n` and such an output parse into the calls, in order.
        let parsed = ToolCallParser.parse(ToolCallFormat.open + "\n" + a + next + b + close, names: ["f", "g"])
        XCTAssertEqual(parsed.calls.map(\.name), ["f", "g"])
        XCTAssertEqual(parsed.calls.map(\.arguments), [#"{"x":"1"}"#, "{}"])
        XCTAssertEqual(parsed.content.trimmingCharacters(in: .whitespacesAndNewlines), "")
        // A schema the compiler refuses is refused here too, with its path.
        let bad = try HFJSON.parse(Data(#"{"type":"object","properties":{"x":{"not":{}}}}"#.utf8))
        XCTAssertThrowsError(try ToolCallFormat.callGrammar([ChatTool(name: "f", parameters: bad)], parallel: true)) { e in
            XCTAssertTrue("\(e)".contains("#/properties/arguments/properties/x"), "\(e)")
        }
    }

    /// Parameters' local references move with the parameters into the call's schema.
    func testToolCallSchemaRebasesReferences() throws {
        let params = try HFJSON.parse(Data(##"{"type":"object","properties":{"p":{"$ref":"#/$defs/P"}},"required":["p"],"$defs":{"P":{"type":"string"}}}"##.utf8))
        let one = ToolCallFormat.callSchema([ChatTool(name: "f", parameters: params)])
        XCTAssertTrue(one.contains(##""$ref":"#/properties/arguments/$defs/P""##), one)
        let two = ToolCallFormat.callSchema([ChatTool(name: "f", parameters: params), ChatTool(name: "g")])
        XCTAssertTrue(two.contains(##""$ref":"#/anyOf/0/properties/arguments/$defs/P""##), two)
        XCTAssertTrue(two.contains(##"{"const":"g"}"##), two)
        // It compiles, and accepts a call with the reference resolved.
        let c = try GrammarConstraint.jsonSchema(two, tokenizer: Shared.bundle.tokenizer)
        XCTAssertTrue(c.matches(##"{"name": "f", "arguments": {"p": "x"}}"##))
        XCTAssertTrue(c.matches(##"{"name":"g","arguments":{}}"##))
        XCTAssertFalse(c.matches(##"{"name": "h", "arguments": {}}"##))
        XCTAssertFalse(c.matches(##"{"name": "f", "arguments": {"p": 1}}"##))
    }

    // MARK: Server

    func chat(_ client: some TestClientProtocol, _ body: [String: Any]) async throws -> TestResponse {
        var b = body
        b["model"] = model
        return try await client.post("/v1/chat/completions", json: b)
    }

    /// `tool_choice: required` gives a call whose arguments validate against the tool's parameters, with
    /// finish_reason `tool_calls`; a named function picks that function. Greedy and seeded sampling.
    func testRequiredAndNamedToolChoice() async throws {
        try await app.test(.router) { client in
            for (choice, temperature) in [("required", 0.0), ("get_time", 0.0), ("get_weather", 1.0)] as [(String, Double)] {
                let tc: Any = choice == "required" ? "required" : ["type": "function", "function": ["name": choice]]
                let r = try await self.chat(client, [
                    "messages": [["role": "user", "content": "What is the weather like in Paris right now?"]],
                    "tools": [Self.weatherTool, Self.timeTool], "tool_choice": tc, "temperature": temperature, "seed": 7,
                    "max_tokens": 48,
                ])
                XCTAssertEqual(r.status, .ok, r.text)
                let c = firstChoice(try r.json())
                XCTAssertEqual(c["finish_reason"] as? String, "tool_calls", "\(choice): \(r.text)")
                let msg = object(c["message"])
                let calls = msg["tool_calls"] as? [Any] ?? []
                XCTAssertEqual(calls.count, 1, r.text)
                let call = object(calls.first)
                XCTAssertTrue((call["id"] as? String ?? "").hasPrefix("call_"))
                XCTAssertEqual(call["type"] as? String, "function")
                let f = object(call["function"])
                let name = f["name"] as? String ?? ""
                if choice != "required" { XCTAssertEqual(name, choice) }
                let args = try JSONSerialization.jsonObject(with: Data((f["arguments"] as? String ?? "").utf8)) as? [String: Any] ?? [:]
                switch name {
                case "get_weather":
                    XCTAssertEqual(Set(args.keys), ["city", "unit"], r.text)
                    XCTAssertNotNil(args["city"] as? String)
                    XCTAssertTrue(["celsius", "fahrenheit"].contains(args["unit"] as? String ?? ""), r.text)
                case "get_time":
                    XCTAssertEqual(Set(args.keys), ["zone"], r.text)
                    XCTAssertNotNil(args["zone"] as? String)
                default: XCTFail("unknown function \(name)")
                }
                XCTAssertTrue(msg["content"] is NSNull, r.text)
            }
        }
    }

    /// A forced call streamed: one `delta.tool_calls` chunk with the same name and arguments as the whole response,
    /// and finish_reason `tool_calls`.
    func testStreamedToolCallEqualsWholeResponse() async throws {
        try await app.test(.router) { client in
            // Raw JSON, so that both requests list the schema's properties in the same order (it is the order generated).
            let body = #"{"model": "\#(self.model)", "messages": [{"role": "user", "content": "Weather in Rome in celsius?"}], "tool_choice": "required", "temperature": 0, "max_tokens": 60, "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}}, "required": ["city", "unit"]}}}]"#
            let whole = try await client.post("/v1/chat/completions", raw: body + "}")
            XCTAssertEqual(whole.status, .ok, whole.text)
            let wf = object(object((object(firstChoice(try whole.json())["message"])["tool_calls"] as? [Any])?.first)["function"])
            XCTAssertEqual(wf["name"] as? String, "get_weather", whole.text)
            let s = try await client.post("/v1/chat/completions", raw: body + #", "stream": true}"#)
            XCTAssertEqual(s.status, .ok)
            var calls: [[String: Any]] = []
            var finish: String? = nil
            var content = ""
            for d in s.sseData where d != "[DONE]" {
                let c = firstChoice(try JSONSerialization.jsonObject(with: Data(d.utf8)) as? [String: Any] ?? [:])
                let delta = object(c["delta"])
                content += delta["content"] as? String ?? ""
                for tc in delta["tool_calls"] as? [Any] ?? [] { calls.append(object(tc)) }
                if let f = c["finish_reason"] as? String { finish = f }
            }
            XCTAssertEqual(finish, "tool_calls", s.text)
            XCTAssertEqual(content, "")
            XCTAssertEqual(calls.count, 1, s.text)
            XCTAssertEqual(calls.first?["index"] as? Int, 0)
            XCTAssertEqual(calls.first?["type"] as? String, "function")
            XCTAssertEqual(object(calls.first?["function"])["name"] as? String, wf["name"] as? String)
            XCTAssertEqual(object(calls.first?["function"])["arguments"] as? String, wf["arguments"] as? String)
        }
    }

    /// A second turn with the assistant's call and the tool's result in the history gets an answer; `tool_choice:
    /// none` renders no tools (the prompt is the plain conversation's).
    func testToolResultTurnAndToolChoiceNone() async throws {
        try await app.test(.router) { client in
            let history: [[String: Any]] = [
                ["role": "user", "content": "What is the weather in Paris?"],
                ["role": "assistant", "content": NSNull(), "tool_calls": [["id": "call_1", "type": "function",
                    "function": ["name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"]]]],
                ["role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 21, \"sky\": \"sunny\"}"],
            ]
            // The tool's JSON text is sent as the library gets it (a dictionary's key order is not fixed from one
            // serialization to the next, and the order changes the rendered prompt).
            let toolData = try JSONSerialization.data(withJSONObject: Self.weatherTool)
            let historyData = try JSONSerialization.data(withJSONObject: history)
            let r = try await client.post("/v1/chat/completions", raw: #"{"model": "\#(self.model)", "temperature": 0, "max_tokens": 40, "messages": "#
                + String(decoding: historyData, as: UTF8.self) + #", "tools": ["# + String(decoding: toolData, as: UTF8.self) + "]}")
            XCTAssertEqual(r.status, .ok, r.text)
            let msg = object(firstChoice(try r.json())["message"])
            XCTAssertFalse((msg["content"] as? String ?? "").isEmpty, r.text)
            // The prompt the server used is the library's rendering of the same turns.
            let turns = [ChatTurn(role: "user", content: "What is the weather in Paris?"),
                         ChatTurn(role: "assistant", content: nil, toolCalls: [ChatToolCall(id: "call_1", name: "get_weather", arguments: "{\"city\": \"Paris\", \"unit\": \"celsius\"}")]),
                         ChatTurn(role: "tool", content: "{\"temperature\": 21, \"sky\": \"sunny\"}", toolCallID: "call_1")]
            let tool = try ChatTool(json: HFJSON.parse(toolData))
            let ids = try Shared.bundle.chatPromptIDs(turns: turns, tools: [tool])
            XCTAssertEqual(object(try r.json()["usage"])["prompt_tokens"] as? Int, ids.count)

            let none = try await self.chat(client, ["messages": [["role": "user", "content": "What is the capital of France?"]],
                                                    "tools": [Self.weatherTool], "tool_choice": "none", "temperature": 0])
            XCTAssertEqual(none.status, .ok, none.text)
            let nd = try none.json()
            XCTAssertEqual(object(nd["usage"])["prompt_tokens"] as? Int, try Shared.chatIDs("What is the capital of France?").count)
            XCTAssertEqual(object(firstChoice(nd)["message"])["content"] as? String, "The capital of France is Paris.")
            XCTAssertNil(object(firstChoice(nd)["message"])["tool_calls"])
        }
    }

    /// The calls of a chat response (name + arguments, in order), its finish reason, and the ids.
    func calls(_ d: [String: Any]) -> (calls: [String], finish: String?, ids: [String]) {
        let c = firstChoice(d)
        let tcs = (object(c["message"])["tool_calls"] as? [Any] ?? []).map(object)
        return (tcs.map { object($0["function"])["name"] as? String ?? "?" }.enumerated().map { i, n in
                    n + (object(tcs[i]["function"])["arguments"] as? String ?? "?") },
                c["finish_reason"] as? String, tcs.map { $0["id"] as? String ?? "" })
    }

    /// The calls of a streamed chat response by choice index: each `delta.tool_calls` entry in order, with its index.
    func streamedCalls(_ r: TestResponse) throws -> (calls: [Int: [String]], indexes: [Int: [Int]], finish: [Int: String], content: [Int: String]) {
        var calls: [Int: [String]] = [:], indexes: [Int: [Int]] = [:], finish: [Int: String] = [:], content: [Int: String] = [:]
        for d in r.sseData where d != "[DONE]" {
            for c in (try JSONSerialization.jsonObject(with: Data(d.utf8)) as? [String: Any] ?? [:])["choices"] as? [Any] ?? [] {
                let c = object(c)
                let k = c["index"] as? Int ?? -1
                let delta = object(c["delta"])
                content[k, default: ""] += delta["content"] as? String ?? ""
                for tc in (delta["tool_calls"] as? [Any] ?? []).map(object) {
                    let f = object(tc["function"])
                    calls[k, default: []].append((f["name"] as? String ?? "?") + (f["arguments"] as? String ?? "?"))
                    indexes[k, default: []].append(tc["index"] as? Int ?? -1)
                    XCTAssertTrue((tc["id"] as? String ?? "").hasPrefix("call_"))
                }
                if let f = c["finish_reason"] as? String { finish[k] = f }
            }
        }
        return (calls, indexes, finish, content)
    }

    /// `parallel_tool_calls` with a forced call. A named function gives exactly one call whatever it says; `required`
    /// one call unless `parallel_tool_calls: true` is sent explicitly, then one or more, each closed by its tag. The end
    /// token is banned with `logit_bias` so that the model must go on where the grammar lets it: the one-call answers
    /// still end after their call (`tool_calls`), the parallel one gives several calls (distinct ids, streamed one
    /// `delta.tool_calls` entry each with indexes 0, 1, ...) and runs to max_tokens (`length`), its unfinished last
    /// block dropped: content stays null, no raw tag text.
    func testParallelToolCallsWithAForcedCall() async throws {
        let eos = try XCTUnwrap(Shared.bundle.tokenizer.eosTokenID)
        try await app.test(.router) { client in
            func body(_ extra: String, choice: String = #""required""#) -> String {
                #"{"model": "\#(self.model)", "messages": [{"role": "user", "content": "What is the weather in Paris and in London?"}], "tool_choice": \#(choice), "temperature": 0, "max_tokens": 100, "logit_bias": {"\#(eos)": -100}, "tools": "#
                    + Self.toolsText + extra + "}"
            }
            let single = try await client.post("/v1/chat/completions", raw: body(#", "parallel_tool_calls": false"#))
            XCTAssertEqual(single.status, .ok, single.text)
            let one = self.calls(try single.json())
            XCTAssertEqual(one.calls.count, 1, single.text)
            XCTAssertEqual(one.finish, "tool_calls", single.text)
            // The default (parallel_tool_calls absent) is the same single call.
            let byDefault = try await client.post("/v1/chat/completions", raw: body(""))
            XCTAssertEqual(self.calls(try byDefault.json()).calls, one.calls, byDefault.text)
            XCTAssertEqual(self.calls(try byDefault.json()).finish, "tool_calls", byDefault.text)
            // A named function: one call even with parallel_tool_calls true.
            let named = try await client.post("/v1/chat/completions",
                                              raw: body(#", "parallel_tool_calls": true"#, choice: #"{"type": "function", "function": {"name": "get_weather"}}"#))
            let nc = self.calls(try named.json())
            XCTAssertEqual(nc.calls.count, 1, named.text)
            XCTAssertTrue(nc.calls.first?.hasPrefix("get_weather{\"city\":") ?? false, named.text)
            XCTAssertEqual(nc.finish, "tool_calls", named.text)

            let multi = try await client.post("/v1/chat/completions", raw: body(#", "parallel_tool_calls": true"#))
            XCTAssertEqual(multi.status, .ok, multi.text)
            let many = self.calls(try multi.json())
            XCTAssertGreaterThanOrEqual(many.calls.count, 2, multi.text)
            XCTAssertEqual(Set(many.ids).count, many.ids.count, multi.text)
            XCTAssertEqual(many.calls.first, one.calls.first, "the first call is the same either way")
            for c in many.calls {
                XCTAssertTrue(c.hasPrefix("get_weather{\"city\":") || c.hasPrefix("get_time{\"zone\":"), c)
            }
            // No end token, so it runs to max_tokens; whatever was cut is not shown as text.
            XCTAssertEqual(many.finish, "length", multi.text)
            XCTAssertTrue(object(firstChoice(try multi.json())["message"])["content"] is NSNull, multi.text)
            XCTAssertEqual(object(try multi.json()["usage"])["completion_tokens"] as? Int, 100, multi.text)

            let s = try await client.post("/v1/chat/completions", raw: body(#", "parallel_tool_calls": true, "stream": true"#))
            let st = try self.streamedCalls(s)
            XCTAssertEqual(st.calls[0], many.calls, s.text)
            XCTAssertEqual(st.indexes[0], Array(0..<many.calls.count))
            XCTAssertEqual(st.finish[0], "length")
            XCTAssertEqual(st.content[0] ?? "", "", s.text)
        }
    }

    /// A forced call cut by max_tokens before its JSON is complete: no call, no text (content null), `length`;
    /// streamed, no content and no tool_calls chunk.
    func testForcedCallCutByMaxTokens() async throws {
        try await app.test(.router) { client in
            let toolData = try JSONSerialization.data(withJSONObject: [Self.weatherTool])
            let body = #"{"model": "\#(self.model)", "messages": [{"role": "user", "content": "Weather in Oslo?"}], "tool_choice": "required", "temperature": 0, "max_tokens": 4, "tools": "#
                + String(decoding: toolData, as: UTF8.self)
            let r = try await client.post("/v1/chat/completions", raw: body + "}")
            XCTAssertEqual(r.status, .ok, r.text)
            let c = firstChoice(try r.json())
            XCTAssertEqual(c["finish_reason"] as? String, "length", r.text)
            XCTAssertTrue(object(c["message"])["content"] is NSNull, r.text)
            XCTAssertNil(object(c["message"])["tool_calls"], r.text)
            let s = try self.streamedCalls(try await client.post("/v1/chat/completions", raw: body + #", "stream": true}"#))
            XCTAssertEqual(s.content[0] ?? "", "")
            XCTAssertNil(s.calls[0])
            XCTAssertEqual(s.finish[0], "length")
        }
    }

    /// Under `tool_choice: auto` the model decides; SmolLM2 asked to repeat two call blocks writes both (greedy). With
    /// `parallel_tool_calls: false` generation stops at the first block's closing tag: one call, fewer tokens.
    func testParallelToolCallsUnderAuto() async throws {
        try await app.test(.router) { client in
            let block = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"unit\": \"celsius\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"Europe/Oslo\"}}\n</tool_call>"
            let base: [String: Any] = ["messages": [["role": "user", "content": "Repeat exactly, with nothing else:\n" + block]],
                                       "tools": [Self.weatherTool, Self.timeTool], "temperature": 0, "max_tokens": 90]
            let both = try await self.chat(client, base)
            XCTAssertEqual(both.status, .ok, both.text)
            let b = self.calls(try both.json())
            XCTAssertEqual(b.calls, [#"get_weather{"city":"Oslo","unit":"celsius"}"#, #"get_time{"zone":"Europe/Oslo"}"#], both.text)
            XCTAssertEqual(b.finish, "tool_calls")
            var single = base
            single["parallel_tool_calls"] = false
            let first = try await self.chat(client, single)
            let f = self.calls(try first.json())
            XCTAssertEqual(f.calls, Array(b.calls.prefix(1)), first.text)
            XCTAssertEqual(f.finish, "tool_calls")
            XCTAssertNil(object(firstChoice(try first.json())["message"])["content"] as? String, first.text)
            XCTAssertLessThan(object(try first.json()["usage"])["completion_tokens"] as? Int ?? 99,
                              object(try both.json()["usage"])["completion_tokens"] as? Int ?? 0)
            single["stream"] = true
            let s = try self.streamedCalls(try await self.chat(client, single))
            XCTAssertEqual(s.calls[0], f.calls)
            XCTAssertEqual(s.finish[0], "tool_calls")
            XCTAssertEqual(s.content[0] ?? "", "")
        }
    }

    /// n > 1 with tools: each choice's output is parsed on its own (tool_calls and finish reason per choice), choice j
    /// is the single request with seed + j, and the stream gives each choice's calls under its index.
    func testToolCallsWithSeveralChoices() async throws {
        try await app.test(.router) { client in
            func body(_ extra: String) -> String {
                #"{"model": "\#(self.model)", "messages": [{"role": "user", "content": "Weather or time in Tokyo?"}], "tool_choice": "required", "parallel_tool_calls": false, "temperature": 1, "max_tokens": 60, "tools": "#
                    + Self.toolsText + extra + "}"
            }
            let r = try await client.post("/v1/chat/completions", raw: body(#", "n": 3, "seed": 11"#))
            XCTAssertEqual(r.status, .ok, r.text)
            let choices = (try r.json()["choices"] as? [Any] ?? []).map(object)
            XCTAssertEqual(choices.map { $0["index"] as? Int ?? -1 }, [0, 1, 2])
            var perChoice: [[String]] = []
            for (j, c) in choices.enumerated() {
                XCTAssertEqual(c["finish_reason"] as? String, "tool_calls", r.text)
                let got = self.calls(["choices": [c]]).calls
                XCTAssertEqual(got.count, 1, r.text)
                perChoice.append(got)
                let alone = try await client.post("/v1/chat/completions", raw: body(#", "seed": \#(11 + j)"#))
                XCTAssertEqual(self.calls(try alone.json()).calls, got, "choice \(j)")
            }
            let s = try self.streamedCalls(try await client.post("/v1/chat/completions", raw: body(#", "n": 3, "seed": 11, "stream": true"#)))
            for j in 0..<3 {
                XCTAssertEqual(s.calls[j], perChoice[j], "streamed choice \(j)")
                XCTAssertEqual(s.indexes[j], [0])
                XCTAssertEqual(s.finish[j], "tool_calls")
            }
            // Under auto with n = 2, greedy: both choices read their own calls.
            let block = "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"UTC\"}}\n</tool_call>"
            let auto = try await self.chat(client, ["messages": [["role": "user", "content": "Repeat exactly, with nothing else:\n" + block]],
                                                    "tools": [Self.timeTool], "temperature": 0, "max_tokens": 40, "n": 2])
            let ac = (try auto.json()["choices"] as? [Any] ?? []).map(object)
            XCTAssertEqual(ac.count, 2)
            for c in ac {
                XCTAssertEqual(self.calls(["choices": [c]]).calls, [#"get_time{"zone":"UTC"}"#], auto.text)
                XCTAssertEqual(c["finish_reason"] as? String, "tool_calls")
            }
        }
    }

    func testToolErrors() async throws {
        try await app.test(.router) { client in
            let user = [["role": "user", "content": "hi"]]
            let cases: [([String: Any], String)] = [
                (["messages": user, "tool_choice": "required"], "tool_choice"),
                (["messages": user, "tools": [Self.weatherTool], "tool_choice": "sometimes"], "tool_choice"),
                (["messages": user, "tools": [Self.weatherTool], "tool_choice": ["type": "function", "function": ["name": "nope"]]], "tool_choice"),
                (["messages": user, "tools": [["type": "function", "function": ["description": "no name"]]]], "tools[0]"),
                (["messages": user, "tools": [["type": "retrieval"]]], "tools[0]"),
                (["messages": user, "tools": [Self.weatherTool, Self.weatherTool]], "tools[1].function.name"),
                (["messages": user, "tools": "get_weather"], "tools"),
                (["messages": [["role": "tool", "content": "x"]]], "messages[0].tool_call_id"),
                (["messages": [["role": "assistant", "tool_calls": [["type": "function", "function": ["arguments": "{}"]]]]]], "messages[0].tool_calls[0].function.name"),
                (["messages": user, "functions": [["name": "f"]]], "functions"),
                (["messages": user, "tools": [["type": "function", "function": ["name": "f", "parameters": ["type": "object", "properties": ["x": ["not": ["type": "string"]]]]]]],
                  "tool_choice": "required"], "tools[0].function.parameters"),
                (["messages": user, "tools": [Self.weatherTool], "tool_choice": "required", "response_format": ["type": "json_object"]], "response_format"),
                (["messages": user, "tools": [Self.weatherTool], "parallel_tool_calls": "yes"], "parallel_tool_calls"),
            ]
            for (body, param) in cases {
                let r = try await self.chat(client, body)
                XCTAssertEqual(r.status, .badRequest, "\(body): \(r.text)")
                XCTAssertEqual(try r.apiError()["param"] as? String, param, r.text)
            }
            let c = try await client.post("/v1/completions", json: ["model": self.model, "prompt": "x", "tools": [Self.weatherTool]])
            XCTAssertEqual(c.status, .badRequest)
        }
    }
}
