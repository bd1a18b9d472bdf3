import Foundation
import XCTest
import CausalLM

/// SmolLM2-135M-Instruct against Hugging Face transformers (fp32 on the dequantized GGUF weights).
final class LlamaParityTests: XCTestCase {
    static let reference: ModelBundle = { try! ModelBundle(path: TestModel.path, precision: .reference) }()
    static let fast: ModelBundle = { try! ModelBundle(path: TestModel.path, precision: .fast) }()

    struct LogitCase { let prompt: String; let ids: [Int]; let top20: [[(Int, Float)]]; let last: [Float] }

    static func logitCases() throws -> [LogitCase] {
        let rows = try Fixtures.json("smollm2/logits.json") as! [[String: Any]]
        return try rows.map { r in
            let top = (r["top20_per_position"] as! [[[Any]]]).map { pos in
                pos.map { pair in ((pair[0] as! NSNumber).intValue, (pair[1] as! NSNumber).floatValue) }
            }
            return LogitCase(prompt: r["prompt"] as! String, ids: (r["ids"] as! [NSNumber]).map(\.intValue),
                             top20: top, last: try Fixtures.npyFloats("smollm2/" + (r["last_logits_file"] as! String)))
        }
    }

    /// All-position logits of one prompt run alone.
    static func logits(_ bundle: ModelBundle, _ ids: [Int]) throws -> [Float] {
        let cache = bundle.model.makeCache(capacity: 256)
        return try bundle.model.forward([SequenceChunk(cache: cache, tokens: ids, logits: .all)])[0]
    }

    func testTokenizationOfLogitPrompts() throws {
        for c in try Self.logitCases() {
            XCTAssertEqual(try Self.reference.tokenizer.encode(c.prompt), c.ids, c.prompt)
        }
    }

    func testReferenceLogitsMatchHF() throws {
        let V = 49152
        for c in try Self.logitCases() {
            let all = try Self.logits(Self.reference, c.ids)
            XCTAssertEqual(all.count, c.ids.count * V)
            let last = Array(all[((c.ids.count - 1) * V)...])
            var worst = 0
            var maxDiff: Float = 0
            for i in 0..<V where abs(last[i] - c.last[i]) > maxDiff { maxDiff = abs(last[i] - c.last[i]); worst = i }
            print("[parity] '\(c.prompt)': last-position max |Δlogit| = \(maxDiff) at id \(worst) (ours \(last[worst]), HF \(c.last[worst]))")
            XCTAssertLessThanOrEqual(maxDiff, 1e-3, "'\(c.prompt)': worst id \(worst): ours \(last[worst]) vs HF \(c.last[worst])")
            // Top-20 ids at every position, in order.
            for (pos, hfTop) in c.top20.enumerated() {
                let row = Array(all[(pos * V)..<((pos + 1) * V)])
                let ours = row.indices.sorted { row[$0] > row[$1] || (row[$0] == row[$1] && $0 < $1) }.prefix(20)
                XCTAssertEqual(Array(ours), hfTop.map(\.0), "'\(c.prompt)' position \(pos)")
                for (id, v) in hfTop { XCTAssertEqual(row[id], v, accuracy: 1e-3, "'\(c.prompt)' position \(pos) id \(id)") }
            }
        }
    }

