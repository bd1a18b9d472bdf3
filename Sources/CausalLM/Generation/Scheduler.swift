import Foundation

/// Why `Scheduler.submit` refused a request that is itself well formed.
public enum SchedulerError: Error, CustomStringConvertible, Equatable, Sendable {
    /// `maxQueue` requests are already waiting; try again later (an HTTP server answers 429 with `Retry-After`).
    case queueFull(queued: Int, retryAfterSeconds: Int)
    /// The scheduler is shutting down and takes no new requests (an HTTP server answers 503).
    case shuttingDown
    /// The request needs more KV-cache positions than the scheduler may ever hold at once.
    case exceedsKVBudget(needed: Int, limit: Int)

    public var description: String {
        switch self {
        case let .queueFull(queued, _):
            return "the server is busy: \(queued) requests are already waiting; retry later"
        case .shuttingDown:
            return "the server is shutting down and accepts no new requests"
        case let .exceedsKVBudget(needed, limit):
            return "the request needs \(needed) cache positions (prompt + max tokens) but the server holds at most \(limit)"
        }
    }
}

/// A fixed-bucket histogram, as Prometheus exposes one: per-bucket counts (upper bounds inclusive, the last bucket
/// is +Inf), plus the number and sum of observations.
public struct Histogram: Sendable, Equatable {
    /// Upper bounds, ascending; the implicit last bucket is +Inf.
    public let bounds: [Double]
    /// Observations per bucket (not cumulative); `bounds.count + 1` entries.
    public private(set) var counts: [Int]
    public private(set) var sum: Double = 0
    public private(set) var count: Int = 0

    public init(bounds: [Double]) {
        self.bounds = bounds.sorted()
        counts = Array(repeating: 0, count: bounds.count + 1)
    }

    public mutating func observe(_ value: Double) {
        var i = 0
        while i < bounds.count && value > bounds[i] { i += 1 }
        counts[i] += 1
        sum += value
        count += 1
    }

    /// Counts of observations `<= bounds[i]` (and, last, all of them): Prometheus' `_bucket{le=...}` values.
    public var cumulativeCounts: [Int] {
        var c = 0
        return counts.map { c += $0; return c }
    }

    /// An estimate of the `q` quantile (linear inside the bucket holding it); nil without observations.
    public func quantile(_ q: Double) -> Double? {
        guard count > 0 else { return nil }
        let rank = q * Double(count)
        var seen = 0.0
        for (i, n) in counts.enumerated() where n > 0 {
            if seen + Double(n) >= rank {
                let lo = i == 0 ? 0 : bounds[i - 1]
                guard i < bounds.count else { return lo }
                return lo + (bounds[i] - lo) * max(0, min(1, (rank - seen) / Double(n)))
            }
            seen += Double(n)
        }
        return bounds.last
    }

    /// Seconds, from 1 ms to 2 min.
    public static let latencyBounds: [Double] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
                                                 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60, 120]
    /// Counts (tokens or sequences per step), powers of two.
    public static let sizeBounds: [Double] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
}

/// A snapshot of what a `Scheduler` has done so far and holds now.
public struct SchedulerMetrics: Sendable, Equatable {
    /// Sequences admitted and not yet finished (gauge).
    public var running = 0
    /// Requests waiting for admission (gauge).
    public var queued = 0
    /// KV-cache positions reserved by the running sequences (gauge), and the limit.
    public var reservedKVTokens = 0
    public var maxKVTokens = 0
    /// Forward steps run.
    public var steps = 0
    /// Requests accepted by `submit`.
    public var submitted = 0
    /// Requests refused because the queue was full.
    public var rejected = 0
    /// Sequences that ended by stop condition, by length, by cancellation (client gone or shutdown), or by an error.
    public var finishedStop = 0
    public var finishedLength = 0
    public var cancelled = 0
    public var failed = 0
    /// Prompt tokens run through the model (prefill; an encoder-decoder model's encoder inputs included), and new
    /// tokens generated.
    public var promptTokens = 0
    public var generatedTokens = 0
    /// Tokens per forward step (prompt chunks and decode tokens together).
    public var stepTokens = Histogram(bounds: Histogram.sizeBounds)
    /// Sequences per forward step.
    public var stepSequences = Histogram(bounds: Histogram.sizeBounds)
    /// Seconds from `submit` to the first new token (queueing and prefill included).
    public var timeToFirstToken = Histogram(bounds: Histogram.latencyBounds)
    /// Seconds between consecutive new tokens of one sequence.
    public var interTokenLatency = Histogram(bounds: Histogram.latencyBounds)
    /// Seconds from `submit` to admission.
    public var queueWait = Histogram(bounds: Histogram.latencyBounds)
    /// Seconds per forward step.
    public var stepDuration = Histogram(bounds: Histogram.latencyBounds)
    /// Automatic prefix caching (`Scheduler(prefixCacheBytes:)`): admitted prompts that found a cached prefix (hits)
    /// or none (misses; prompts that may not use the cache are not looked up), the prompt positions copied from the
    /// cache instead of run, cache nodes evicted to stay under the budget, and bytes of keys and values held (gauge)
    /// and allowed.
    public var prefixCacheHits = 0
    public var prefixCacheMisses = 0
    public var prefixCacheHitTokens = 0
    public var prefixCacheEvictions = 0
    public var prefixCacheBytes = 0
    public var prefixCacheLimitBytes = 0
    /// Choices of n > 1 requests that started from another choice's prompt instead of running it again.
    public var forkedSequences = 0

