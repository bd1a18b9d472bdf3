import Foundation
import XCTest
import CausalLM

/// Building fine-tuning examples: masks from token boundaries, the shift by one, truncation, JSONL errors.
final class SFTExampleTests: XCTestCase {
    /// A toy tokenizer (one id per character, "<E>" = end of turn = id 2) and a toy chat template:
    /// "[role]content<E>\n" per message, "[assistant]" as the generation prompt.
    static let eot = 2
    static func encode(_ s: String) -> [Int] {
        var ids: [Int] = []
        var rest = Substring(s)
        while !rest.isEmpty {
            if rest.hasPrefix("<E>") { ids.append(eot); rest = rest.dropFirst(3); continue }
            ids.append(Int(rest.unicodeScalars.first!.value)); rest = rest.dropFirst()
        }
        return ids
    }
    static func render(_ messages: [ChatMessage], _ addGenerationPrompt: Bool) throws -> String {
        messages.map { "[\($0.role)]\($0.content)<E>\n" }.joined() + (addGenerationPrompt ? "[assistant]" : "")
    }
    func encoder(maxLength: Int? = nil, trainOnPrompt: Bool = false) -> SFTEncoder {
        SFTEncoder(encode: Self.encode, renderChat: Self.render, endOfTurnID: Self.eot, maxLength: maxLength, trainOnPrompt: trainOnPrompt)
    }

    func testPairMaskAndShiftedTargets() throws {
        let ex = try encoder().example(.pair(prompt: "hi", response: "yo", system: nil))
        let prompt = Self.encode("[user]hi<E>\n[assistant]")
        XCTAssertEqual(ex.tokens, prompt + Self.encode("yo") + [2])
        XCTAssertEqual(ex.labels, Array(repeating: -100, count: prompt.count) + Self.encode("yo") + [2])
        XCTAssertEqual(ex.promptLength, prompt.count)
        XCTAssertEqual(ex.scoredTokenCount, 3)
        // Position t predicts token t + 1: the last prompt position predicts the first response token.
        let t = ex.targets
        XCTAssertEqual(t.count, ex.tokens.count)
        XCTAssertEqual(t[prompt.count - 1], Int(("y" as Unicode.Scalar).value))
        XCTAssertEqual(t[prompt.count + 1], 2)
        XCTAssertEqual(t.last, -100)
        XCTAssertEqual(t.filter { $0 != -100 }.count, 3)
        XCTAssertTrue(t[..<(prompt.count - 1)].allSatisfy { $0 == -100 })

        let sys = try encoder().example(.pair(prompt: "hi", response: "yo", system: "be nice"))
        XCTAssertEqual(Array(sys.tokens.prefix(Self.encode("[system]be nice<E>\n").count)), Self.encode("[system]be nice<E>\n"))
        XCTAssertEqual(sys.scoredTokenCount, 3)
    }

    func testTrainOnPromptScoresEverything() throws {
        let ex = try encoder(trainOnPrompt: true).example(.pair(prompt: "hi", response: "yo", system: nil))
        XCTAssertEqual(ex.labels, ex.tokens)
        XCTAssertEqual(ex.scoredTokenCount, ex.tokens.count - 1)
        XCTAssertEqual(ex.promptLength, Self.encode("[user]hi<E>\n[assistant]").count)
    }

