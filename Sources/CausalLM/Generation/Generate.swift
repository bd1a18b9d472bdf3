import Foundation

/// Why a sequence stopped.
public enum FinishReason: String, Sendable, Codable {
    /// The model produced an end-of-sequence token, or a stop string appeared.
    case stop
    /// `maxNewTokens` was reached, or the context is full.
    case length
    /// The caller cancelled the sequence.
    case cancelled
}

/// The log-probability of a chosen token under the model's distribution (log-softmax of the raw logits),
/// with the most likely alternatives.
public struct TokenLogprob: Sendable, Equatable {
    public var id: Int
    public var logprob: Float
    /// The `topLogprobs` most likely ids and their log-probabilities, most likely first.
    public var top: [Alternative]

    public struct Alternative: Sendable, Equatable {
        public var id: Int
        public var logprob: Float
    }

    /// The log-softmax of `logits` at `id`, with the `k` most likely alternatives.
    public init(id: Int, logits: ArraySlice<Float>, top k: Int) {
        let base = logits.startIndex
        let mx = logits.max() ?? 0
        var sum = 0.0
        for v in logits { sum += exp(Double(v - mx)) }
        let lse = Double(mx) + log(sum)
        self.id = id
        logprob = Float(Double(logits[base + id]) - lse)
        if k > 0 {
            top = Sampler.topIndices(Array(logits), k: k).map { Alternative(id: $0, logprob: Float(Double(logits[base + $0]) - lse)) }
        } else {
            top = []
        }
    }
}

/// One sequence's output: only what was generated, never the prompt.
public struct GenerationResult: Sendable, Equatable {
    /// New token ids, including the end-of-sequence id that stopped it (if one did).
    public var tokens: [Int]
    /// Decoded new text, without the end-of-sequence token or the stop string.
    public var text: String
    public var finishReason: FinishReason
    public var promptTokens: Int
    /// Per new token, when `GenerateParameters.logprobs` is set.
    public var logprobs: [TokenLogprob]?
    /// Per prompt token after the first (the first has no context to be scored in), when
    /// `GenerateParameters.promptLogprobs` is set.
    public var promptLogprobs: [TokenLogprob]?

    public init(tokens: [Int], text: String, finishReason: FinishReason, promptTokens: Int,
                logprobs: [TokenLogprob]? = nil, promptLogprobs: [TokenLogprob]? = nil) {
        self.tokens = tokens; self.text = text; self.finishReason = finishReason; self.promptTokens = promptTokens
        self.logprobs = logprobs; self.promptLogprobs = promptLogprobs
    }
}

/// Wall-clock timing of one `generate` call. Prefill runs until the first new token exists; decode is the rest.
public struct GenerationStats: Sendable {
    public var promptTokens = 0
    public var generatedTokens = 0
    public var prefillSeconds = 0.0
    public var decodeSeconds = 0.0
    /// Forward steps run.
    public var steps = 0

    public init() {}
    /// New tokens after the first, per second of decode.
    public var decodeTokensPerSecond: Double { decodeSeconds > 0 ? Double(max(generatedTokens - 1, 0)) / decodeSeconds : 0 }
    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
}

/// A request to the step loop: a prompt (token ids), its parameters, and optionally a cache to continue from
/// (the cache's first `cache.count` positions must hold the prompt's first `cache.count` ids).
///
/// For an encoder-decoder model (`EncoderDecoderModel`), `encoderInput` is what the encoder reads and `prompt` is the
/// decoder's prompt; an empty prompt means `[decoderStartTokenID]`. Only decoder tokens come back.
public struct SequenceRequest {
    public var prompt: [Int]
    public var parameters: GenerateParameters
    public var cache: KVCache?
    public var encoderInput: [Int]?
    /// A LoRA adapter the decoder applies to every step of this sequence (nil: the base model). A cache to continue
    /// from must have been filled with the same adapter.
    public var adapter: LoRAAdapter?

    public init(prompt: [Int], parameters: GenerateParameters, cache: KVCache? = nil, adapter: LoRAAdapter? = nil) {
        self.prompt = prompt; self.parameters = parameters; self.cache = cache; self.adapter = adapter
    }

    /// An encoder-decoder request: the encoder reads `encoderInput`; the decoder starts from `prompt`
    /// (empty: the model's decoder start id alone).
    public init(encoderInput: [Int], prompt: [Int] = [], parameters: GenerateParameters) {
        self.prompt = prompt; self.parameters = parameters; self.encoderInput = encoderInput
    }
}

