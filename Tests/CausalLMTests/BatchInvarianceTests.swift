import Foundation
import XCTest
import CausalLM
import CausalKernels

/// A sequence's logits are bit-identical whether it runs alone, in any batch, in any order, with either padding
/// side, or with its prompt split into chunks.
final class BatchInvarianceTests: XCTestCase {
    /// Per-request record of every logit row (as raw bits) and the tokens.
    struct Trace: Equatable { var steps: [[UInt32]] = []; var tokens: [Int] = [] }

    static func run(_ g: Generator, _ prompts: [[Int]], _ params: [GenerateParameters], chunk: Int?) throws -> [Trace] {
        var traces = [Trace](repeating: Trace(), count: prompts.count)
        var observer = GenerationObserver()
        observer.onLogits = { i, row in traces[i].steps.append(row.map(\.bitPattern)) }
        let results = try g.generate(zip(prompts, params).map { SequenceRequest(prompt: $0, parameters: $1) },
                                     chunkSize: chunk, observer: observer)
        for (i, r) in results.enumerated() { traces[i].tokens = r.tokens }
        return traces
    }

    static func checkInvariance(bundlePath: String, precision: Precision, prompts: [[Int]], params: [GenerateParameters],
                         batchSizes: [Int], chunks: [Int?], seed: UInt64) throws {
        let bundle = try ModelBundle(path: bundlePath, precision: precision)
        let g = bundle.makeGenerator()
        // Each sequence alone, whole prompt: the reference.
        let alone = try prompts.indices.map { try Self.run(g, [prompts[$0]], [params[$0]], chunk: nil)[0] }
        for t in alone { XCTAssertFalse(t.steps.isEmpty) }
        var rng = SequenceRNG(seed: seed)
        for B in batchSizes {
            for chunk in chunks {
                for side in [nil] + PaddingSide.allCases.map(Optional.some) {
                    // A random subset of B prompts in shuffled order.
                    let order = Array(prompts.indices.shuffled(using: &rng).prefix(B))
                    var rows = order.map { prompts[$0] }
                    if let side {
                        let padded = PaddedBatch.padding(rows, side: side, padID: 0)
                        rows = try padded.unpadded(vocabularySize: bundle.model.vocabularySize)
                    }
                    let traces = try Self.run(g, rows, order.map { params[$0] }, chunk: chunk)
                    for (k, i) in order.enumerated() {
                        XCTAssertEqual(traces[k].tokens, alone[i].tokens, "prompt \(i), batch \(B), chunk \(String(describing: chunk)), padding \(String(describing: side))")
                        XCTAssertEqual(traces[k].steps.count, alone[i].steps.count)
                        for (s, (a, b)) in zip(traces[k].steps, alone[i].steps).enumerated() where a != b {
                            XCTFail("prompt \(i) step \(s): logits differ in bits (batch \(B), chunk \(String(describing: chunk)), padding \(String(describing: side)))")
                            break
                        }
                    }
                }
            }
        }
    }

    func testTinyModelRandomBatches() throws {
        for dtype in [DType.f32, .q4_1, .q8_0] {
            let path = try TinyModel.write(dtype: dtype)
            defer { try? FileManager.default.removeItem(atPath: path) }
            var rng = SequenceRNG(seed: 42)
            let prompts = (0..<16).map { _ in (0..<(1 + Int(rng.next() % 40))).map { _ in 1 + Int(rng.next() % 96) } }
            // Greedy and seeded sampling, different lengths.
            let params = (0..<16).map { i in
                GenerateParameters(maxNewTokens: 4 + i % 9, temperature: i % 3 == 0 ? 0 : 0.9, topK: i % 2 == 0 ? 0 : 20,
                                   topP: 0.95, seed: UInt64(1000 + i), stopAtEOS: false)
            }
            for precision in Precision.allCases {
                try Self.checkInvariance(bundlePath: path, precision: precision, prompts: prompts, params: params,
                                    batchSizes: [1, 2, 3, 5, 8, 16], chunks: [1, 7, nil], seed: 9)
            }
        }
    }

    func testDefaultModelBatches() throws {
        let bundle = try ModelBundle(path: TestModel.path)
        let texts = ["The capital of France is", "Once upon a time, there was a little", "def fibonacci(n):", "1, 2, 3, 4,",
                     "Water boils at", "My favourite colour is"]
        let prompts = try texts.map { try bundle.tokenizer.encode($0) }
        let params = prompts.indices.map { GenerateParameters(maxNewTokens: 6, temperature: $0 % 2 == 0 ? 0 : 0.8, seed: UInt64($0)) }
        try Self.checkInvariance(bundlePath: TestModel.path, precision: .fast, prompts: prompts, params: params,
                            batchSizes: [6, 4], chunks: [7, nil], seed: 3)
    }