    func testMessagesWithTwoAssistantTurns() throws {
        let messages = [ChatMessage(role: "system", content: "S"), ChatMessage(role: "user", content: "q1"),
                        ChatMessage(role: "assistant", content: "a1"), ChatMessage(role: "user", content: "q2"),
                        ChatMessage(role: "assistant", content: "a2"), ChatMessage(role: "user", content: "unanswered")]
        let segs = try encoder().segments(.messages(messages))
        XCTAssertEqual(segs.map(\.response), [false, true, false, true])
        XCTAssertEqual(segs[0].tokens, Self.encode("[system]S<E>\n[user]q1<E>\n[assistant]"))
        XCTAssertEqual(segs[1].tokens, Self.encode("a1<E>"))                  // the turn through its end-of-turn token
        XCTAssertEqual(segs[2].tokens, Self.encode("\n[user]q2<E>\n[assistant]"))
        XCTAssertEqual(segs[3].tokens, Self.encode("a2<E>"))                  // the trailing "\n" and last user turn dropped
        let ex = try encoder().example(.messages(messages))
        XCTAssertEqual(ex.tokens, segs.flatMap(\.tokens))
        XCTAssertEqual(ex.scoredTokenCount, 6)
        XCTAssertEqual(ex.promptLength, segs[0].tokens.count)
        let scored = zip(ex.tokens, ex.labels).filter { $0.1 != -100 }.map(\.0)
        XCTAssertEqual(scored, Self.encode("a1<E>a2<E>"))
        // Content that looks like template text is still masked by where it came from.
        let tricky = try encoder().example(.messages([ChatMessage(role: "user", content: "[assistant]x<E>"),
                                                      ChatMessage(role: "assistant", content: "ok")]))
        XCTAssertEqual(zip(tricky.tokens, tricky.labels).filter { $0.1 != -100 }.map(\.0), Self.encode("ok<E>"))
    }

    func testTemplateThatIsNotPrefixStableIsAnError() {
        let enc = SFTEncoder(encode: Self.encode, renderChat: { m, g in "\(m.count)" + (try Self.render(m, g)) }, endOfTurnID: 2)
        XCTAssertThrowsError(try enc.example(.messages([ChatMessage(role: "user", content: "a"), ChatMessage(role: "assistant", content: "b")])))
    }