    /// Fast precision: quantized weights in place, fp32 activations. docs/benchmarks.md claims the two precisions give
    /// bit-identical logits on these prompts (max |Δ| = 0, KL = 0): every logit at every position is compared by bit
    /// pattern (the distance and KL are printed too).
    func testFastAgainstReference() throws {
        let V = 49152
        var differing = 0
        for c in try Self.logitCases() {
            let r = try Self.logits(Self.reference, c.ids)
            let f = try Self.logits(Self.fast, c.ids)
            XCTAssertEqual(r.count, c.ids.count * V)
            XCTAssertEqual(f.count, r.count)
            var maxDiff: Float = 0
            var klSum = 0.0
            var here = 0
            for pos in 0..<c.ids.count {
                let a = Array(r[(pos * V)..<((pos + 1) * V)]), b = Array(f[(pos * V)..<((pos + 1) * V)])
                for i in 0..<V where a[i].bitPattern != b[i].bitPattern { here += 1; maxDiff = max(maxDiff, abs(a[i] - b[i])) }
                klSum += Self.kl(a, b)
            }
            let kl = klSum / Double(c.ids.count)
            print("[fast-vs-reference] '\(c.prompt)': \(here) of \(r.count) logits differ in bits, max |Δlogit| = \(maxDiff), mean KL(ref‖fast) = \(kl)")
            XCTAssertEqual(here, 0, "'\(c.prompt)': fast and reference logits differ (max |Δ| \(maxDiff), KL \(kl))")
            differing += here
        }
        XCTAssertEqual(differing, 0)
    }

    static func kl(_ p: [Float], _ q: [Float]) -> Double {
        func logSoftmax(_ x: [Float]) -> [Double] {
            let m = Double(x.max()!)
            let lse = m + log(x.reduce(0.0) { $0 + exp(Double($1) - m) })
            return x.map { Double($0) - lse }
        }
        let lp = logSoftmax(p), lq = logSoftmax(q)
        var s = 0.0
        for i in lp.indices { s += exp(lp[i]) * (lp[i] - lq[i]) }
        return s
    }

    struct GreedyCase { let prompt: String; let promptIDs: [Int]; let tokens: [Int]; let text: String }

    static func greedyCases() throws -> [GreedyCase] {
        let rows = try Fixtures.json("smollm2/greedy.json") as! [[String: Any]]
        return rows.map { r in
            GreedyCase(prompt: r["prompt"] as! String, promptIDs: (r["prompt_ids"] as! [NSNumber]).map(\.intValue),
                       tokens: (r["tokens"] as! [NSNumber]).map(\.intValue), text: r["text"] as! String)
        }
    }

    /// Greedy generation in reference precision reproduces HF's batch-size-1 tokens for every prompt.
    func testReferenceGreedyMatchesHF() throws {
        let b = Self.reference
        let cases = try Self.greedyCases()
        var requests: [SequenceRequest] = []
        for c in cases {
            let ids = try b.chatPromptIDs([ChatMessage(role: "user", content: c.prompt)])
            XCTAssertEqual(ids, c.promptIDs, "chat prompt ids for '\(c.prompt)'")
            requests.append(SequenceRequest(prompt: ids, parameters: GenerateParameters(maxNewTokens: 48, temperature: 0)))
        }
        let results = try b.makeGenerator().generate(requests)
        for (c, r) in zip(cases, results) {
            XCTAssertEqual(r.tokens, c.tokens, "'\(c.prompt)': ours \(r.text.debugDescription)")
            let eos = c.tokens.last == 2
            XCTAssertEqual(r.finishReason, eos ? .stop : .length)
            XCTAssertEqual(r.text + (eos ? "<|im_end|>" : ""), c.text)
            XCTAssertEqual(r.promptTokens, c.promptIDs.count)
        }
    }

    /// In fast precision the greedy answers are the reference's (and HF's), token for token, on every prompt.
    func testFastGreedyKeepsReferenceAnswers() throws {
        let cases = try Self.greedyCases()
        let requests = cases.map { SequenceRequest(prompt: $0.promptIDs, parameters: GenerateParameters(maxNewTokens: 48, temperature: 0)) }
        let results = try Self.fast.makeGenerator().generate(requests)
        XCTAssertEqual(results.count, cases.count)
        for (c, r) in zip(cases, results) {
            XCTAssertEqual(r.tokens, c.tokens, "'\(c.prompt)': fast gives \(r.text.debugDescription)")
        }
        XCTAssertTrue(results[0].text.contains("Paris"), results[0].text)
    }
}