/// Runs generation for many sequences at once: every step is one forward over a ragged batch holding a prompt
/// chunk or the last token of every unfinished sequence. Because the model's rows do not interact and every
/// sequence has its own cache and its own random generator, each result equals what that sequence gives alone.
public final class Generator {
    public let model: LanguageModel
    /// Decodes the new tokens to text; nil for a model without a tokenizer (results then carry ids and empty text).
    public let tokenizer: (any TextTokenizer)?
    /// Ids that end generation (the tokenizer's EOS and, when present, end-of-turn ids).
    public var endTokenIDs: Set<Int>
    /// Timing of the last `generate` call.
    public private(set) var lastStats = GenerationStats()

    public init(model: LanguageModel, tokenizer: (any TextTokenizer)?, endTokenIDs: Set<Int>? = nil) {
        self.model = model
        self.tokenizer = tokenizer
        self.endTokenIDs = endTokenIDs ?? Set([tokenizer?.eosTokenID].compactMap { $0 })
    }

    /// Generates for every request; results come back in request order.
    /// - Parameters:
    ///   - chunkSize: at most this many prompt tokens per sequence per step (nil: the whole prompt at once).
    ///   - onText: called with (request index, text delta) as text becomes final (stop strings held back).
    public func generate(_ requests: [SequenceRequest], chunkSize: Int? = nil,
                         onText: ((Int, String) -> Void)? = nil) throws -> [GenerationResult] {
        var observer = GenerationObserver()
        observer.onText = onText
        return try generate(requests, chunkSize: chunkSize, observer: observer)
    }

    /// Generates for every request, reporting each sequence's progress through `observer`.
    public func generate(_ requests: [SequenceRequest], chunkSize: Int? = nil,
                         observer: GenerationObserver) throws -> [GenerationResult] {
        if let c = chunkSize, c < 1 { throw CausalError.invalidArgument("chunk size must be at least 1, got \(c)") }
        let start = DispatchTime.now().uptimeNanoseconds
        let prepared = try withEncoderCaches(requests)
        var states = try prepared.enumerated().map { i, r in try SequenceState(index: i, request: r, generator: self) }
        var stats = GenerationStats()
        var firstTokenAt: UInt64? = nil
        var steps = 0
        defer {
            let end = DispatchTime.now().uptimeNanoseconds
            let first = firstTokenAt ?? end
            stats.prefillSeconds = Double(first - start) / 1e9
            stats.decodeSeconds = Double(end - first) / 1e9
            stats.promptTokens = states.reduce(0) { $0 + $1.promptCount }
            stats.generatedTokens = states.reduce(0) { $0 + $1.tokens.count }
            stats.steps = steps
            lastStats = stats
        }
        for i in states.indices where states[i].done { observer.onFinish?(i, states[i].result()) }
        while true {
            var chunks: [SequenceChunk] = []
            var owners: [Int] = []
            for (i, s) in states.enumerated() where !s.done {
                if let cancelled = observer.isCancelled, cancelled(i) {
                    states[i].cancel()
                    observer.onFinish?(i, states[i].result())
                    continue
                }
                if s.pending.count > 0 {
                    chunks.append(states[i].takeChunk(limit: chunkSize ?? Int.max, wholePrompt: model.needsWholePrompt))
                    owners.append(i)
                }
            }
            if chunks.isEmpty { break }
            let logits = try model.forward(chunks)
            steps += 1
            for (j, i) in owners.enumerated() where !logits[j].isEmpty {
                states[i].consume(logits[j], generator: self, observer: observer)
                if states[i].done { observer.onFinish?(i, states[i].result()) }
            }
            if firstTokenAt == nil && owners.contains(where: { !states[$0].tokens.isEmpty }) {
                firstTokenAt = DispatchTime.now().uptimeNanoseconds
            }
        }
        return states.map { $0.result() }
    }
}

extension Generator {
    /// Encoder-decoder requests get their caches here: the encoder runs once over all their inputs together (rows
    /// independent), and an empty decoder prompt becomes `[decoderStartTokenID]`. Decoder-only models accept no
    /// encoder input.
    func withEncoderCaches(_ requests: [SequenceRequest]) throws -> [SequenceRequest] {
        guard let m = model as? EncoderDecoderModel else {
            if let i = requests.firstIndex(where: { $0.encoderInput != nil }) {
                throw CausalError.invalidArgument("request \(i): the model has no encoder; give the input as the prompt")
            }
            return requests
        }
        var out = requests
        var waiting: [Int] = []
        for (i, r) in requests.enumerated() {
            if r.cache != nil { continue }
            guard let input = r.encoderInput else {
                throw CausalError.invalidArgument("request \(i): an encoder-decoder model needs an encoder input")
            }
            guard !input.isEmpty else { throw CausalError.invalidArgument("request \(i): the encoder input has no tokens") }
            if r.prompt.isEmpty { out[i].prompt = [m.decoderStartTokenID] }
            waiting.append(i)
        }
        if !waiting.isEmpty {
            let caches = try m.makeCaches(encoderInputs: waiting.map { requests[$0].encoderInput! }, capacity: nil)
            for (i, c) in zip(waiting, caches) { out[i].cache = c }
        }
        return out
    }
}

