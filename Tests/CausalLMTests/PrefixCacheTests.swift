import Foundation
import XCTest
import CausalLM
import CausalKernels

/// Automatic prefix caching and n > 1 choices in the Scheduler: a request that starts from cached rows, or a choice
/// that starts from another choice's prompt, gives exactly (tokens, text, every logprob and alternative, bit for bit)
/// what it gives with the cache off / alone.
final class PrefixCacheTests: XCTestCase {
    struct Choice: Equatable {
        var tokens: [Int] = []
        var text = ""
        var logprobs: [TokenLogprob] = []
        var result: GenerationResult?
    }

    /// Runs one request to the end; returns its choices by index.
    static func run(_ s: Scheduler, _ r: SequenceRequest, n: Int = 1) async throws -> [Choice] {
        let (events, _) = try s.submit(r, n: n)
        var out = [Choice](repeating: Choice(), count: n)
        for await e in events {
            switch e {
            case let .token(i, id): out[i].tokens.append(id)
            case let .text(i, d): out[i].text += d
            case let .finished(i, r, _): out[i].result = r
            case let .failed(m): XCTFail("failed: \(m)")
            case let .logprob(i, lp): out[i].logprobs.append(lp)
            }
        }
        for (i, c) in out.enumerated() {
            XCTAssertEqual(c.tokens, c.result?.tokens, "choice \(i): token events")
            XCTAssertEqual(c.logprobs, c.result?.logprobs ?? [], "choice \(i): logprob events, one per token, in order")
            XCTAssertEqual(c.text, c.result?.text, "choice \(i): text events")
        }
        return out
    }

    static func params(_ i: Int, maxNewTokens: Int = 8) -> GenerateParameters {
        // Greedy and seeded sampling; every logprob with 5 alternatives is compared exactly.
        GenerateParameters(maxNewTokens: maxNewTokens, temperature: i % 2 == 0 ? 0 : 0.9, topK: i % 4 == 1 ? 20 : 0,
                           seed: UInt64(500 + i), stopAtEOS: false, logprobs: true, topLogprobs: 5)
    }