    /// HF's greedy outputs at batch size 1, reproduced from one padded batch of all prompts, left and right.
    /// (HF's own right-padded batch differs from its batch-1 output from the first token; see the fixture.)
    func testHFGreedyFromPaddedBatches() throws {
        let rows = try Fixtures.json("smollm2/greedy.json") as! [[String: Any]]
        let prompts = rows.map { ($0["prompt_ids"] as! [NSNumber]).map(\.intValue) }
        let expected = rows.map { ($0["tokens"] as! [NSNumber]).map(\.intValue) }
        // The fixture records HF's right-padding drift: every row that was padded differs from its first token.
        let longest = prompts.map(\.count).max()!
        for (r, p) in zip(rows, prompts) where p.count < longest {
            XCTAssertEqual(r["hf_batched_right_first_diff"] as? Int, 0)
        }
        let g = LlamaParityTests.reference.makeGenerator()
        for side in PaddingSide.allCases {
            let padded = PaddedBatch.padding(prompts, side: side, padID: 2)   // pad == eos, as HF
            let unpadded = try padded.unpadded(vocabularySize: 49152)
            XCTAssertEqual(unpadded, prompts)
            let results = try g.generate(unpadded.map { SequenceRequest(prompt: $0, parameters: GenerateParameters(maxNewTokens: 48)) })
            for (r, e) in zip(results, expected) { XCTAssertEqual(r.tokens, e, "padding \(side)") }
        }
    }

    func testPaddedBatchErrorsNameTheRow() {
        func message(_ b: PaddedBatch) -> String {
            do { _ = try b.unpadded(vocabularySize: 100); return "no error" } catch { return "\(error)" }
        }
        XCTAssertTrue(message(PaddedBatch(inputIDs: [[1, 2, 3], [1, 2]], attentionMask: [[1, 1, 1], [1, 1]])).contains("row 1: input_ids has 2 entries"))
        XCTAssertTrue(message(PaddedBatch(inputIDs: [[1, 2, 3]], attentionMask: [[1, 1]])).contains("row 0: attention_mask has 2 entries"))
        XCTAssertTrue(message(PaddedBatch(inputIDs: [[1, 2], [3, 4]], attentionMask: [[1, 1]])).contains("attention_mask has 1 rows"))
        XCTAssertTrue(message(PaddedBatch(inputIDs: [[1, 2], [3, 4]], attentionMask: [[1, 1], [0, 0]])).contains("row 1: has no tokens"))
        XCTAssertTrue(message(PaddedBatch(inputIDs: [[1, 2, 3]], attentionMask: [[1, 0, 1]])).contains("row 0: attention_mask has a hole at position 1"))
        XCTAssertTrue(message(PaddedBatch(inputIDs: [[1, 2], [5, 100]], attentionMask: [[1, 1], [1, 1]])).contains("row 1: token id 100 is outside the vocabulary"))
        XCTAssertTrue(message(PaddedBatch(inputIDs: [[0, 5, 6]], attentionMask: [[0, 1, 1]], positionIDs: [[0, 1, 2]])).contains("row 0: position_ids"))
        XCTAssertTrue(message(PaddedBatch(inputIDs: [[1, 2]], attentionMask: [[1, 2]])).contains("row 0: attention_mask holds 2"))
        // A valid left/right mix unpads to the tokens alone.
        XCTAssertEqual(try PaddedBatch(inputIDs: [[9, 9, 5, 6], [7, 8, 9, 9]], attentionMask: [[0, 0, 1, 1], [1, 1, 0, 0]],
                                       positionIDs: [[1, 1, 0, 1], [0, 1, 1, 1]]).unpadded(), [[5, 6], [7, 8]])
    }

    func testStreamEventsAndCancel() async throws {
        let path = try TinyModel.write(dtype: .q8_0)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let bundle = try ModelBundle(path: path)
        let g = bundle.makeGenerator()
        let p = GenerateParameters(maxNewTokens: 12, stopAtEOS: false)
        let expected = try g.generate([SequenceRequest(prompt: [5, 6, 7], parameters: p), SequenceRequest(prompt: [9], parameters: p)])
        let (events, _) = g.stream([SequenceRequest(prompt: [5, 6, 7], parameters: p), SequenceRequest(prompt: [9], parameters: p)])
        var tokens: [[Int]] = [[], []], text = ["", ""]
        var finished: [GenerationResult?] = [nil, nil]
        for await e in events {
            switch e {
            case let .token(i, id): tokens[i].append(id)
            case let .text(i, d): text[i] += d
            case let .finished(i, r, t): finished[i] = r; XCTAssertNotNil(t.timeToFirstToken)
            case let .failed(m): XCTFail(m)
            case .logprob: XCTFail("a logprob event without logprobs asked for")
            }
        }
        XCTAssertEqual(finished.compactMap { $0 }, expected)
        XCTAssertEqual(tokens, expected.map(\.tokens))
        XCTAssertEqual(text, expected.map(\.text))

        // Cancelling one sequence stops it; the other runs to its end unchanged.
        let long = GenerateParameters(maxNewTokens: 200, stopAtEOS: false)
        let (events2, handle) = g.stream([SequenceRequest(prompt: [5, 6, 7], parameters: long), SequenceRequest(prompt: [9], parameters: p)])
        var results: [Int: GenerationResult] = [:]
        for await e in events2 {
            if case let .token(i, _) = e, i == 0 { handle.cancel(0) }
            if case let .finished(i, r, _) = e { results[i] = r }
        }
        XCTAssertEqual(results[0]?.finishReason, .cancelled)
        XCTAssertLessThan(results[0]?.tokens.count ?? 999, 200)
        XCTAssertEqual(results[1], expected[1])
    }
}