/// Callbacks for following generation as it happens. Every callback gets the request's index first.
public struct GenerationObserver {
    /// Text that has become final (never a partial character, never a possible stop-string prefix).
    public var onText: ((Int, String) -> Void)?
    /// Each new token id, as it is chosen.
    public var onToken: ((Int, Int) -> Void)?
    /// Each new token's log-probability (with `GenerateParameters.logprobs`), right after its `onToken`.
    public var onLogprob: ((Int, TokenLogprob) -> Void)?
    /// The logits a sequence's next token is chosen from (before any sampling transform).
    public var onLogits: ((Int, ArraySlice<Float>) -> Void)?
    /// Polled before every step; returning true stops that sequence and releases its cache.
    public var isCancelled: ((Int) -> Bool)?
    /// Called once per sequence when it stops.
    public var onFinish: ((Int, GenerationResult) -> Void)?

    public init() {}
}

/// Per-sequence generation state.
struct SequenceState {
    let index: Int
    let parameters: GenerateParameters
    let cache: KVCache
    /// The LoRA adapter every chunk of this sequence runs with (nil: the base model).
    var adapter: LoRAAdapter? = nil
    let promptCount: Int
    var pending: [Int]
    var history: [Int]
    var sampler: Sampler
    var decoder: StreamingDecoder?   // nil without a tokenizer
    var tokens: [Int] = []
    var text = ""
    var emitted = 0           // characters of `text` already passed to onText
    var logprobs: [TokenLogprob] = []
    /// The prompt's ids, and how many of them the cache held or chunks have taken (prompt scoring).
    let prompt: [Int]
    var fed: Int
    var lastChunkStart = 0
    var lastChunkAll = false
    var promptLogprobs: [TokenLogprob] = []
    var constraint: (any TokenConstraintState)?
    var finish: FinishReason? = nil
    var done: Bool { finish != nil }

    init(index: Int, request r: SequenceRequest, generator: Generator) throws {
        try r.parameters.validate()
        guard !r.prompt.isEmpty else { throw CausalError.invalidArgument("request \(index): the prompt has no tokens") }
        let V = generator.model.vocabularySize
        if let bad = r.prompt.first(where: { $0 < 0 || $0 >= V }) { throw CausalError.badTokenID(id: bad, vocabularySize: V) }
        self.index = index
        parameters = r.parameters
        if let a = r.adapter {
            guard let d = generator.model as? DecoderModel else {
                throw CausalError.invalidArgument("request \(index): LoRA adapters run on decoder models (llama, qwen2, qwen3, gemma3), not on \(type(of: generator.model))")
            }
            guard a.fits(d.config) else {
                throw CausalError.invalidArgument("request \(index): the LoRA adapter is shaped for another model (\(a.model.layerCount) layers, hidden size \(a.model.hiddenSize)) than the \(d.config.architecture) model (\(d.config.layerCount) layers, hidden size \(d.config.hiddenSize))")
            }
            adapter = a
        }
        let cache: KVCache
        if let c = r.cache {
            // Continue from a cache: keep the positions the new prompt shares with it.
            guard c.count <= r.prompt.count else {
                throw CausalError.invalidArgument("request \(index): the cache holds more positions than the prompt")
            }
            cache = c
        } else {
            cache = generator.model.makeCache(capacity: nil)
        }
        self.cache = cache
        guard r.prompt.count < cache.capacity else {
            throw CausalError.invalidArgument("request \(index): the prompt has \(r.prompt.count) tokens, the context holds \(cache.capacity)")
        }
        promptCount = r.prompt.count + (r.encoderInput?.count ?? 0)
        if r.parameters.promptLogprobs && cache.count > 0 {
            throw CausalError.invalidArgument("request \(index): scoring the prompt needs the whole prompt to run, but the cache already holds \(cache.count) of its positions")
        }
        if let bad = r.parameters.logitBias.keys.first(where: { $0 >= V }) { throw CausalError.badTokenID(id: bad, vocabularySize: V) }
        prompt = r.prompt
        fed = cache.count
        constraint = r.parameters.constraint?.makeState()
        pending = Array(r.prompt[cache.count...])
        history = r.prompt
        sampler = Sampler(parameters: r.parameters)
        if generator.tokenizer == nil && !r.parameters.stop.isEmpty {
            throw CausalError.invalidArgument("request \(index): stop strings need a tokenizer, and the model has none")
        }
        decoder = generator.tokenizer?.makeGenerationDecoder()
        if parameters.maxNewTokens == 0 && (!parameters.promptLogprobs || pending.count <= 1) { finish = .length; pending = [] }
    }

