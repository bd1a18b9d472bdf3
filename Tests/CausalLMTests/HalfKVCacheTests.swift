import Foundation
import XCTest
import CausalLM
import CausalKernels

/// The opt-in fp16 key/value cache (`KVPrecision.fp16`, `--kv-cache fp16`): it stores exactly the fp32 rows rounded
/// to binary16, keeps batch invariance (a sequence's logits are bit-identical alone, in any batch, with either padding
/// side or a chunked prompt), works with the prefix cache and n > 1 choices, and stays close to the fp32 cache.
final class HalfKVCacheTests: XCTestCase {
    func tinyPath(_ dtype: DType) throws -> String {
        let path = try TinyModel.write(dtype: dtype, seed: 5)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    /// Runs `ids` as one chunk on a fresh cache of `precision`; returns the cache and every position's logits.
    func run(_ m: LanguageModel, _ ids: [Int], _ precision: KVPrecision) throws -> (KVCache, [Float]) {
        try KVPrecision.with(precision) {
            let cache = m.makeCache(capacity: ids.count + 4)
            XCTAssertEqual(cache.precision, precision)
            let logits = try m.forward([SequenceChunk(cache: cache, tokens: ids, logits: .all)])[0]
            return (cache, logits)
        }
    }

    func testStoresTheRoundedRowsAndStaysClose() throws {
        let bundle = try ModelBundle(path: try tinyPath(.f32))
        let m = bundle.model
        let ids = (0..<40).map { 1 + ($0 * 37) % 90 }
        let (c32, l32) = try run(m, ids, .fp32)
        let (c16, l16) = try run(m, ids, .fp16)
        XCTAssertEqual(c16.count, ids.count)
        let D = TinyModel.hidden / TinyModel.heads, G = TinyModel.kvHeads
        // Layer 0's keys and values come from the embeddings alone, so the fp16 cache holds exactly the fp32 cache's
        // rows rounded to nearest even; later layers see the rounded rows of earlier ones, so they differ a little.
        var differ = 0, worst: Float = 0, largest: Float = 0
        for l in 0..<TinyModel.layers {
            for v in [false, true] {
                for g in 0..<G {
                    for p in 0..<ids.count {
                        for d in 0..<D {
                            let i = (g * c32.capacity + p) * D + d
                            let a = c32.element(layer: l, values: v, i), b = c16.element(layer: l, values: v, i)
                            if l == 0 {
                                XCTAssertEqual(b.bitPattern, ck_half_to_float(ck_float_to_half(a)).bitPattern, "layer 0 \(v ? "value" : "key") \(i)")
                            } else {
                                if b != ck_half_to_float(ck_float_to_half(a)) { differ += 1 }
                                worst = max(worst, abs(a - b))
                                largest = max(largest, abs(a))
                            }
                        }
                    }
                }
            }
        }
        XCTAssertGreaterThan(differ, 0, "layer 1 reads layer 0's rounded rows")
        // Binary16 keeps 11 significant bits (relative rounding error <= 2^-11 = 4.9e-4); one layer of attention
        // over rounded rows moves the next layer's rows by a few of those, relative to their scale.
        XCTAssertLessThan(worst, 4 * 4.9e-4 * largest, "max |Δ| \(worst), max |element| \(largest)")
        // Logits: close to the fp32 cache's, and not equal (the option does change the arithmetic).
        var maxDiff: Float = 0, maxAbs: Float = 0
        for (a, b) in zip(l32, l16) { maxDiff = max(maxDiff, abs(a - b)); maxAbs = max(maxAbs, abs(a)) }
        XCTAssertGreaterThan(maxDiff, 0)
        XCTAssertLessThan(maxDiff, 4 * 4.9e-4 * maxAbs, "max |Δ logit| \(maxDiff), max |logit| \(maxAbs)")
    }

    func testBatchInvariance() throws {
        for dtype in [DType.f32, .q4_1] {
            let path = try tinyPath(dtype)
            var rng = SequenceRNG(seed: 11)
            let prompts = (0..<8).map { _ in (0..<(1 + Int(rng.next() % 30))).map { _ in 1 + Int(rng.next() % 96) } }
            let params = (0..<8).map { i in
                GenerateParameters(maxNewTokens: 3 + i % 5, temperature: i % 2 == 0 ? 0 : 0.9, topK: 0, topP: 1,
                                   seed: UInt64(70 + i), stopAtEOS: false)
            }
            // Alone against batches of 3 and 8, chunks of 1 and 7 (rows read the cache directly) and whole prompts
            // (8 or more rows read the staging copy), every padding side.
            try KVPrecision.with(.fp16) {
                try BatchInvarianceTests.checkInvariance(bundlePath: path, precision: .fast, prompts: prompts, params: params,
                                                         batchSizes: [3, 8], chunks: [1, 7, nil], seed: 5)
            }
            // And they are not the fp32 cache's logits.
            let g = try ModelBundle(path: path).makeGenerator()
            let fp16 = try KVPrecision.with(.fp16) { try BatchInvarianceTests.run(g, [prompts[0]], [params[0]], chunk: nil)[0] }
            let fp32 = try KVPrecision.with(.fp32) { try BatchInvarianceTests.run(g, [prompts[0]], [params[0]], chunk: nil)[0] }
            XCTAssertNotEqual(fp32.steps, fp16.steps, "\(dtype)")
        }
    }

    /// Prefix-cache hits and n > 1 choices copy fp16 rows and give exactly what the cache off / n = 1 give; rows cached
    /// at fp32 are a miss for an fp16 cache (never copied across precisions).
    func testPrefixCacheAndChoices() async throws {
        let bundle = try ModelBundle(path: try tinyPath(.q8_0))
        let gen = bundle.makeGenerator()
        let saved = KVPrecision.current
        defer { KVPrecision.current = saved }
        KVPrecision.current = .fp16
        try await PrefixCacheTests.checkHits(gen, vocabulary: TinyModel.vocab)

        let prompt = Array(5...30)
        let p = GenerateParameters(maxNewTokens: 6, temperature: 1, seed: 9, stopAtEOS: false, logprobs: true, topLogprobs: 2)
        let s = try Scheduler(generator: gen, maxSequences: 2, contextLength: 64, maxTokensPerStep: 8, prefixCacheBytes: 1 << 20)
        KVPrecision.current = .fp32
        let at32 = try await PrefixCacheTests.run(s, SequenceRequest(prompt: prompt, parameters: p))[0]
        KVPrecision.current = .fp16
        let three = try await PrefixCacheTests.run(s, SequenceRequest(prompt: prompt, parameters: p), n: 3)
        XCTAssertEqual(s.metrics.prefixCacheHits, 0, "fp32 rows are not an fp16 cache's prefix")
        XCTAssertEqual(s.metrics.forkedSequences, 2)
        for i in 0..<3 {
            var pi = p
            pi.seed = 9 + UInt64(i)
            let alone = try gen.generate([SequenceRequest(prompt: prompt, parameters: pi)])[0]
            XCTAssertEqual(three[i].result, alone, "choice \(i) equals n = 1 with seed \(9 + i)")
        }
        XCTAssertNotEqual(three[0].result?.logprobs, at32.result?.logprobs, "fp16 and fp32 caches differ")
        await s.shutdown(cancelInFlight: false)
    }
}
