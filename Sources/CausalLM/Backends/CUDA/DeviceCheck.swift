import Foundation

/// The acceptance checks of a device backend (issue 16), for `causal check-device` and Benchmarks/cuda-check.sh:
/// logits against the CPU reference, greedy tokens against the CPU's, batch invariance (alone vs batches, padded,
/// chunked: every token and every logit bit-identical) and decode speed. Runs on any device, so the same code is
/// exercised on the CPU here and on a GPU where there is one.
public enum DeviceCheck {
    /// One line of the report.
    public struct Row: Sendable {
        public var check: String
        public var value: String
        public var limit: String
        /// nil for a measurement without a pass/fail limit.
        public var passed: Bool?
    }

    /// Fixed pseudo-random prompts inside the vocabulary (ids 1 ..< min(V, 5000): ordinary tokens), lengths in
    /// [minLength, maxLength].
    public static func prompts(count: Int, vocabularySize V: Int, minLength: Int = 4, maxLength: Int = 48, seed: UInt64 = 7) -> [[Int]] {
        var rng = SequenceRNG(seed: seed)
        let top = max(2, min(V, 5000))
        return (0..<count).map { _ in
            let n = minLength + Int(rng.next() % UInt64(max(1, maxLength - minLength + 1)))
            return (0..<n).map { _ in 1 + Int(rng.next() % UInt64(top - 1)) }
        }
    }

    /// Largest relative difference between the logits of `model` and of `reference` over every position of every
    /// prompt: per row max|a − b| / max|b|.
    public static func logitsDifference(_ model: LanguageModel, reference: LanguageModel, prompts: [[Int]]) throws -> Double {
        var worst = 0.0
        for p in prompts {
            let a = try model.forward([SequenceChunk(cache: model.makeCache(capacity: p.count + 1), tokens: p, logits: .all)])[0]
            let b = try reference.forward([SequenceChunk(cache: reference.makeCache(capacity: p.count + 1), tokens: p, logits: .all)])[0]
            let V = reference.vocabularySize
            guard a.count == b.count else { throw CausalError.invalidArgument("logits of different shapes: \(a.count) vs \(b.count)") }
            for r in 0..<(b.count / V) {
                var diff = 0.0, scale = 0.0
                for j in (r * V)..<((r + 1) * V) {
                    diff = max(diff, Double(abs(a[j] - b[j])))
                    scale = max(scale, Double(abs(b[j])))
                }
                worst = max(worst, diff / max(scale, 1e-30))
            }
        }
        return worst
    }

    /// Greedy tokens of every prompt, each run alone (`tokens` new tokens, no stop at end tokens).
    public static func greedyTokens(_ bundle: ModelBundle, prompts: [[Int]], tokens: Int) throws -> [[Int]] {
        let g = bundle.makeGenerator()
        return try prompts.map { p in
            var params = GenerateParameters(maxNewTokens: tokens)
            params.stopAtEOS = false
            return try g.generate([SequenceRequest(prompt: p, parameters: params)])[0].tokens
        }
    }

    /// Every logit row (as bits) and every token of each request.
    struct Trace: Equatable { var steps: [[UInt32]] = []; var tokens: [Int] = [] }

    static func traces(_ g: Generator, _ prompts: [[Int]], tokens: Int, chunk: Int?) throws -> [Trace] {
        var out = [Trace](repeating: Trace(), count: prompts.count)
        var observer = GenerationObserver()
        observer.onLogits = { i, row in out[i].steps.append(row.map(\.bitPattern)) }
        var params = GenerateParameters(maxNewTokens: tokens)
        params.stopAtEOS = false
        let results = try g.generate(prompts.map { SequenceRequest(prompt: $0, parameters: params) }, chunkSize: chunk, observer: observer)
        for (i, r) in results.enumerated() { out[i].tokens = r.tokens }
        return out
    }