    func tinyPath(_ dtype: DType = .f32) throws -> String {
        let path = try TinyModel.write(dtype: dtype, seed: 21)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    /// Prompts in order, each sent after the previous one ended, on `generator` with the cache off and on.
    static func compare(_ generator: Generator, prompts: [[Int]], budget: Int, maxNewTokens: Int = 8,
                 file: StaticString = #filePath, line: UInt = #line) async throws -> (SchedulerMetrics, [[Int]]) {
        let off = try Scheduler(generator: generator, maxSequences: 4, contextLength: 256, maxTokensPerStep: 16)
        let on = try Scheduler(generator: generator, maxSequences: 4, contextLength: 256, maxTokensPerStep: 16,
                               prefixCacheBytes: budget)
        var outputs: [[Int]] = []
        for (i, p) in prompts.enumerated() {
            let r = SequenceRequest(prompt: p, parameters: Self.params(i, maxNewTokens: maxNewTokens))
            let a = try await Self.run(off, r)[0], b = try await Self.run(on, r)[0]
            XCTAssertNotNil(a.result, file: file, line: line)
            XCTAssertEqual(a, b, "prompt \(i): cache on differs from cache off", file: file, line: line)
            XCTAssertEqual(a.result?.logprobs?.count, maxNewTokens, file: file, line: line)
            outputs.append(a.result?.tokens ?? [])
        }
        let mOff = off.metrics
        XCTAssertEqual(mOff.prefixCacheHits + mOff.prefixCacheMisses, 0, file: file, line: line)
        XCTAssertEqual(mOff.promptTokens, prompts.reduce(0) { $0 + $1.count }, file: file, line: line)
        await off.shutdown(cancelInFlight: false)
        await on.shutdown(cancelInFlight: false)
        return (on.metrics, outputs)
    }

    /// Hit, continuation of a finished sequence (its generated tokens' rows), partial hit inside an edge, miss.
    static func checkHits(_ generator: Generator, vocabulary V: Int) async throws {
        var rng = SequenceRNG(seed: 3)
        func tokens(_ n: Int, from lo: Int) -> [Int] { (0..<n).map { _ in lo + Int(rng.next() % UInt64(V / 2 - 1)) } }
        let base = tokens(30, from: 1)
        let first = try await Self.compare(generator, prompts: [base], budget: 1 << 20).1[0]
        let third = Array(base[..<20]) + tokens(6, from: V / 2)
        let prompts: [[Int]] = [
            base,                                         // miss
            base + first + tokens(5, from: 1),            // hit: the prompt and the generated tokens' rows (all but the last)
            third,                                        // partial: 20 tokens, inside the first edge
            tokens(12, from: V / 2),                      // miss (different first token)
            third + [1, 2, 3],                            // the third prompt (and what of its answer it agrees with)
        ]
        XCTAssertNotEqual(prompts[3][0], base[0])
        let (m, outputs) = try await Self.compare(generator, prompts: prompts, budget: 1 << 20)
        XCTAssertEqual(outputs[0], first)
        XCTAssertEqual(m.prefixCacheMisses, 2)
        XCTAssertEqual(m.prefixCacheHits, 3)
        // 30 + 8 - 1 positions of the first sequence (its last token never ran), 20, then the third prompt's 26
        // plus as much of its 7 cached answer rows as the fifth prompt repeats (at most up to its last token).
        let cachedThird = third + outputs[2].prefix(7)
        var fifthHit = 0
        while fifthHit < prompts[4].count - 1 && fifthHit < cachedThird.count && cachedThird[fifthHit] == prompts[4][fifthHit] { fifthHit += 1 }
        XCTAssertGreaterThanOrEqual(fifthHit, 26)
        XCTAssertEqual(m.prefixCacheHitTokens, 37 + 20 + fifthHit)
        XCTAssertEqual(m.promptTokens, prompts.reduce(0) { $0 + $1.count } - m.prefixCacheHitTokens)
        XCTAssertEqual(m.prefixCacheEvictions, 0)
        XCTAssertGreaterThan(m.prefixCacheBytes, 0)
        XCTAssertEqual(m.prefixCacheLimitBytes, 1 << 20)
    }

    func testTinyLlamaHitsGiveIdenticalResults() async throws {
        for dtype in [DType.f32, .q8_0] {
            let bundle = try ModelBundle(path: try tinyPath(dtype))
            try await Self.checkHits(bundle.makeGenerator(), vocabulary: TinyModel.vocab)
        }
    }

    /// The default model: a chat resent with its history, and prompts sharing a system prompt, on cache on and off
    /// (greedy and seeded sampling, every logprob compared exactly); then n = 3 against n = 1.
    func testSmolLM2ChatHistory() async throws {
        let bundle = try ModelBundle(path: TestModel.path)
        let gen = bundle.makeGenerator()
        let system = ChatMessage(role: "system", content: "You are a concise assistant. Answer in one short sentence.")
        let q1 = ChatMessage(role: "user", content: "What is the capital of France?")
        let first = try bundle.chatPromptIDs([system, q1])
        let answer = try gen.generate([SequenceRequest(prompt: first, parameters: Self.params(0, maxNewTokens: 6))])[0]
        let prompts = [
            first,
            try bundle.chatPromptIDs([system, q1, ChatMessage(role: "assistant", content: answer.text),
                                      ChatMessage(role: "user", content: "And of Italy?")]),
            try bundle.chatPromptIDs([system, ChatMessage(role: "user", content: "Name a colour.")]),
            try bundle.chatPromptIDs([system, ChatMessage(role: "user", content: "Name a fruit.")]),
        ]
        let (m, _) = try await Self.compare(gen, prompts: prompts, budget: 64 << 20, maxNewTokens: 6)
        XCTAssertEqual(m.prefixCacheHits, 3)
        XCTAssertEqual(m.prefixCacheMisses, 1)
        XCTAssertGreaterThanOrEqual(m.prefixCacheHitTokens, first.count - 1 + 2 * 20)
        print("SmolLM2 chat: prompts \(prompts.map(\.count)), cached tokens \(m.prefixCacheHitTokens), \(m.prefixCacheBytes) bytes held")

        let s = try Scheduler(generator: gen, maxSequences: 3, contextLength: 512, prefixCacheBytes: 64 << 20)
        let p = GenerateParameters(maxNewTokens: 5, temperature: 0.8, seed: 41, stopAtEOS: false, logprobs: true, topLogprobs: 2)
        let three = try await Self.run(s, SequenceRequest(prompt: prompts[2], parameters: p), n: 3)
        XCTAssertEqual(s.metrics.promptTokens, prompts[2].count)
        for i in 0..<3 {
            var pi = p
            pi.seed = 41 + UInt64(i)
            let alone = try gen.generate([SequenceRequest(prompt: prompts[2], parameters: pi)])[0]
            XCTAssertEqual(three[i].result, alone, "choice \(i)")
        }
        await s.shutdown(cancelInFlight: false)
    }

    /// GPT-2 lays its cache out by position (LLaMA by head): the copy must follow the model's layout.
    func testTinyGPT2HitsGiveIdenticalResults() async throws {
        let bundle = try ModelBundle(path: Fixtures.url("tiny/gpt2").path)
        try await Self.checkHits(bundle.makeGenerator(), vocabulary: bundle.model.vocabularySize)
    }

    /// Least recently used leaves go first, and a request after its rows were evicted still gives the same answer.
    func testEvictionLRU() async throws {
        let bundle = try ModelBundle(path: try tinyPath())
        let gen = bundle.makeGenerator()
        let m = gen.model as! DecoderModel
        let perPosition = m.config.layerCount * 2 * m.config.kvHeadCount * m.config.headDim * 4
        // Room for two sequences of 20 + 4 - 1 positions, not three.
        let budget = 50 * perPosition
        let a = Array(1...20), b = Array(21...40), c = Array(41...60)
        let prompts = [a, b, a + [70, 71], c, a + [72], b + [73], a]
        let (metrics, _) = try await Self.compare(gen, prompts: prompts, budget: budget, maxNewTokens: 4)
        // a: miss; b: miss; a+: hit 20, and when it ends b goes (a was used later); c: miss; a+: hit 20 (a's node
        // survives); b+: miss (evicted); a: hit 19 (the last prompt token always runs).
        XCTAssertEqual(metrics.prefixCacheMisses, 4)
        XCTAssertEqual(metrics.prefixCacheHits, 3)
        XCTAssertGreaterThanOrEqual(metrics.prefixCacheHitTokens, 20 + 20 + 19)
        XCTAssertGreaterThan(metrics.prefixCacheEvictions, 0)
        XCTAssertLessThanOrEqual(metrics.prefixCacheBytes, budget)

        // A budget smaller than one sequence holds nothing, and changes nothing.
        let (tiny, _) = try await Self.compare(gen, prompts: [a, a], budget: 10 * perPosition, maxNewTokens: 4)
        XCTAssertEqual(tiny.prefixCacheHits, 0)
        XCTAssertEqual(tiny.prefixCacheBytes, 0)
    }

    /// Prompt scoring runs the whole prompt: no lookup, same scores.
    func testPromptLogprobsSkipTheCache() async throws {
        let bundle = try ModelBundle(path: try tinyPath())
        let gen = bundle.makeGenerator()
        let s = try Scheduler(generator: gen, maxSequences: 2, contextLength: 128, prefixCacheBytes: 1 << 20)
        var p = Self.params(0)
        p.promptLogprobs = true
        let prompt = Array(5...25)
        let plain = try await Self.run(s, SequenceRequest(prompt: prompt, parameters: Self.params(0)))[0]
        let scored = try await Self.run(s, SequenceRequest(prompt: prompt, parameters: p))[0]
        XCTAssertEqual(scored.result?.tokens, plain.result?.tokens)
        XCTAssertEqual(scored.result?.promptLogprobs?.count, prompt.count - 1)
        let m = s.metrics
        XCTAssertEqual(m.prefixCacheMisses, 1)
        XCTAssertEqual(m.prefixCacheHits, 0)
        XCTAssertEqual(m.promptTokens, 2 * prompt.count)
        let alone = try gen.generate([SequenceRequest(prompt: prompt, parameters: p)])[0]
        XCTAssertEqual(scored.result, alone)
        await s.shutdown(cancelInFlight: false)
    }

    /// n = 3: the prompt runs once; choice i equals the n = 1 answer with seed + i (choice 0: the same seed).
    func testChoicesShareThePrompt() async throws {
        let bundle = try ModelBundle(path: try tinyPath())
        let gen = bundle.makeGenerator()
        let prompt = Array(10...40)
        for prefix in [0, 1 << 20] {
            let s = try Scheduler(generator: gen, maxSequences: 2, contextLength: 128, maxTokensPerStep: 8,
                                  prefixCacheBytes: prefix)
            var p = GenerateParameters(maxNewTokens: 10, temperature: 1, seed: 77, stopAtEOS: false, logprobs: true,
                                       topLogprobs: 3)
            p.promptLogprobs = true
            let three = try await Self.run(s, SequenceRequest(prompt: prompt, parameters: p), n: 3)
            let m = s.metrics
            XCTAssertEqual(m.promptTokens, prompt.count, "the prompt ran once")
            XCTAssertEqual(m.forkedSequences, 2)
            XCTAssertEqual(m.generatedTokens, 30)
            XCTAssertEqual(m.finishedLength, 3)
            XCTAssertEqual(m.prefixCacheHits, 0)
            let again = try await Self.run(s, SequenceRequest(prompt: prompt, parameters: p), n: 3)
            XCTAssertEqual(again, three, "reproducible with a seed")
            for i in 0..<3 {
                var pi = p
                pi.seed = 77 + UInt64(i)
                let alone = try gen.generate([SequenceRequest(prompt: prompt, parameters: pi)])[0]
                XCTAssertEqual(three[i].result, alone, "choice \(i) equals n = 1 with seed 77 + \(i)")
                XCTAssertEqual(three[i].result?.promptLogprobs?.count, prompt.count - 1)
            }
            XCTAssertNotEqual(three[0].tokens, three[1].tokens)
            XCTAssertNotEqual(three[1].tokens, three[2].tokens)
            // More choices than running slots: the others wait for a slot, then start from the same prompt.
            let five = try await Self.run(s, SequenceRequest(prompt: prompt, parameters: GenerateParameters(maxNewTokens: 3, stopAtEOS: false)), n: 5)
            XCTAssertEqual(Set(five.map { $0.result!.tokens }).count, 1, "greedy choices agree")
            XCTAssertEqual(s.metrics.forkedSequences, 2 + 2 + 4)
            await s.shutdown(cancelInFlight: false)
        }
    }

    /// Cancelling an n > 1 request ends every choice; bad n is refused.
    func testChoicesCancelAndValidate() async throws {
        let bundle = try ModelBundle(path: try tinyPath())
        let s = try Scheduler(generator: bundle.makeGenerator(), maxSequences: 1, contextLength: 256, maxTokensPerStep: 4)
        XCTAssertThrowsError(try s.submit(SequenceRequest(prompt: [1, 2], parameters: GenerateParameters()), n: 0))
        let (events, cancel) = try s.submit(SequenceRequest(prompt: Array(1...30), parameters: GenerateParameters(maxNewTokens: 200, stopAtEOS: false)), n: 3)
        var reasons: [Int: FinishReason] = [:]
        var tokens = 0
        for await e in events {
            switch e {
            case .token: tokens += 1; if tokens == 3 { cancel() }
            case let .finished(i, r, _): reasons[i] = r.finishReason
            case let .failed(m): XCTFail(m)
            case .text: break
            case .logprob: XCTFail("a logprob event without logprobs asked for")
            }
        }
        XCTAssertEqual(reasons, [0: .cancelled, 1: .cancelled, 2: .cancelled])
        let m = s.metrics
        XCTAssertEqual(m.cancelled, 3)
        XCTAssertEqual(m.running + m.queued + m.reservedKVTokens, 0)
        await s.shutdown(cancelInFlight: false)
    }

    /// An encoder-decoder model keeps no prefix cache; its n > 1 choices share the encoder output.
    func testT5NoPrefixCacheAndChoices() async throws {
        let bundle = try ModelBundle(path: Fixtures.url("tiny/t5-text").path, threads: 2)
        let gen = bundle.makeGenerator()
        let s = try Scheduler(generator: gen, maxSequences: 4, contextLength: 32, prefixCacheBytes: 1 << 20)
        XCTAssertEqual(s.prefixCacheBytes, 0)
        let input = try bundle.tokenizer.encode("translate this sentence")
        let p = GenerateParameters(maxNewTokens: 6, temperature: 1, seed: 9, stopAtEOS: false, logprobs: true)
        let r = SequenceRequest(encoderInput: input, parameters: p)
        let two = try await Self.run(s, r, n: 2)
        let m = s.metrics
        XCTAssertEqual(m.prefixCacheHits + m.prefixCacheMisses, 0)
        XCTAssertEqual(m.forkedSequences, 1)
        XCTAssertEqual(m.promptTokens, input.count + 1, "the encoder and the decoder start ran once")
        for i in 0..<2 {
            var pi = p
            pi.seed = 9 + UInt64(i)
            let alone = try gen.generate([SequenceRequest(encoderInput: input, parameters: pi)])[0]
            XCTAssertEqual(two[i].result, alone, "choice \(i)")
        }
        await s.shutdown(cancelInFlight: false)
    }
}
