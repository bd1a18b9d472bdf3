import XCTest
import CausalLM

/// OpenAI's penalties and logit bias, and prompt scoring, checked against the logits the model gives.
final class SamplingParametersTests: XCTestCase {
    /// Generates greedily, recording the raw logits each token was chosen from.
    func run(_ g: Generator, _ prompt: [Int], _ p: GenerateParameters) throws -> (GenerationResult, [[Float]]) {
        var rows: [[Float]] = []
        var o = GenerationObserver()
        o.onLogits = { _, l in rows.append(Array(l)) }
        let r = try g.generate([SequenceRequest(prompt: prompt, parameters: p)], observer: o)[0]
        return (r, rows)
    }

    func testPresenceAndFrequencyPenaltiesFollowOpenAIsFormula() throws {
        let path = try TinyModel.write(dtype: .q8_0)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let g = try ModelBundle(path: path).makeGenerator()
        let prompt = [5, 6, 7, 5]
        let plain = try run(g, prompt, GenerateParameters(maxNewTokens: 24, stopAtEOS: false)).0
        // Without penalties the tiny model repeats itself; with them each step's choice is the argmax of
        // logit - count * frequency - (count > 0) * presence over the new tokens only (prompt tokens are not counted).
        XCTAssertLessThan(Set(plain.tokens).count, plain.tokens.count, "the test needs a model that repeats")
        for (presence, frequency) in [(Float(1.5), Float(0)), (0, 0.7), (0.4, 1.1), (-0.5, 0)] {
            let p = GenerateParameters(maxNewTokens: 24, stopAtEOS: false, presencePenalty: presence, frequencyPenalty: frequency)
            let (r, rows) = try run(g, prompt, p)
            XCTAssertEqual(rows.count, r.tokens.count)
            var counts: [Int: Int] = [:]
            for (step, id) in r.tokens.enumerated() {
                var adjusted = rows[step]
                for (t, n) in counts { adjusted[t] -= presence + frequency * Float(n) }
                XCTAssertEqual(id, Sampler.argmax(adjusted), "step \(step), presence \(presence), frequency \(frequency)")
                counts[id, default: 0] += 1
            }
            if presence > 0 || frequency > 0 { XCTAssertNotEqual(r.tokens, plain.tokens) }
        }
    }

    func testLogitBiasForcesAndBans() throws {
        let path = try TinyModel.write(dtype: .q8_0)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let g = try ModelBundle(path: path).makeGenerator()
        let prompt = [5, 6, 7]
        let plain = try run(g, prompt, GenerateParameters(maxNewTokens: 8, stopAtEOS: false)).0
        // +100 on one id makes it the only greedy choice; sampling at temperature 1 too (its probability is ~1).
        for temperature in [Float(0), 1] {
            let forced = try run(g, prompt, GenerateParameters(maxNewTokens: 8, temperature: temperature, seed: 3, stopAtEOS: false,
                                                                logitBias: [42: 100])).0
            XCTAssertEqual(forced.tokens, Array(repeating: 42, count: 8))
        }
        // -100 on the tokens greedy chose moves every step to the argmax of the remaining logits.
        let banned = Set(plain.tokens)
        let (r, rows) = try run(g, prompt, GenerateParameters(maxNewTokens: 8, stopAtEOS: false,
                                                              logitBias: Dictionary(uniqueKeysWithValues: banned.map { ($0, -100) })))
        for (step, id) in r.tokens.enumerated() {
            XCTAssertFalse(banned.contains(id))
            var adjusted = rows[step]
            for b in banned { adjusted[b] -= 100 }
            XCTAssertEqual(id, Sampler.argmax(adjusted))
        }
        // Out-of-range values and ids are refused, naming what is wrong.
        XCTAssertThrowsError(try GenerateParameters(logitBias: [1: 101]).validate()) { XCTAssertTrue("\($0)".contains("logitBias")) }
        XCTAssertThrowsError(try GenerateParameters(presencePenalty: 2.5).validate()) { XCTAssertTrue("\($0)".contains("presencePenalty")) }
        XCTAssertThrowsError(try GenerateParameters(frequencyPenalty: -3).validate()) { XCTAssertTrue("\($0)".contains("frequencyPenalty")) }
        XCTAssertThrowsError(try g.generate([SequenceRequest(prompt: prompt, parameters: GenerateParameters(logitBias: [TinyModel.vocab: 1]))])) {
            XCTAssertTrue("\($0)".contains("\(TinyModel.vocab)"), "\($0)")
        }
    }

