import Foundation
import XCTest
import CausalLM

/// Qwen2.5-Coder's chat template (from its GGUF, copied into the fixture) rendered by our Jinja interpreter against
/// transformers' `apply_chat_template` (Tests/Fixtures/real/*/chat_template.json): plain conversations, tools, and an
/// assistant tool call followed by a tool response. Text must be equal character for character.
final class FamilyChatTemplateTests: XCTestCase {
    func testQwenTemplatesRenderAsTransformers() throws {
        for model in ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"] {
            let data = try Fixtures.data("real/\(model)/chat_template.json")
            let root = try HFJSON.parse(data)
            let o = try XCTUnwrap(root.objectValue)
            let source = try XCTUnwrap(o["chat_template"]?.stringValue)
            let template = try ChatTemplate(source)
            let renders = try XCTUnwrap(o["renders"]?.arrayValue)
            XCTAssertGreaterThanOrEqual(renders.count, 7)
            for r in renders {
                let c = try XCTUnwrap(r.objectValue)
                let name = c["name"]?.stringValue ?? "?"
                var vars: [String: JinjaValue] = ["messages": .json(c["messages"]!)]
                if let tools = c["tools"], !tools.isNull { vars["tools"] = .json(tools) }
                let text = try template.render(messages: [], addGenerationPrompt: c["add_generation_prompt"]?.boolValue ?? false,
                                               variables: vars)
                XCTAssertEqual(text, c["text"]?.stringValue, "\(model) \(name)")
            }
        }
    }
}
