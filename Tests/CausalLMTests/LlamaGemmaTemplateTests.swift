import Foundation
import XCTest
import CausalLM

/// The real Llama 3.1 / 3.2 and Gemma 2 / 3 instruct chat templates (Tests/Fixtures/chat_template/*.jinja, sources in
/// the README there) rendered by our Jinja interpreter against transformers' `render_jinja_template`
/// (Tests/Fixtures/gen/make_llama_gemma_template_cases.py): system and user turns, multi-turn, generation prompt on
/// and off, Llama tools (in the user message and in the system message), tool calls with `tool`/`ipython` replies,
/// built-in tools, `date_string` and a pinned `strftime_now`; Gemma's system turn folded into the first user turn and
/// content given as parts. Text must be equal byte for byte; where the template calls `raise_exception` ours must
/// throw an error that carries the same message.
final class LlamaGemmaTemplateTests: XCTestCase {
    private static func load() throws -> [HFJSONObject] {
        let root = try XCTUnwrap(HFJSON.parse(try Fixtures.data("chat_template/llama_gemma_cases.json")).objectValue)
        return try XCTUnwrap(root["cases"]?.arrayValue).map { try XCTUnwrap($0.objectValue) }
    }

    private static func pinnedDate(_ s: String) throws -> Date {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withFullDate, .withTime, .withColonSeparatorInTime, .withDashSeparatorInDate]
        f.timeZone = TimeZone(identifier: "UTC")
        return try XCTUnwrap(f.date(from: s), "bad date \(s)")
    }

    func testTemplatesRenderAsTransformers() throws {
        let cases = try Self.load()
        XCTAssertGreaterThanOrEqual(cases.count, 40)
        var templates: [String: ChatTemplate] = [:]
        var rendered = 0, errors = 0
        for c in cases {
            let name = c["name"]?.stringValue ?? "?"
            let file = try XCTUnwrap(c["template"]?.stringValue)
            if templates[file] == nil {
                let source = String(decoding: try Fixtures.data("chat_template/\(file)"), as: UTF8.self)
                templates[file] = try ChatTemplate(source)
            }
            let template = templates[file]!
            // As transformers passes them: messages, tools (None when absent), documents (None), special tokens,
            // then the case's extra variables (date_string, builtin_tools, tools_in_user_message, custom_tools).
            var vars: [String: JinjaValue] = ["messages": .json(try XCTUnwrap(c["messages"])),
                                              "tools": .json(c["tools"] ?? .null), "documents": .json(.null)]
            for (k, v) in try XCTUnwrap(c["variables"]?.objectValue).members { vars[k] = .json(v) }
            let now = try c["now"]?.stringValue.map(Self.pinnedDate)
            let render = {
                try template.render(messages: [], addGenerationPrompt: c["add_generation_prompt"]?.boolValue ?? false,
                                    bosToken: c["bos_token"]?.stringValue ?? "", eosToken: c["eos_token"]?.stringValue ?? "",
                                    variables: vars, now: now)
            }
            if let expected = c["text"]?.stringValue {
                let text = try render()
                XCTAssertEqual(Array(text.utf8), Array(expected.utf8), "\(name)")
                if text != expected { print("\(name): got\n\(text)\nexpected\n\(expected)") }
                rendered += 1
            } else {
                let message = try XCTUnwrap(c["error"]?.stringValue, "\(name): neither text nor error")
                XCTAssertThrowsError(try render(), name) { error in
                    XCTAssertTrue("\(error)".contains(message), "\(name): \(error) does not carry '\(message)'")
                    XCTAssertTrue(error is ChatTemplateError, "\(name): \(type(of: error))")
                }
                errors += 1
            }
        }
        XCTAssertGreaterThanOrEqual(errors, 8)
        print("Llama/Gemma templates: \(rendered) renders equal transformers', \(errors) raise_exception cases raise")
    }

    /// Llama 3.2's template reads `strftime_now("%d %b %Y")` when no `date_string` is given: unpinned, it prints
    /// today's date (local time, as transformers does).
    func testLlama32DateIsToday() throws {
        let source = String(decoding: try Fixtures.data("chat_template/meta-llama-Llama-3.2-3B-Instruct.jinja"), as: UTF8.self)
        let template = try ChatTemplate(source)
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.dateFormat = "dd MMM yyyy"
        let before = f.string(from: Date())
        let text = try template.render(messages: [ChatMessage(role: "user", content: "hi")], addGenerationPrompt: true,
                                       bosToken: "<|begin_of_text|>")
        let after = f.string(from: Date())
        XCTAssertTrue(text.contains("Today Date: \(before)\n") || text.contains("Today Date: \(after)\n"), text)
        // And the fixed fallback of Llama 3.1's, which has no strftime_now call.
        let t31 = try ChatTemplate(String(decoding: try Fixtures.data("chat_template/meta-llama-Llama-3.1-8B-Instruct.jinja"), as: UTF8.self))
        XCTAssertTrue(try t31.render(messages: [ChatMessage(role: "user", content: "hi")], addGenerationPrompt: true)
            .contains("Today Date: 26 Jul 2024\n"))
    }
}