    /// Prompt scoring gives each prompt token the log-probability it gets when the prefix before it runs alone and
    /// its next-token logits are read: bit for bit (rows do not depend on how the prompt is chunked), with the
    /// alternatives, on the default model; and the same through the Scheduler, chunked, with no new tokens.
    func testPromptLogprobsEqualOneByOneScoring() async throws {
        let bundle = try ModelBundle(path: TestModel.path)
        let g = bundle.makeGenerator()
        let prompt = try bundle.tokenizer.encode("The capital of France is Paris, and the capital of Italy is Rome.")
        let scored = try g.generate([SequenceRequest(prompt: prompt, parameters: GenerateParameters(
            maxNewTokens: 0, logprobs: true, topLogprobs: 3, promptLogprobs: true))])[0]
        XCTAssertEqual(scored.tokens, [])
        XCTAssertEqual(scored.finishReason, .length)
        let lp = try XCTUnwrap(scored.promptLogprobs)
        XCTAssertEqual(lp.count, prompt.count - 1)
        for k in 1..<prompt.count {
            let (_, rows) = try run(g, Array(prompt[0..<k]), GenerateParameters(maxNewTokens: 1, stopAtEOS: false))
            let expected = TokenLogprob(id: prompt[k], logits: rows[0][...], top: 3)
            XCTAssertEqual(lp[k - 1], expected, "prompt token \(k)")
            XCTAssertEqual(lp[k - 1].top.count, 3)
        }
        XCTAssertLessThan(lp.map(\.logprob).reduce(0, +), 0)

        // With new tokens: the prompt's scores are unchanged and the generation equals the unscored one.
        let p = GenerateParameters(maxNewTokens: 4, stopAtEOS: false, logprobs: true, topLogprobs: 3)
        var ps = p; ps.promptLogprobs = true
        let both = try g.generate([SequenceRequest(prompt: prompt, parameters: ps)], chunkSize: 5)[0]
        let plain = try g.generate([SequenceRequest(prompt: prompt, parameters: p)])[0]
        XCTAssertEqual(both.promptLogprobs, lp)
        XCTAssertEqual(both.tokens, plain.tokens)
        XCTAssertEqual(both.logprobs, plain.logprobs)

        // The Scheduler, with prompt chunks of 7 tokens beside another sequence.
        let scheduler = try Scheduler(bundle: bundle, maxSequences: 2, contextLength: 256, maxTokensPerStep: 8)
        let (other, _) = try scheduler.submit(SequenceRequest(prompt: Array(prompt.prefix(3)), parameters: p))
        let (events, _) = try scheduler.submit(SequenceRequest(prompt: prompt, parameters: GenerateParameters(
            maxNewTokens: 0, logprobs: true, topLogprobs: 3, promptLogprobs: true)))
        var fromScheduler: GenerationResult?
        for await e in events { if case let .finished(_, r, _) = e { fromScheduler = r } }
        for await _ in other {}
        XCTAssertEqual(fromScheduler?.promptLogprobs, lp)
        XCTAssertEqual(fromScheduler?.tokens, [])
        await scheduler.shutdown(cancelInFlight: false)

        // A continued cache cannot be scored (its positions never produced logits here).
        let cache = bundle.model.makeCache(capacity: nil)
        _ = try bundle.model.forward([SequenceChunk(cache: cache, tokens: Array(prompt.prefix(2)), logits: .none)])
        XCTAssertThrowsError(try g.generate([SequenceRequest(prompt: prompt, parameters: ps, cache: cache)])) {
            XCTAssertTrue("\($0)".contains("scoring the prompt"), "\($0)")
        }
    }
}