    public init() {}
}

/// Continuous batching: one scheduler owns a model and serves any number of independent requests.
///
/// A loop on its own thread runs one `model.forward` per step over every running sequence's last token plus prompt
/// chunks of newly admitted sequences, at most `maxTokensPerStep` tokens in all: decode tokens first, then prompt
/// chunks in arrival order, so a long prompt is processed over several steps and never stalls the others.
/// Sequences that finish or are cancelled leave at once and free their KV cache; waiting requests join at the next
/// step. At most `maxSequences` sequences run at once, and together they reserve at most `maxKVTokens` cache
/// positions (each reserves its cache capacity: prompt + max new tokens, capped at `contextLength`). Other requests
/// wait in a FIFO queue of at most `maxQueue`; beyond that `submit` throws `SchedulerError.queueFull`.
///
/// **Invariance.** Each sequence runs through the same per-sequence state machine as `Generator.generate`, with its
/// own cache and random generator, and the model's rows never interact, so a greedy or seeded request gives exactly
/// the tokens `Generator.generate([request])` gives for it alone, whatever else runs.
///
/// **Prefix caching** (`prefixCacheBytes` > 0; decoder-only models with causal prompt attention): the keys and values
/// of every prompt that ran, and of every sequence that finished, are kept by token ids (`PrefixCache`, a radix tree,
/// least recently used first out under the byte budget). A new request whose prompt starts with cached tokens gets
/// their rows copied into its cache and runs only the rest (at least its last token, which gives the first logits).
/// The copied rows are bit-identical to the ones the model would write, so results do not change. Requests that
/// score their prompt (`promptLogprobs`) run it whole. Keys and values are cached per LoRA adapter
/// (`SequenceRequest.adapter`): a request only reuses rows computed with its own adapter (or, without one, the base's).
///
/// **LoRA adapters**: requests with different adapters, and without one, share each step (`SequenceChunk.adapter`).
///
/// **n > 1** (`submit(_:n:)`): the prompt runs once, as choice 0; choices 1..<n then copy its cache and each samples
/// its own first token from the same last logits row, with its own random generator (seed `seed &+ i` for choice i).
///
/// **Encoder-decoder models** (T5): a request gives its input as `SequenceRequest(encoderInput:parameters:)`. When it
/// is admitted, the encoder runs over its input (together with the other inputs admitted at that step; the rows do
/// not interact) and fills its cache's cross-attention keys and values, as `Generator` does; the decoder then starts
/// from `decoderStartTokenID` and steps like any sequence. Only decoder tokens come back. No prefix caching; n > 1
/// choices share the encoder's cross-attention keys and values (read-only).
public final class Scheduler: @unchecked Sendable {
    public let generator: Generator
    public let maxSequences: Int
    /// The longest sequence (prompt + new tokens) served; at most the model's context length.
    public let contextLength: Int
    public let maxTokensPerStep: Int
    public let maxQueue: Int
    public let maxKVTokens: Int
    /// Bytes of keys and values the prefix cache may hold (0: off, or the model does not support it).
    public let prefixCacheBytes: Int
    /// The default prefix-cache budget of the server and CLI: 256 MiB.
    public static let defaultPrefixCacheBytes = 256 << 20