    /// The next piece of this sequence for a forward step: at most `limit` prompt tokens (all of them with
    /// `wholePrompt`), or the last new token. Prompt scoring asks for every row of prompt chunks.
    mutating func takeChunk(limit: Int, wholePrompt: Bool) -> SequenceChunk {
        let inPrompt = tokens.isEmpty
        let take = inPrompt && !wholePrompt ? max(1, min(pending.count, limit)) : pending.count
        let toks = Array(pending.prefix(take))
        pending.removeFirst(take)
        lastChunkStart = fed
        fed += take
        lastChunkAll = inPrompt && parameters.promptLogprobs
        return SequenceChunk(cache: cache, tokens: toks, logits: lastChunkAll ? .all : (pending.isEmpty ? .last : .none),
                             adapter: adapter)
    }

    /// Takes a chunk's logits: scores prompt tokens when asked to, and chooses the next token once the prompt has run.
    mutating func consume(_ rows: [Float], generator: Generator, observer: GenerationObserver) {
        guard !rows.isEmpty else { return }
        guard lastChunkAll else {
            observer.onLogits?(index, rows[...])
            accept(logits: rows[...], generator: generator, observer: observer)
            return
        }
        let V = generator.model.vocabularySize
        let n = rows.count / V
        for r in 0..<n where lastChunkStart + r + 1 < prompt.count {
            promptLogprobs.append(TokenLogprob(id: prompt[lastChunkStart + r + 1], logits: rows[(r * V)..<((r + 1) * V)],
                                               top: parameters.topLogprobs))
        }
        guard pending.isEmpty else { return }
        if parameters.maxNewTokens == 0 { finish = .length; return }
        let last = rows[((n - 1) * V)..<(n * V)]
        observer.onLogits?(index, last)
        accept(logits: last, generator: generator, observer: observer)
    }

    mutating func cancel() {
        cache.release()
        text += decoder?.flush() ?? ""
        finish = .cancelled
        pending = []
    }

    mutating func accept(logits: ArraySlice<Float>, generator: Generator, observer: GenerationObserver) {
        let id: Int
        let banEnd = tokens.count < parameters.minNewTokens && !generator.endTokenIDs.isEmpty
        if banEnd || constraint != nil {
            var masked = Array(logits)
            constraint?.mask(&masked, endTokenIDs: generator.endTokenIDs)
            // Hugging Face's min_new_tokens: end tokens cannot be chosen before that many new tokens.
            if banEnd { for e in generator.endTokenIDs where e >= 0 && e < masked.count { masked[e] = -.infinity } }
            id = sampler.sample(masked[...], history: history, generated: tokens.count)
        } else {
            id = sampler.sample(logits, history: history, generated: tokens.count)
        }
        tokens.append(id)
        history.append(id)
        if !generator.endTokenIDs.contains(id) { constraint?.advance(id) }
        if parameters.logprobs { logprobs.append(TokenLogprob(id: id, logits: logits, top: parameters.topLogprobs)) }
        observer.onToken?(index, id)
        if parameters.logprobs, let lp = logprobs.last { observer.onLogprob?(index, lp) }
        if parameters.stopAtEOS && generator.endTokenIDs.contains(id) {
            text += decoder?.flush() ?? ""
            finish = .stop
        } else {
            text += (try? decoder?.push(id)) ?? ""
            if let r = parameters.stop.compactMap({ text.range(of: $0) }).min(by: { $0.lowerBound < $1.lowerBound }) {
                text = String(text[..<r.lowerBound])
                finish = .stop
            } else if constraint?.isComplete == true {
                text += decoder?.flush() ?? ""
                finish = .stop
            } else if tokens.count >= parameters.maxNewTokens || cache.count + 1 >= cache.capacity {
                text += decoder?.flush() ?? ""
                finish = .length
            } else {
                pending = [id]
            }
        }
        emit(observer.onText)
        if done { pending = [] }
    }

    /// Passes on the text that can no longer become part of a stop string.
    mutating func emit(_ onText: ((Int, String) -> Void)?) {
        guard let onText else { return }
        let chars = Array(text)
        var safe = chars.count
        if !done {
            for s in parameters.stop {
                let sc = Array(s)
                for len in stride(from: min(sc.count - 1, chars.count), through: 1, by: -1)
                where Array(chars[(chars.count - len)...]) == Array(sc[0..<len]) {
                    safe = min(safe, chars.count - len)
                    break
                }
            }
        }
        if safe > emitted {
            onText(index, String(chars[emitted..<safe]))
            emitted = safe
        }
    }

    func result() -> GenerationResult {
        GenerationResult(tokens: tokens, text: text, finishReason: finish ?? .length, promptTokens: promptCount,
                         logprobs: parameters.logprobs ? logprobs : nil,
                         promptLogprobs: parameters.promptLogprobs ? promptLogprobs : nil)
    }
}
