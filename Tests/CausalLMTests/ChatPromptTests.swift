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

    /// A chat session reuses its KV cache between turns, and the second answer equals a fresh run of the whole
    /// conversation (the cached prefix plus the new tokens is the same computation).
    func testChatSessionReusesCacheAndMatchesFreshRun() throws {
        let bundle = try ModelBundle(path: TestModel.path)
        let session = ChatSession(bundle: bundle)
        let p = GenerateParameters(maxNewTokens: 24)
        let first = try session.respond("What is the capital of France?", parameters: p)
        XCTAssertTrue(first.text.contains("Paris"), first.text)
        var streamed = ""
        let second = try session.respond("And of Italy?", parameters: p, onText: { streamed += $0 })
        XCTAssertEqual(streamed, second.text)
        XCTAssertEqual(session.messages.map(\.role), ["user", "assistant", "user", "assistant"])
        let ids = try bundle.chatPromptIDs(Array(session.messages.prefix(3)))
        let fresh = try bundle.makeGenerator().generate([SequenceRequest(prompt: ids, parameters: p)])[0]
        XCTAssertEqual(second.tokens, fresh.tokens)
        // The second turn ran only the tokens after the shared prefix.
        XCTAssertLessThan(session.lastPrefillTokens, ids.count / 2)
        session.reset()
        XCTAssertEqual(session.messages, [])
    }

    func testTemplateErrorIsClear() {
        XCTAssertThrowsError(try ChatTemplate("{% for m in messages %}{{ m.content }}")) { e in
            XCTAssertTrue("\(e)".contains("for"), "\(e)")
        }
    }
}