    /// The choices of one `submit` call: one stream for all of them.
    private final class Group {
        let n: Int
        let continuation: AsyncStream<GenerationEvent>.Continuation
        var entries: [Entry] = []
        // Guarded by the scheduler's lock.
        var remaining: Int
        var failed = false
        /// Choice 0 left before its prompt had run (choices still queued then run their own prompt).
        var parentGone = false
        // Loop thread only (read under the lock at admission, which the loop thread also does).
        var snapshot: ForkSnapshot?
        var forksWaiting: Int

        init(n: Int, continuation: AsyncStream<GenerationEvent>.Continuation) {
            self.n = n; self.continuation = continuation; remaining = n; forksWaiting = n - 1
        }
    }

    /// What choices 1..<n of a prompt start from: choice 0's prompt rows, its last logits row and prompt scores.
    private struct ForkSnapshot {
        let block: KVBlock
        let cross: CrossAttentionCache?
        let promptLength: Int
        let lastRow: [Float]
        let promptLogprobs: [TokenLogprob]
    }

    private final class Entry {
        let request: SequenceRequest
        let index: Int
        let group: Group
        let capacity: Int
        let submitted: UInt64
        /// Waits in the queue until choice 0 of its group has run the prompt, then starts from a copy.
        let isFork: Bool
        // Guarded by the scheduler's lock.
        var cancelRequested = false
        var finished = false
        // Loop thread only.
        var state: SequenceState?
        var firstTokenAt: UInt64?
        var lastTokenAt: UInt64?
        var promptCached = false

        init(request: SequenceRequest, index: Int, group: Group, capacity: Int, isFork: Bool) {
            self.request = request
            self.index = index
            self.group = group
            self.capacity = capacity
            self.isFork = isFork
            submitted = DispatchTime.now().uptimeNanoseconds
        }

        var continuation: AsyncStream<GenerationEvent>.Continuation { group.continuation }
        /// Prompt tokens as results count them: the decoder prompt plus the encoder input.
        var promptTokens: Int { request.prompt.count + (request.encoderInput?.count ?? 0) }
    }

    private let cond = NSCondition()
    private var queue: [Entry] = []        // lock
    private var running: [Entry] = []      // written under the lock by the loop thread only
    private var reserved = 0               // lock
    private var accepting = true           // lock
    private var stopped = false            // lock
    private var stats = SchedulerMetrics() // lock
    private var stopWaiters: [CheckedContinuation<Void, Never>] = []  // lock
    /// Loop thread only.
    private let prefixCache: PrefixCache?
    /// How to copy the model's cache rows; nil: n > 1 choices each run their prompt.
    private let layout: KVLayout?

    /// - Parameters:
    ///   - maxSequences: sequences running at once.
    ///   - contextLength: the longest sequence served (nil: the model's context); larger values are capped to it.
    ///   - maxTokensPerStep: tokens per forward step (decode tokens plus prompt chunks); at least `maxSequences`.
    ///   - maxQueue: requests waiting for admission before `submit` refuses more.
    ///   - maxKVTokens: cache positions reserved by all running sequences together (nil: `maxSequences × contextLength`).
    ///   - prefixCacheBytes: bytes of keys and values the automatic prefix cache may hold (0: off). Ignored (off) for
    ///     encoder-decoder models and prefix-LMs. This is memory on top of the running sequences' caches.
    public init(generator: Generator, maxSequences: Int = 16, contextLength: Int? = nil, maxTokensPerStep: Int = 512,
                maxQueue: Int = 256, maxKVTokens: Int? = nil, prefixCacheBytes: Int = 0) throws {
        func bad(_ s: String) -> CausalError { .invalidArgument(s) }
        guard maxSequences >= 1 else { throw bad("maxSequences must be at least 1, got \(maxSequences)") }
        guard maxQueue >= 0 else { throw bad("maxQueue must be >= 0, got \(maxQueue)") }
        guard prefixCacheBytes >= 0 else { throw bad("prefixCacheBytes must be >= 0, got \(prefixCacheBytes)") }
        let ctx = min(contextLength ?? generator.model.contextLength, generator.model.contextLength)
        guard ctx >= 2 else { throw bad("contextLength must be at least 2, got \(ctx)") }
        guard maxTokensPerStep >= maxSequences else {
            throw bad("maxTokensPerStep (\(maxTokensPerStep)) must be at least maxSequences (\(maxSequences)) so every running sequence decodes each step")
        }
        let kv = maxKVTokens ?? maxSequences * ctx
        guard kv >= 2 else { throw bad("maxKVTokens must be at least 2, got \(kv)") }
        self.generator = generator
        self.maxSequences = maxSequences
        self.contextLength = ctx
        self.maxTokensPerStep = maxTokensPerStep
        self.maxQueue = maxQueue
        self.maxKVTokens = kv
        let model = generator.model
        layout = KVLayout(model: model)
        if let layout, prefixCacheBytes > 0, !(model is EncoderDecoderModel), !model.needsWholePrompt {
            prefixCache = PrefixCache(budgetBytes: prefixCacheBytes, layout: layout)
            self.prefixCacheBytes = prefixCacheBytes
        } else {
            prefixCache = nil
            self.prefixCacheBytes = 0
        }
        stats.maxKVTokens = kv
        stats.prefixCacheLimitBytes = self.prefixCacheBytes
        let thread = Thread { [self] in loop() }
        thread.name = "causal-scheduler"
        thread.stackSize = 8 << 20
        thread.start()
    }