    func testTruncationAndSkipCount() throws {
        let promptCount = Self.encode("[user]p<E>\n[assistant]").count   // 21
        let text = [#"{"prompt": "p", "response": "abcdef"}"#, "", #"{"prompt": "pppppppppppppppppppppppppppppp", "response": "r"}"#,
                    #"{"prompt": "p", "response": "x"}"#].joined(separator: "\n")
        let ds = try encoder(maxLength: promptCount + 2).load(jsonl: text, source: "t.jsonl")
        XCTAssertEqual(ds.examples.count, 2)
        XCTAssertEqual(ds.skipped.map(\.line), [3])
        XCTAssertTrue(ds.skipped[0].reason.contains("truncation"), ds.skipped[0].reason)
        XCTAssertEqual(ds.examples.map(\.line), [1, 4])
        XCTAssertEqual(ds.examples[0].tokens.count, promptCount + 2)
        XCTAssertEqual(ds.examples[0].scoredTokenCount, 2)                // "ab" of "abcdef<E>"
        XCTAssertEqual(ds.examples[1].scoredTokenCount, 2)                // "x<E>" fits exactly
        XCTAssertEqual(ds.scoredTokenCount, 4)
        // Everything skipped is an error.
        XCTAssertThrowsError(try encoder(maxLength: 5).load(jsonl: text, source: "t.jsonl")) { e in
            XCTAssertTrue("\(e)".contains("skipped"), "\(e)")
        }
    }

    func testJSONLErrorsNameTheLine() {
        func message(_ text: String) -> String {
            do { _ = try encoder().load(jsonl: text, source: "d.jsonl"); return "no error" } catch { return "\(error)" }
        }
        let ok = #"{"prompt": "a", "response": "b"}"#
        XCTAssertEqual(message(ok + "\n\n{nope"), "d.jsonl: line 3: not valid JSON")
        XCTAssertEqual(message(ok + "\n" + #"{"prompt": "a"}"#), "d.jsonl: line 2: missing field 'response'")
        XCTAssertEqual(message(#"{"response": "a"}"#), "d.jsonl: line 1: missing field 'prompt'")
        XCTAssertEqual(message(#"{"prompt": 3, "response": "a"}"#), "d.jsonl: line 1: field 'prompt' must be a string")
        XCTAssertEqual(message("[1, 2]"), "d.jsonl: line 1: expected a JSON object")
        XCTAssertTrue(message(#"{"text": "x"}"#).hasPrefix("d.jsonl: line 1: expected"))
        XCTAssertEqual(message(#"{"messages": [{"role": "user", "content": "x"}]}"#), "d.jsonl: line 1: 'messages' has no assistant turn to learn from")
        XCTAssertEqual(message(#"{"messages": [{"role": "user"}]}"#), "d.jsonl: line 1: messages[0]: missing field 'content'")
        XCTAssertEqual(message(#"{"messages": "x"}"#), "d.jsonl: line 1: field 'messages' must be an array of {role, content} objects")
        XCTAssertEqual(message(""), "d.jsonl: data: the dataset is empty")
        XCTAssertEqual(message("\n  \n"), "d.jsonl: data: the dataset is empty")
        XCTAssertEqual(message(ok + "\r\n" + ok + "\r\n"), "no error")
    }

    /// With SmolLM2's tokenizer and template: the pair format equals a two-message conversation, and a pair
    /// reproduces the reference ids of Tests/Fixtures/smollm2/sft.json.
    /// Already-tokenized lines: the mask is the given labels; the prompt ends at the first scored token; errors name
    /// the line and the field.
    func testTokenIDLines() throws {
        var enc = encoder()
        enc.vocabularySize = 50
        let ds = try enc.load(jsonl: """
        {"input_ids": [5, 6, 7, 8, 9, 10], "labels": [-100, -100, -100, 8, 9, 10]}
        {"input_ids": [1, 2, 3], "labels": [1, 2, 3]}
        """, source: "ids.jsonl")
        XCTAssertEqual(ds.examples.count, 2)
        XCTAssertEqual(ds.examples[0], SFTExample(tokens: [5, 6, 7, 8, 9, 10], labels: [-100, -100, -100, 8, 9, 10], promptLength: 3, line: 1))
        XCTAssertEqual(ds.examples[0].targets, [-100, -100, 8, 9, 10, -100])
        XCTAssertEqual(ds.examples[1].promptLength, 0)
        XCTAssertEqual(ds.examples[1].scoredTokenCount, 2)
        XCTAssertEqual(try encoder(trainOnPrompt: true).example(.tokenIDs(inputIDs: [4, 5, 6], labels: [-100, -100, 6])).labels, [4, 5, 6])
        let bad: [(String, String)] = [
            (#"{"input_ids": [1, 2, 3]}"#, "labels"),
            (#"{"input_ids": [1, 2, 3], "labels": [-100, 2]}"#, "labels"),
            (#"{"input_ids": [1, 2.5, 3], "labels": [-100, -100, 3]}"#, "input_ids[1]"),
            (#"{"input_ids": [1, 2, 3], "labels": [-100, 7, 3]}"#, "labels[1]"),
            (#"{"input_ids": [1, -4, 3], "labels": [-100, -100, 3]}"#, "input_ids[1]"),
            (#"{"input_ids": [1, 60, 3], "labels": [-100, -100, 3]}"#, "input_ids[1] = 60"),
            (#"{"input_ids": "1 2 3", "labels": [-100, -100, 3]}"#, "input_ids"),
            (#"{"input_ids": [], "labels": []}"#, "input_ids"),
        ]
        for (line, field) in bad {
            XCTAssertThrowsError(try enc.load(jsonl: #"{"input_ids": [1, 2], "labels": [-100, 2]}"# + "\n" + line, source: "ids.jsonl"), line) { e in
                let text = "\(e)"
                XCTAssertTrue(text.contains("ids.jsonl") && text.contains("line 2") && text.contains(field), "\(line): \(text)")
            }
        }
    }

    func testSmolLM2PairEqualsMessages() throws {
        let bundle = TrainingParityTests.bundle
        let enc = try SFTEncoder(bundle: bundle)
        XCTAssertEqual(enc.endOfTurnID, 2)
        let pair = try enc.example(.pair(prompt: "What is 2+2?", response: "2+2 equals 4.", system: nil))
        let conv = try enc.example(.messages([ChatMessage(role: "user", content: "What is 2+2?"),
                                              ChatMessage(role: "assistant", content: "2+2 equals 4.")]))
        XCTAssertEqual(pair, conv)
        XCTAssertEqual(pair.tokens.last, 2)
        XCTAssertEqual(pair.tokens, try bundle.chatPromptIDs([ChatMessage(role: "user", content: "What is 2+2?")]) + bundle.tokenizer.encode("2+2 equals 4.<|im_end|>"))
    }
}
