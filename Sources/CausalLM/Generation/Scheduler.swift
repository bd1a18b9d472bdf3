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
/// **Encoder-decoder models** (T5): a request gives its input as `SequenceRequest(encoderInput:parameters:)`. When it
/// is admitted, the encoder runs over its input (together with the other inputs admitted at that step; the rows do
/// not interact) and fills its cache's cross-attention keys and values, as `Generator` does; the decoder then starts
/// from `decoderStartTokenID` and steps like any sequence. Only decoder tokens come back.
public final class Scheduler: @unchecked Sendable {
    public let generator: Generator
    public let maxSequences: Int
    /// The longest sequence (prompt + new tokens) served; at most the model's context length.
    public let contextLength: Int
    public let maxTokensPerStep: Int
    public let maxQueue: Int
    public let maxKVTokens: Int

    private final class Entry {
        let request: SequenceRequest
        let capacity: Int
        let continuation: AsyncStream<GenerationEvent>.Continuation
        let submitted: UInt64
        // Guarded by the scheduler's lock.
        var cancelRequested = false
        var finished = false
        // Loop thread only.
        var state: SequenceState?
        var firstTokenAt: UInt64?
        var lastTokenAt: UInt64?

        init(request: SequenceRequest, capacity: Int, continuation: AsyncStream<GenerationEvent>.Continuation) {
            self.request = request
            self.capacity = capacity
            self.continuation = continuation
            submitted = DispatchTime.now().uptimeNanoseconds
        }

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

    /// - Parameters:
    ///   - maxSequences: sequences running at once.
    ///   - contextLength: the longest sequence served (nil: the model's context); larger values are capped to it.
    ///   - maxTokensPerStep: tokens per forward step (decode tokens plus prompt chunks); at least `maxSequences`.
    ///   - maxQueue: requests waiting for admission before `submit` refuses more.
    ///   - maxKVTokens: cache positions reserved by all running sequences together (nil: `maxSequences × contextLength`).
    public init(generator: Generator, maxSequences: Int = 16, contextLength: Int? = nil, maxTokensPerStep: Int = 512,
                maxQueue: Int = 256, maxKVTokens: Int? = nil) throws {
        func bad(_ s: String) -> CausalError { .invalidArgument(s) }
        guard maxSequences >= 1 else { throw bad("maxSequences must be at least 1, got \(maxSequences)") }
        guard maxQueue >= 0 else { throw bad("maxQueue must be >= 0, got \(maxQueue)") }
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
        stats.maxKVTokens = kv
        let thread = Thread { [self] in loop() }
        thread.name = "causal-scheduler"
        thread.stackSize = 8 << 20
        thread.start()
    }

    /// A scheduler over a bundle's model and tokenizer.
    public convenience init(bundle: ModelBundle, maxSequences: Int = 16, contextLength: Int? = nil,
                            maxTokensPerStep: Int = 512, maxQueue: Int = 256, maxKVTokens: Int? = nil) throws {
        try self.init(generator: bundle.makeGenerator(), maxSequences: maxSequences, contextLength: contextLength,
                      maxTokensPerStep: maxTokensPerStep, maxQueue: maxQueue, maxKVTokens: maxKVTokens)
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
        let cap = capacity(for: request)
        guard request.prompt.count < cap else {
            throw CausalError.invalidArgument("the prompt has \(request.prompt.count) tokens but the context holds \(contextLength); it must be shorter to leave room for at least one new token")
        }
        if let c = request.cache, c.count > request.prompt.count || c.isReleased {
            throw CausalError.invalidArgument("the request's cache holds more positions than its prompt, or was released")
        }
        guard cap <= maxKVTokens else { throw SchedulerError.exceedsKVBudget(needed: cap, limit: maxKVTokens) }

        var continuation: AsyncStream<GenerationEvent>.Continuation!
        let events = AsyncStream<GenerationEvent> { continuation = $0 }
        let entry = Entry(request: request, capacity: cap, continuation: continuation)
        cond.lock()
        guard accepting else { cond.unlock(); throw SchedulerError.shuttingDown }
        // Requests that can be admitted at the next step do not count against the queue.
        let free = max(0, maxSequences - running.count)
        guard queue.count < maxQueue + free else {
            stats.rejected += 1
            let waiting = queue.count
            cond.unlock()
            throw SchedulerError.queueFull(queued: waiting, retryAfterSeconds: max(1, min(60, waiting / max(maxSequences, 1))))
        }
        queue.append(entry)
        stats.submitted += 1
        cond.signal()
        cond.unlock()
        let cancel: @Sendable () -> Void = { [weak self, entry] in self?.cancel(entry) }
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
            cond.unlock()
            let r = GenerationResult(tokens: [], text: "", finishReason: .cancelled, promptTokens: e.promptTokens,
                                     logprobs: e.request.parameters.logprobs ? [] : nil)
            e.continuation.yield(.finished(index: 0, result: r, timings: timings(e)))
            e.continuation.finish()
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

    /// Removes a running entry, frees its cache, and ends its stream.
    private func complete(_ e: Entry, _ outcome: Result<GenerationResult, Error>) {
        if let s = e.state, e.request.cache == nil || outcome.isFailure { s.cache.release() }
        e.state = nil
        cond.lock()
        if let i = running.firstIndex(where: { $0 === e }) { running.remove(at: i) }
        reserved -= e.capacity
        e.finished = true
        switch outcome {
        case .success(let r):
            switch r.finishReason {
            case .stop: stats.finishedStop += 1
            case .length: stats.finishedLength += 1
            case .cancelled: stats.cancelled += 1
            }
        case .failure: stats.failed += 1
        }
        cond.unlock()
        switch outcome {
        case .success(let r): e.continuation.yield(.finished(index: 0, result: r, timings: timings(e)))
        case .failure(let err): e.continuation.yield(.failed(message: "\(err)"))
        }
        e.continuation.finish()
    }

    private func loop() {
        while true {
            // Admit, collect cancellations, or sleep.
            cond.lock()
            var admitted: [Entry] = []
            while let head = queue.first, running.count < maxSequences, reserved + head.capacity <= maxKVTokens {
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
                let waiting = admitted.filter { $0.request.cache == nil && $0.request.encoderInput != nil }
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
            for e in admitted where !e.finished {
                do {
                    var r = e.request
                    if r.cache == nil { r.cache = encoded[ObjectIdentifier(e)] ?? generator.model.makeCache(capacity: e.capacity) }
                    e.state = try SequenceState(index: 0, request: r, generator: generator)
                    if e.state!.done { complete(e, .success(e.state!.result())) }
                } catch {
                    complete(e, .failure(error))
                }
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
                var observer = GenerationObserver()
                observer.onToken = { _, id in e.continuation.yield(.token(index: 0, id: id)) }
                observer.onText = { _, s in e.continuation.yield(.text(index: 0, delta: s)) }
                let before = e.state!.tokens.count
                e.state!.consume(logits[j], generator: generator, observer: observer)
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