    /// A scheduler over a bundle's model and tokenizer.
    public convenience init(bundle: ModelBundle, maxSequences: Int = 16, contextLength: Int? = nil,
                            maxTokensPerStep: Int = 512, maxQueue: Int = 256, maxKVTokens: Int? = nil,
                            prefixCacheBytes: Int = 0) throws {
        try self.init(generator: bundle.makeGenerator(), maxSequences: maxSequences, contextLength: contextLength,
                      maxTokensPerStep: maxTokensPerStep, maxQueue: maxQueue, maxKVTokens: maxKVTokens,
                      prefixCacheBytes: prefixCacheBytes)
    }

    /// The cache capacity a request gets (and reserves): prompt + max new tokens, capped at `contextLength`.
    /// For an encoder-decoder request the prompt is the decoder's (an empty one is the decoder start id alone); the
    /// encoder input holds no decoder positions.
    public func capacity(for request: SequenceRequest) -> Int {
        if let c = request.cache { return c.capacity }
        let prompt = request.prompt.isEmpty && request.encoderInput != nil ? 1 : request.prompt.count
        return min(prompt + max(request.parameters.maxNewTokens, 1), contextLength)
    }

    /// Queues a request. Its events (`.token`, `.text`, then one `.finished`, or `.failed`; index 0) arrive on the
    /// returned stream, which then finishes. Terminating the stream (the consumer stops listening) or calling
    /// `cancel` stops the sequence and frees its cache; its `.finished` event then has reason `.cancelled`.
    ///
    /// Throws `CausalError` for a request that can never run (bad parameters, empty prompt, token ids outside the
    /// vocabulary, a prompt that fills the context) and `SchedulerError` when it cannot be taken now.
    public func submit(_ request: SequenceRequest) throws -> (events: AsyncStream<GenerationEvent>, cancel: @Sendable () -> Void) {
        try submit(request, n: 1)
    }

