import Foundation

/// Sampling parameters, with Hugging Face's names. `temperature == 0` means greedy.
public struct GenerateParameters: Sendable, Equatable {
    public static func == (a: GenerateParameters, b: GenerateParameters) -> Bool {
        a.maxNewTokens == b.maxNewTokens && a.minNewTokens == b.minNewTokens && a.temperature == b.temperature
            && a.topK == b.topK && a.topP == b.topP && a.minP == b.minP && a.repetitionPenalty == b.repetitionPenalty
            && a.presencePenalty == b.presencePenalty && a.frequencyPenalty == b.frequencyPenalty
            && a.logitBias == b.logitBias && a.seed == b.seed && a.stop == b.stop && a.stopAtEOS == b.stopAtEOS
            && a.logprobs == b.logprobs && a.topLogprobs == b.topLogprobs && a.promptLogprobs == b.promptLogprobs
            && a.constraint === b.constraint
    }

    public var maxNewTokens: Int
    /// End tokens cannot be chosen before this many new tokens (Hugging Face's min_new_tokens; 0 = off).
    public var minNewTokens: Int
    public var temperature: Float
    public var topK: Int            // 0 = off
    public var topP: Float          // 1 = off
    public var minP: Float          // 0 = off
    public var repetitionPenalty: Float  // 1 = off
    /// OpenAI's penalties, over the new tokens only: each token's logit loses `presencePenalty` once it has been
    /// generated and `frequencyPenalty` per time it has been generated (0 = off; OpenAI accepts -2...2).
    public var presencePenalty: Float
    public var frequencyPenalty: Float
    /// Added to the raw logits of these ids before anything else (OpenAI's logit_bias; -100 bans, 100 forces).
    public var logitBias: [Int: Float]
    /// Limits the tokens that may come next (a grammar, a JSON schema); nil = any token.
    public var constraint: (any TokenConstraint)?
    public var seed: UInt64?
    public var stop: [String]
    /// Stop at the model's end-of-sequence token (and other end-of-turn ids).
    public var stopAtEOS: Bool
    /// Record the log-probability of each chosen token.
    public var logprobs: Bool
    /// With `logprobs`, also record this many most likely alternatives per token.
    public var topLogprobs: Int
    /// Score the prompt: the log-probability (and `topLogprobs` alternatives) of every prompt token after the first,
    /// given the tokens before it, in `GenerationResult.promptLogprobs`. The whole prompt runs (no cached prefix).
    public var promptLogprobs: Bool

    public init(maxNewTokens: Int = 256, temperature: Float = 0, topK: Int = 0, topP: Float = 1, minP: Float = 0,
                repetitionPenalty: Float = 1, seed: UInt64? = nil, stop: [String] = [], stopAtEOS: Bool = true,
                logprobs: Bool = false, topLogprobs: Int = 0, minNewTokens: Int = 0,
                presencePenalty: Float = 0, frequencyPenalty: Float = 0, logitBias: [Int: Float] = [:],
                constraint: (any TokenConstraint)? = nil, promptLogprobs: Bool = false) {
        self.maxNewTokens = maxNewTokens; self.minNewTokens = minNewTokens; self.temperature = temperature; self.topK = topK; self.topP = topP
        self.minP = minP; self.repetitionPenalty = repetitionPenalty; self.seed = seed; self.stop = stop
        self.stopAtEOS = stopAtEOS
        self.logprobs = logprobs
        self.topLogprobs = topLogprobs
        self.presencePenalty = presencePenalty; self.frequencyPenalty = frequencyPenalty; self.logitBias = logitBias
        self.constraint = constraint; self.promptLogprobs = promptLogprobs
    }

    public func validate() throws {
        func bad(_ s: String) -> CausalError { .invalidArgument(s) }
        guard maxNewTokens >= 0 else { throw bad("maxNewTokens must be >= 0, got \(maxNewTokens)") }
        guard minNewTokens >= 0 else { throw bad("minNewTokens must be >= 0, got \(minNewTokens)") }
        guard temperature >= 0, temperature.isFinite else { throw bad("temperature must be a finite number >= 0, got \(temperature)") }
        guard topK >= 0 else { throw bad("topK must be >= 0, got \(topK)") }
        guard topP > 0, topP <= 1 else { throw bad("topP must be in (0, 1], got \(topP)") }
        guard minP >= 0, minP <= 1 else { throw bad("minP must be in [0, 1], got \(minP)") }
        guard repetitionPenalty > 0, repetitionPenalty.isFinite else { throw bad("repetitionPenalty must be > 0, got \(repetitionPenalty)") }
        guard !stop.contains("") else { throw bad("stop strings must not be empty") }
        guard topLogprobs >= 0, topLogprobs <= 20 else { throw bad("topLogprobs must be in 0...20, got \(topLogprobs)") }
        guard presencePenalty.isFinite, abs(presencePenalty) <= 2 else { throw bad("presencePenalty must be in -2...2, got \(presencePenalty)") }
        guard frequencyPenalty.isFinite, abs(frequencyPenalty) <= 2 else { throw bad("frequencyPenalty must be in -2...2, got \(frequencyPenalty)") }
        for (id, b) in logitBias where !(b.isFinite && abs(b) <= 100) {
            throw bad("logitBias for token \(id) must be in -100...100, got \(b)")
        }
        if let id = logitBias.keys.first(where: { $0 < 0 }) { throw bad("logitBias names token id \(id), which is negative") }
    }
}

