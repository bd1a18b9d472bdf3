import Foundation

/// What a generation stream reports, per sequence (`index` = the request's position).
public enum GenerationEvent: Sendable {
    /// A new token id was chosen.
    case token(index: Int, id: Int)
    /// The log-probability of the token just chosen (only with `GenerateParameters.logprobs`); follows its `.token`.
    case logprob(index: Int, value: TokenLogprob)
    /// Text that has become final.
    case text(index: Int, delta: String)
    /// The sequence stopped; its result holds only the new tokens and the reason.
    case finished(index: Int, result: GenerationResult, timings: SequenceTimings)
    /// The whole call failed (bad request, context overflow); no further events follow.
    case failed(message: String)
}

/// Wall-clock timings of one sequence, from the start of the stream.
public struct SequenceTimings: Sendable, Equatable {
    public var timeToFirstToken: Double?
    public var total: Double
}

extension Generator {
    /// Runs `requests` on a background thread and streams their events. When the consumer stops listening (the
    /// stream is terminated or its task cancelled), every unfinished sequence is cancelled at the next step and its
    /// cache is released. `cancel(index)` on the returned handle cancels one sequence.
    public func stream(_ requests: [SequenceRequest], chunkSize: Int? = nil) -> (events: AsyncStream<GenerationEvent>, handle: StreamHandle) {
        let handle = StreamHandle(count: requests.count)
        let box = UncheckedBox((self, requests))
        let events = AsyncStream<GenerationEvent> { continuation in
            continuation.onTermination = { _ in handle.cancelAll() }
            let thread = Thread {
                let (generator, requests) = box.value
                let start = DispatchTime.now().uptimeNanoseconds
                func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
                var first = [Double?](repeating: nil, count: requests.count)
                var observer = GenerationObserver()
                observer.onToken = { i, id in
                    if first[i] == nil { first[i] = now() }
                    continuation.yield(.token(index: i, id: id))
                }
                observer.onText = { i, s in continuation.yield(.text(index: i, delta: s)) }
                observer.onLogprob = { i, lp in continuation.yield(.logprob(index: i, value: lp)) }
                observer.isCancelled = { i in handle.isCancelled(i) }
                observer.onFinish = { i, r in
                    continuation.yield(.finished(index: i, result: r, timings: SequenceTimings(timeToFirstToken: first[i], total: now())))
                }
                do {
                    _ = try generator.generate(requests, chunkSize: chunkSize, observer: observer)
                } catch {
                    continuation.yield(.failed(message: "\(error)"))
                }
                continuation.finish()
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
        return (events, handle)
    }
}

/// Cancels sequences of a running stream.
public final class StreamHandle: @unchecked Sendable {
    private let lock = NSLock()
    private var cancelled: [Bool]
    private var all = false

    init(count: Int) { cancelled = Array(repeating: false, count: count) }

    public func cancel(_ index: Int) {
        lock.lock(); defer { lock.unlock() }
        if cancelled.indices.contains(index) { cancelled[index] = true }
    }

    public func cancelAll() {
        lock.lock(); defer { lock.unlock() }
        all = true
    }

    func isCancelled(_ index: Int) -> Bool {
        lock.lock(); defer { lock.unlock() }
        return all || cancelled[index]
    }
}

struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}