    /// Queues a request for `n` choices of the same prompt (OpenAI's `n`, or `best_of`). Events of choice i carry
    /// `index: i`; the stream finishes after every choice's `.finished` (or after one `.failed`, which cancels the
    /// others). `cancel` stops all of them.
    ///
    /// The prompt runs once, as choice 0; each other choice starts from a copy of its cache and samples its first
    /// token from the same last logits row with its own random generator. With `parameters.seed` = s, choice i uses
    /// seed `s &+ UInt64(i)`, so every choice is reproducible and choice 0 is exactly the n = 1 answer for seed s;
    /// without a seed each choice draws its own. Each choice reserves its own cache capacity. A request continuing
    /// from its own `cache` takes only n = 1.
    public func submit(_ request: SequenceRequest, n: Int) throws -> (events: AsyncStream<GenerationEvent>, cancel: @Sendable () -> Void) {
        guard n >= 1 else { throw CausalError.invalidArgument("n must be at least 1, got \(n)") }
        try request.parameters.validate()
        let V = generator.model.vocabularySize
        var request = request
        if let m = generator.model as? EncoderDecoderModel {
            if request.cache == nil {
                guard let input = request.encoderInput else {
                    throw CausalError.invalidArgument("an encoder-decoder model needs an encoder input (SequenceRequest(encoderInput:parameters:))")
                }
                guard !input.isEmpty else { throw CausalError.invalidArgument("the encoder input has no tokens") }
                if let bad = input.first(where: { $0 < 0 || $0 >= V }) { throw CausalError.badTokenID(id: bad, vocabularySize: V) }
                if request.prompt.isEmpty { request.prompt = [m.decoderStartTokenID] }
            }
        } else if request.encoderInput != nil {
            throw CausalError.invalidArgument("the model has no encoder; give the input as the prompt")
        }
        guard !request.prompt.isEmpty else { throw CausalError.invalidArgument("the prompt has no tokens") }
        if let bad = request.prompt.first(where: { $0 < 0 || $0 >= V }) { throw CausalError.badTokenID(id: bad, vocabularySize: V) }
        if let a = request.adapter {
            guard let d = generator.model as? DecoderModel, a.fits(d.config) else {
                throw CausalError.invalidArgument("the LoRA adapter does not fit this model (adapters run on decoder models of the shape they were made for)")
            }
        }
        let cap = capacity(for: request)
        guard request.prompt.count < cap else {
            throw CausalError.invalidArgument("the prompt has \(request.prompt.count) tokens but the context holds \(contextLength); it must be shorter to leave room for at least one new token")
        }
        if let c = request.cache, c.count > request.prompt.count || c.isReleased {
            throw CausalError.invalidArgument("the request's cache holds more positions than its prompt, or was released")
        }
        if request.cache != nil && n > 1 {
            throw CausalError.invalidArgument("a request that continues from its own cache takes n = 1, got n = \(n)")
        }
        guard cap <= maxKVTokens else { throw SchedulerError.exceedsKVBudget(needed: cap, limit: maxKVTokens) }

        var continuation: AsyncStream<GenerationEvent>.Continuation!
        let events = AsyncStream<GenerationEvent> { continuation = $0 }
        let group = Group(n: n, continuation: continuation)
        let forks = n > 1 && layout != nil
        group.entries = (0..<n).map { i in
            var r = request
            if let s = request.parameters.seed { r.parameters.seed = s &+ UInt64(i) }
            return Entry(request: r, index: i, group: group, capacity: cap, isFork: forks && i > 0)
        }
        cond.lock()
        guard accepting else { cond.unlock(); throw SchedulerError.shuttingDown }
        // Requests that can be admitted at the next step do not count against the queue.
        let free = max(0, maxSequences - running.count)
        guard queue.count + n <= maxQueue + free else {
            stats.rejected += 1
            let waiting = queue.count
            cond.unlock()
            throw SchedulerError.queueFull(queued: waiting, retryAfterSeconds: max(1, min(60, waiting / max(maxSequences, 1))))
        }
        queue.append(contentsOf: group.entries)
        stats.submitted += 1
        cond.signal()
        cond.unlock()
        let cancel: @Sendable () -> Void = { [weak self, group] in
            guard let self else { return }
            for e in group.entries { self.cancel(e) }
        }
        continuation.onTermination = { _ in cancel() }
        return (events, cancel)
    }

    /// What the scheduler holds now and has done so far.
    public var metrics: SchedulerMetrics {
        cond.lock(); defer { cond.unlock() }
        var m = stats
        m.running = running.count
        m.queued = queue.count
        m.reservedKVTokens = reserved
        return m
    }

    /// Whether `submit` still takes requests.
    public var isAccepting: Bool {
        cond.lock(); defer { cond.unlock() }
        return accepting
    }

    /// Stops taking requests. Without `cancelInFlight`, queued and running requests still run to the end; with it,
    /// they are all cancelled at the next step. The loop thread exits once nothing is left. Returns at once.
    public func beginShutdown(cancelInFlight: Bool) {
        cond.lock()
        accepting = false
        cond.signal()
        cond.unlock()
        if cancelInFlight { cancelAll() }
    }