/// xoshiro256** seeded through SplitMix64. One per sequence, never shared, so a seed gives the same
/// tokens whatever else runs.
public struct SequenceRNG: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var x = seed
        func splitmix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3
        s.2 ^= t
        s.3 = (s.3 << 45) | (s.3 >> 19)
        return result
    }

    /// Uniform in [0, 1) with 24 bits.
    public mutating func nextUnitFloat() -> Double { Double(next() >> 11) * (1.0 / 9007199254740992.0) }
}

/// Chooses the next token from a logit row: logit bias, repetition penalty (Hugging Face's, over prompt and new
/// tokens), presence and frequency penalties (OpenAI's, over new tokens), then in Hugging Face's order temperature,
/// top-k, top-p, min-p, and a draw from the remaining distribution. A logit of -infinity (a token a constraint bans)
/// is never chosen while any other is finite.
public struct Sampler: Sendable {
    public let parameters: GenerateParameters
    public var rng: SequenceRNG

    public init(parameters: GenerateParameters) {
        self.parameters = parameters
        rng = SequenceRNG(seed: parameters.seed ?? UInt64.random(in: 0...UInt64.max))
    }

    /// Returns the chosen id. `history` holds the ids seen so far (prompt and generated), for the penalties; its
    /// last `generated` ids are the new tokens.
    public mutating func sample(_ logitsIn: ArraySlice<Float>, history: [Int], generated: Int = 0) -> Int {
        var logits = Array(logitsIn)
        let p = parameters
        for (id, b) in p.logitBias where id < logits.count { logits[id] += b }
        if p.repetitionPenalty != 1 {
            for id in Set(history) where id >= 0 && id < logits.count {
                logits[id] = logits[id] > 0 ? logits[id] / p.repetitionPenalty : logits[id] * p.repetitionPenalty
            }
        }
        if (p.presencePenalty != 0 || p.frequencyPenalty != 0) && generated > 0 {
            var counts: [Int: Int] = [:]
            for id in history.suffix(generated) { counts[id, default: 0] += 1 }
            for (id, n) in counts where id >= 0 && id < logits.count {
                logits[id] -= p.presencePenalty + p.frequencyPenalty * Float(n)
            }
        }
        if p.temperature == 0 { return Sampler.argmax(logits) }
        // Candidates sorted by logit, highest first (ties: lower id first, deterministic).
        var idx = Array(0..<logits.count)
        for i in idx.indices { logits[i] /= p.temperature }
        if p.topK > 0 && p.topK < idx.count {
            idx = Sampler.topIndices(logits, k: p.topK)
        } else {
            idx.sort { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }
        }
        let mx = logits[idx[0]]
        var probs = idx.map { Double(expf(logits[$0] - mx)) }
        var total = probs.reduce(0, +)
        for i in probs.indices { probs[i] /= total }
        var keep = probs.count
        if p.topP < 1 {
            var cum = 0.0
            for i in probs.indices {
                cum += probs[i]
                if cum >= Double(p.topP) { keep = i + 1; break }
            }
        }
        if p.minP > 0 {
            let threshold = probs[0] * Double(p.minP)
            var k = 0
            while k < keep && probs[k] >= threshold { k += 1 }
            keep = max(1, k)
        }
        total = probs[0..<keep].reduce(0, +)
        let r = rng.nextUnitFloat() * total
        var cum = 0.0
        for i in 0..<keep {
            cum += probs[i]
            if r < cum { return idx[i] }
        }
        return idx[keep - 1]
    }

    /// Index of the largest value; the lowest index wins ties (as torch.argmax).
    public static func argmax<C: Collection>(_ xs: C) -> Int where C.Element == Float, C.Index == Int {
        var best = xs.startIndex
        var bv = -Float.infinity
        for i in xs.indices where xs[i] > bv { bv = xs[i]; best = i }
        return best - xs.startIndex
    }

    static func topIndices(_ xs: [Float], k: Int) -> [Int] {
        var heap: [Int] = []  // simple selection: keep the k best, sorted descending
        heap.reserveCapacity(k + 1)
        for i in xs.indices {
            if heap.count == k, let last = heap.last, !(xs[i] > xs[last]) { continue }
            var pos = heap.count
            while pos > 0 && (xs[heap[pos - 1]] < xs[i]) { pos -= 1 }
            heap.insert(i, at: pos)
            if heap.count > k { heap.removeLast() }
        }
        return heap
    }
}
