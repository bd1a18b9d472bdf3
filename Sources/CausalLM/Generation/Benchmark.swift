import Foundation

/// llama-bench-style measurements of a model: prompt processing (pp), token generation (tg), and aggregate
/// decoding of several sequences at once.
public struct Benchmark {
    public struct Row: Sendable {
        /// "pp512", "tg128", or "decode x16 (pp128+tg128)".
        public var test: String
        public var sequences: Int
        /// Tokens per second of each repeat.
        public var samples: [Double]
        public var median: Double {
            let s = samples.sorted()
            return s.isEmpty ? 0 : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
        }
        public var min: Double { samples.min() ?? 0 }
        public var max: Double { samples.max() ?? 0 }
    }

    public let model: LanguageModel
    public var repeats: Int
    public var seed: UInt64 = 1

    public init(model: LanguageModel, repeats: Int = 3) {
        self.model = model
        self.repeats = repeats
    }

    private func randomTokens(_ n: Int, _ rng: inout SequenceRNG) -> [Int] {
        (0..<n).map { _ in Int(rng.next() % UInt64(model.vocabularySize)) }
    }

    private func seconds(_ body: () throws -> Void) rethrows -> Double {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try body()
        return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }

    /// Prompt processing: `tokens` random ids in one forward step into a fresh cache.
    public func promptProcessing(_ tokens: Int) throws -> Row {
        var rng = SequenceRNG(seed: seed)
        let ids = randomTokens(tokens, &rng)
        _ = try model.forward([SequenceChunk(cache: model.makeCache(capacity: tokens + 1), tokens: Array(ids.prefix(8)))])  // warm-up
        var samples: [Double] = []
        for _ in 0..<repeats {
            let cache = model.makeCache(capacity: tokens + 1)
            let t = try seconds { _ = try model.forward([SequenceChunk(cache: cache, tokens: ids)]) }
            samples.append(Double(tokens) / t)
        }
        return Row(test: "pp\(tokens)", sequences: 1, samples: samples)
    }

    /// Token generation: `tokens` greedy decoding steps of one sequence, from a one-token context.
    public func tokenGeneration(_ tokens: Int) throws -> Row {
        let r = try batchedDecode(sequences: 1, prompt: 1, tokens: tokens)
        return Row(test: "tg\(tokens)", sequences: 1, samples: r.decode.samples)
    }

    /// `sequences` sequences, each with a `prompt`-token prompt processed together, then `tokens` decoding steps
    /// of all of them at once. Returns prompt tokens/s and aggregate decode tokens/s (all sequences together).
    public func batchedDecode(sequences: Int, prompt: Int, tokens: Int) throws -> (prompt: Row, decode: Row) {
        var rng = SequenceRNG(seed: seed)
        let prompts = (0..<sequences).map { _ in randomTokens(prompt, &rng) }
        var pp: [Double] = [], tg: [Double] = []
        for rep in 0...repeats {   // repeat 0 is a warm-up
            let caches = prompts.map { _ in model.makeCache(capacity: prompt + tokens + 1) }
            var logits: [[Float]] = []
            let tp = try seconds {
                logits = try model.forward(zip(caches, prompts).map { SequenceChunk(cache: $0, tokens: $1) })
            }
            let V = model.vocabularySize
            let td = try seconds {
                for _ in 0..<tokens {
                    let next = logits.map { Sampler.argmax($0[($0.count - V)...]) }
                    logits = try model.forward(zip(caches, next).map { SequenceChunk(cache: $0, tokens: [$1]) })
                }
            }
            if rep > 0 {
                pp.append(Double(sequences * prompt) / tp)
                tg.append(Double(sequences * tokens) / td)
            }
        }
        let name = "pp\(prompt)+tg\(tokens) x\(sequences)"
        return (Row(test: name + " prompt", sequences: sequences, samples: pp),
                Row(test: name + " decode", sequences: sequences, samples: tg))
    }
}