    /// `beginShutdown`, then waits until every request has finished and the loop thread has exited.
    public func shutdown(cancelInFlight: Bool) async {
        beginShutdown(cancelInFlight: cancelInFlight)
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            cond.lock()
            if stopped { cond.unlock(); c.resume() } else { stopWaiters.append(c); cond.unlock() }
        }
    }

    /// Cancels every queued and running request (their streams end with reason `.cancelled`).
    public func cancelAll() {
        cond.lock()
        let all = queue + running
        cond.unlock()
        for e in all { cancel(e) }
    }

    // MARK: - Internals

    private func cancel(_ e: Entry) {
        cond.lock()
        if e.finished { cond.unlock(); return }
        if let i = queue.firstIndex(where: { $0 === e }) {
            queue.remove(at: i)
            e.finished = true
            stats.cancelled += 1
            if e.index == 0 { e.group.parentGone = true }
            e.group.remaining -= 1
            let last = e.group.remaining == 0
            cond.unlock()
            let r = GenerationResult(tokens: [], text: "", finishReason: .cancelled, promptTokens: e.promptTokens,
                                     logprobs: e.request.parameters.logprobs ? [] : nil)
            e.continuation.yield(.finished(index: e.index, result: r, timings: timings(e)))
            if last { e.continuation.finish() }
            return
        }
        e.cancelRequested = true
        cond.signal()
        cond.unlock()
    }

    private func seconds(_ from: UInt64, _ to: UInt64) -> Double { Double(to &- from) / 1e9 }

    private func timings(_ e: Entry) -> SequenceTimings {
        SequenceTimings(timeToFirstToken: e.firstTokenAt.map { seconds(e.submitted, $0) },
                        total: seconds(e.submitted, DispatchTime.now().uptimeNanoseconds))
    }

    /// Publishes the prefix cache's size and evictions (loop thread).
    private func updatePrefixStats() {
        guard let p = prefixCache else { return }
        cond.lock()
        stats.prefixCacheBytes = p.bytes
        stats.prefixCacheEvictions = p.evictions
        cond.unlock()
    }

    /// Keeps the keys and values of `e`'s first `count` tokens (prompt, then generated) in the prefix cache.
    private func remember(_ e: Entry, count: Int) {
        guard let p = prefixCache, let s = e.state, !s.cache.isReleased, e.request.encoderInput == nil, count > 0 else { return }
        let n = min(count, s.cache.count, s.history.count)
        p.insert(Array(s.history[0..<n]), from: s.cache, adapter: e.request.adapter)
        updatePrefixStats()
    }

    /// Removes a running entry, frees its cache, and ends its stream (once every choice of its group has ended).
    private func complete(_ e: Entry, _ outcome: Result<GenerationResult, Error>) {
        if let s = e.state, !outcome.isFailure, s.finish != .cancelled { remember(e, count: s.cache.count) }
        if let s = e.state, e.request.cache == nil || outcome.isFailure { s.cache.release() }
        e.state = nil
        cond.lock()
        if let i = running.firstIndex(where: { $0 === e }) { running.remove(at: i) }
        reserved -= e.capacity
        e.finished = true
        let g = e.group
        if e.index == 0 && g.snapshot == nil { g.parentGone = true }
        switch outcome {
        case .success(let r):
            switch r.finishReason {
            case .stop: stats.finishedStop += 1
            case .length: stats.finishedLength += 1
            case .cancelled: stats.cancelled += 1
            }
        case .failure: stats.failed += 1
        }
        g.remaining -= 1
        let last = g.remaining == 0
        let firstFailure = outcome.isFailure && !g.failed
        if outcome.isFailure { g.failed = true }
        cond.unlock()
        switch outcome {
        case .success(let r): e.continuation.yield(.finished(index: e.index, result: r, timings: timings(e)))
        case .failure(let err): if firstFailure { e.continuation.yield(.failed(message: "\(err)")) }
        }
        if last || firstFailure { e.continuation.finish() }
        // One failed choice fails the request: the others stop (their events after `.failed` are dropped).
        if firstFailure && g.n > 1 { for other in g.entries where other !== e { cancel(other) } }
    }

    private func observer(for e: Entry) -> GenerationObserver {
        var observer = GenerationObserver()
        let index = e.index, c = e.continuation
        observer.onToken = { _, id in c.yield(.token(index: index, id: id)) }
        observer.onText = { _, s in c.yield(.text(index: index, delta: s)) }
        observer.onLogprob = { _, lp in c.yield(.logprob(index: index, value: lp)) }
        return observer
    }

    /// Starts a choice of an n > 1 request from choice 0's prompt: copies its rows into a fresh cache and chooses the
    /// first token from the same logits row. Returns whether it produced a token.
    private func startFork(_ e: Entry, from snap: ForkSnapshot) throws -> Bool {
        let cache = KVCache(layers: snap.block.layers, kvDim: snap.block.kvDim, capacity: e.capacity,
                            precision: snap.block.precision, cross: snap.cross)
        snap.block.write(into: cache, at: 0, count: snap.block.count)
        cache.promptLength = snap.promptLength
        e.state = SequenceState(choice: e.index, request: e.request, promptCount: e.promptTokens,
                                promptLogprobs: snap.promptLogprobs, cache: cache, generator: generator)
        guard !e.state!.done else { return false }
        e.state!.consume(snap.lastRow, generator: generator, observer: observer(for: e))
        return !e.state!.tokens.isEmpty
    }

    private func loop() {
        while true {
            // Admit, collect cancellations, or sleep.
            cond.lock()
            var admitted: [Entry] = []
            while let head = queue.first, running.count < maxSequences, reserved + head.capacity <= maxKVTokens {
                // A choice of an n > 1 request waits (in order) until choice 0 has run the prompt.
                if head.isFork && head.group.snapshot == nil && !head.group.parentGone { break }
                queue.removeFirst()
                running.append(head)
                reserved += head.capacity
                admitted.append(head)
                stats.queueWait.observe(seconds(head.submitted, DispatchTime.now().uptimeNanoseconds))
            }
            if running.isEmpty {
                if queue.isEmpty && !accepting {
                    stopped = true
                    let waiters = stopWaiters
                    stopWaiters = []
                    cond.unlock()
                    waiters.forEach { $0.resume() }
                    return
                }
                cond.wait()
                cond.unlock()
                continue
            }
            let cancelled = running.filter { $0.cancelRequested }
            cond.unlock()

            // Encoder-decoder requests: the encoder runs once over the inputs admitted now (one ragged batch per cache
            // capacity; rows do not interact), filling each new cache's cross-attention keys and values.
            var encoded: [ObjectIdentifier: KVCache] = [:]
            if let m = generator.model as? EncoderDecoderModel {
                let waiting = admitted.filter {
                    $0.request.cache == nil && $0.request.encoderInput != nil && !($0.isFork && $0.group.snapshot != nil)
                }
                for (cap, group) in Dictionary(grouping: waiting, by: \.capacity).sorted(by: { $0.key < $1.key }) {
                    do {
                        let inputs = group.map { $0.request.encoderInput! }
                        let caches = try m.makeCaches(encoderInputs: inputs, capacity: cap)
                        for (e, c) in zip(group, caches) { encoded[ObjectIdentifier(e)] = c }
                        cond.lock()
                        stats.promptTokens += inputs.reduce(0) { $0 + $1.count }
                        cond.unlock()
                    } catch {
                        for e in group { complete(e, .failure(error)) }
                    }
                }
            }
            let now = DispatchTime.now().uptimeNanoseconds
            var forkFirsts: [Double] = []
            for e in admitted where !e.finished {
                do {
                    if e.isFork, let snap = e.group.snapshot {
                        e.group.forksWaiting -= 1
                        if e.group.forksWaiting == 0 { e.group.snapshot = nil }
                        let produced = try startFork(e, from: snap)
                        if produced {
                            e.firstTokenAt = now
                            e.lastTokenAt = now
                            forkFirsts.append(seconds(e.submitted, now))
                        }
                        cond.lock()
                        stats.forkedSequences += 1
                        if produced { stats.generatedTokens += 1 }
                        cond.unlock()
                        if e.state!.done { complete(e, .success(e.state!.result())) }
                        continue
                    }
                    var r = e.request
                    if r.cache == nil {
                        r.cache = encoded[ObjectIdentifier(e)] ?? generator.model.makeCache(capacity: e.capacity)
                        if let p = prefixCache, !r.parameters.promptLogprobs, r.encoderInput == nil {
                            // Leave at least the last prompt token to run: it gives the first logits.
                            let hit = p.fill(r.cache!, tokens: r.prompt, limit: r.prompt.count - 1, adapter: r.adapter)
                            cond.lock()
                            if hit > 0 { stats.prefixCacheHits += 1; stats.prefixCacheHitTokens += hit } else { stats.prefixCacheMisses += 1 }
                            cond.unlock()
                        }
                    }
                    e.state = try SequenceState(index: e.index, request: r, generator: generator)
                    if e.state!.done { complete(e, .success(e.state!.result())) }
                } catch {
                    complete(e, .failure(error))
                }
            }
            if !forkFirsts.isEmpty {
                cond.lock()
                for f in forkFirsts { stats.timeToFirstToken.observe(f) }
                cond.unlock()
            }
            for e in cancelled where !e.finished {
                if e.state != nil { e.state!.cancel() }
                let r = e.state?.result() ?? GenerationResult(tokens: [], text: "", finishReason: .cancelled,
                                                              promptTokens: e.promptTokens, logprobs: nil)
                complete(e, .success(r))
            }

            // One step: every decoding sequence's last token, then prompt chunks in arrival order.
            let active = running.filter { $0.state.map { !$0.done } ?? false }
            var chunks: [SequenceChunk] = []
            var owners: [Entry] = []
            var budget = maxTokensPerStep
            var prefill = 0
            for e in active where !e.state!.tokens.isEmpty && !e.state!.pending.isEmpty {
                chunks.append(e.state!.takeChunk(limit: Int.max, wholePrompt: true))
                owners.append(e)
                budget -= chunks.last!.tokens.count
            }
            for e in active where e.state!.tokens.isEmpty && !e.state!.pending.isEmpty && budget > 0 {
                chunks.append(e.state!.takeChunk(limit: budget, wholePrompt: generator.model.needsWholePrompt))
                owners.append(e)
                let take = chunks.last!.tokens.count
                budget -= take
                prefill += take
            }
            if chunks.isEmpty { continue }

            let t0 = DispatchTime.now().uptimeNanoseconds
            let logits: [[Float]]
            do {
                logits = try generator.model.forward(chunks)
            } catch {
                for e in owners { complete(e, .failure(error)) }
                continue
            }
            let t1 = DispatchTime.now().uptimeNanoseconds
            var generated = 0
            var gaps: [Double] = []
            var firsts: [Double] = []
            var finished: [Entry] = []
            for (j, e) in owners.enumerated() where !logits[j].isEmpty {
                let before = e.state!.tokens.count
                e.state!.consume(logits[j], generator: generator, observer: observer(for: e))
                if before == 0 && e.state!.fed == e.state!.prompt.count && !e.promptCached {
                    // The prompt has run: keep its rows for later requests, and for the other choices of this one.
                    e.promptCached = true
                    let s = e.state!
                    if e.index == 0 && e.group.n > 1, let layout, !s.cache.isReleased, e.group.forksWaiting > 0 {
                        let V = generator.model.vocabularySize
                        e.group.snapshot = ForkSnapshot(
                            block: KVBlock(copying: s.cache, from: 0, count: s.prompt.count, layout: layout),
                            cross: s.cache.cross, promptLength: s.cache.promptLength,
                            lastRow: Array(logits[j][(logits[j].count - V)...]), promptLogprobs: s.promptLogprobs)
                        cond.lock(); cond.signal(); cond.unlock()
                    }
                    remember(e, count: s.prompt.count)
                }
                if e.state!.tokens.count == before {
                    // A scored prompt chunk that chose no token yet (or a prompt scored with no new tokens).
                    if e.state!.done { finished.append(e) }
                    continue
                }
                generated += 1
                if let last = e.lastTokenAt { gaps.append(seconds(last, t1)) } else {
                    e.firstTokenAt = t1
                    firsts.append(seconds(e.submitted, t1))
                }
                e.lastTokenAt = t1
                if e.state!.done { finished.append(e) }
            }
            // Count the step before ending any stream, so a consumer that sees its end also sees it counted.
            cond.lock()
            stats.steps += 1
            stats.promptTokens += prefill
            stats.generatedTokens += generated
            stats.stepTokens.observe(Double(chunks.reduce(0) { $0 + $1.tokens.count }))
            stats.stepSequences.observe(Double(chunks.count))
            stats.stepDuration.observe(seconds(t0, t1))
            for g in gaps { stats.interTokenLatency.observe(g) }
            for f in firsts { stats.timeToFirstToken.observe(f) }
            cond.unlock()
            for e in finished { complete(e, .success(e.state!.result())) }
        }
    }
}

private extension Result {
    var isFailure: Bool { if case .failure = self { return true } else { return false } }
}