    /// Batch invariance: each prompt alone is the reference; then in batches of each size in `batchSizes` (in
    /// order), left- and right-padded (through PaddedBatch) and with prompts chunked by `chunk` tokens. Returns one
    /// row per arrangement with the number of prompts whose tokens or logit bits differ from their run alone.
    public static func batchInvariance(_ bundle: ModelBundle, prompts: [[Int]], tokens: Int, batchSizes: [Int],
                                       chunk: Int) throws -> [Row] {
        let g = bundle.makeGenerator()
        let alone = try prompts.map { try traces(g, [$0], tokens: tokens, chunk: nil)[0] }
        var rows: [Row] = []
        func compare(_ name: String, _ order: [Int], _ got: [Trace]) {
            let bad = zip(order, got).filter { alone[$0.0] != $0.1 }.count
            rows.append(Row(check: "invariance: \(name)", value: "\(bad) of \(order.count) differ", limit: "0", passed: bad == 0))
        }
        for B in batchSizes {
            var got: [Trace] = [], order: [Int] = []
            for start in stride(from: 0, to: prompts.count, by: B) {
                let idx = Array(start..<min(start + B, prompts.count))
                got += try traces(g, idx.map { prompts[$0] }, tokens: tokens, chunk: nil)
                order += idx
            }
            compare("batches of \(B)", order, got)
        }
        let all = Array(prompts.indices)
        for side in PaddingSide.allCases {
            let rows = try PaddedBatch.padding(prompts, side: side, padID: 0).unpadded(vocabularySize: bundle.model.vocabularySize)
            compare("\(side)-padded batch of \(prompts.count)", all, try traces(g, rows, tokens: tokens, chunk: nil))
        }
        compare("batch of \(prompts.count), prompts chunked by \(chunk)", all, try traces(g, prompts, tokens: tokens, chunk: chunk))
        return rows
    }

    /// Aggregate decode tokens/s at each number of sequences (prompt `prompt` tokens, `tokens` new tokens each).
    public static func decodeSpeed(_ model: LanguageModel, sequences: [Int], prompt: Int, tokens: Int, repeats: Int) throws -> [Row] {
        var b = Benchmark(model: model, repeats: repeats)
        b.seed = 1
        return try sequences.map { s in
            let (_, d) = try b.batchedDecode(sequences: s, prompt: prompt, tokens: tokens)
            return Row(check: "decode tok/s, \(s) sequences (pp\(prompt)+tg\(tokens))", value: String(format: "%.1f", d.median),
                       limit: "", passed: nil)
        }
    }

    /// Every check for one model: `device` against the CPU (reference precision for the fp32 comparison).
    public static func run(model path: String, device: ComputeDevice, promptCount: Int = 64, tokens: Int = 16,
                           speedSequences: [Int] = [1, 8, 64, 256], log: (String) -> Void = { _ in }) throws -> [Row] {
        var rows: [Row] = []
        let name = URL(fileURLWithPath: path).lastPathComponent
        log("\(name): loading (cpu reference, \(device.rawValue) reference, \(device.rawValue) fast)")
        let cpuRef = try ModelBundle(path: path, precision: .reference)
        let devRef = try ModelBundle(path: path, precision: .reference)
        try devRef.use(device)
        let devFast = try ModelBundle(path: path, precision: .fast)
        try devFast.use(device)
        let V = cpuRef.model.vocabularySize
        let five = prompts(count: 5, vocabularySize: V, seed: 11)

        log("\(name): logits vs the CPU")
        let fp32 = try logitsDifference(devRef.model, reference: cpuRef.model, prompts: five)
        rows.append(Row(check: "\(name) logits, \(device.rawValue) fp32 vs cpu reference (max rel)", value: String(format: "%.3g", fp32),
                        limit: "1e-4", passed: fp32 <= 1e-4))
        let fast = try logitsDifference(devFast.model, reference: cpuRef.model, prompts: five)
        rows.append(Row(check: "\(name) logits, \(device.rawValue) fast (\(device == .cuda ? "bf16 weights" : "the file's weights")) vs cpu reference (max rel)",
                        value: String(format: "%.3g", fast), limit: "measured", passed: nil))

        log("\(name): greedy tokens vs the CPU")
        let a = try greedyTokens(devRef, prompts: five, tokens: 32), b = try greedyTokens(cpuRef, prompts: five, tokens: 32)
        let same = zip(a, b).filter { $0 == $1 }.count
        rows.append(Row(check: "\(name) greedy tokens, \(device.rawValue) fp32 = cpu (5 prompts x 32)", value: "\(same) of 5 equal",
                        limit: "5", passed: same == 5))

        log("\(name): batch invariance (\(promptCount) prompts)")
        let many = prompts(count: promptCount, vocabularySize: V, seed: 13)
        for var r in try batchInvariance(devFast, prompts: many, tokens: tokens, batchSizes: promptCount > 8 ? [8, promptCount] : [promptCount], chunk: 7) {
            r.check = "\(name) \(device.rawValue) fast " + r.check
            rows.append(r)
        }
        if !speedSequences.isEmpty {
            log("\(name): decode speed")
            for var r in try decodeSpeed(devFast.model, sequences: speedSequences, prompt: 32, tokens: 32, repeats: 2) {
                r.check = "\(name) \(device.rawValue) fast " + r.check
                rows.append(r)
            }
        }
        return rows
    }
}
