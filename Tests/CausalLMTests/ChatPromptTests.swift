import Foundation
import XCTest
import CausalLM

/// The model's own chat template (from the GGUF) rendered and tokenized gives HF's apply_chat_template text and ids.
final class ChatPromptTests: XCTestCase {
    func testChatTemplateFromGGUFMatchesHFTextAndIDs() throws {
        let gguf = TestModel.gguf
        let template = try ChatTemplate(try gguf.string("tokenizer.chat_template"))
        let tok = try ByteLevelBPETokenizer(gguf: gguf)
        let rows = try Fixtures.json("smollm2/chat_template.json") as! [[String: Any]]
        XCTAssertEqual(rows.count, 3)
        for r in rows {
            let messages = (r["messages"] as! [[String: String]]).map { ChatMessage(role: $0["role"]!, content: $0["content"]!) }
            let text = try template.render(messages: messages, addGenerationPrompt: true)
            XCTAssertEqual(text, r["text"] as! String)
            XCTAssertEqual(tok.encode(text), (r["ids"] as! [NSNumber]).map(\.intValue))
        }
    }

    func testTemplateErrorIsClear() {
        XCTAssertThrowsError(try ChatTemplate("{% for m in messages %}{{ m.content }}")) { e in
            XCTAssertTrue("\(e)".contains("for"), "\(e)")
        }
    }
}
