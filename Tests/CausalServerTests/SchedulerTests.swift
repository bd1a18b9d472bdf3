import CausalLM
import CausalServer
import Foundation
import XCTest

/// Continuous batching gives every request exactly what it gets alone.
final class SchedulerTests: XCTestCase {
    struct Outcome { var tokens: [Int] = []; var text = ""; var result: GenerationResult? }

    static func collect(_ events: AsyncStream<GenerationEvent>) async -> Outcome {
        var o = Outcome()
        for await e in events {
            switch e {
            case let .token(_, id): o.tokens.append(id)
            case let .text(_, s): o.text += s
            case let .finished(_, r, _): o.result = r
            case let .failed(m): XCTFail("failed: \(m)")
            case .logprob: XCTFail("a logprob event without logprobs asked for")
            }
        }
        return o
    }

    func testInvarianceUnderLoad() async throws {
        let bundle = Shared.bundle
        let tok = try bundle.tokenizer
        let texts = ["The capital of France is", "Once upon a time, there was a little", "def fibonacci(n):",
                     "1, 2, 3, 4,", "Water boils at", "My favourite colour is",
                     String(repeating: "The history of the Roman empire is long and complicated. ", count: 12),
                     "Explain gravity to a child.", "List: apples, pears,"]
        var requests: [SequenceRequest] = []
        for (i, t) in texts.enumerated() {
            let ids = i % 3 == 2 ? try bundle.chatPromptIDs([ChatMessage(role: "user", content: t)]) : try tok.encode(t)
            let p = GenerateParameters(maxNewTokens: 6 + (i * 5) % 17, temperature: i % 2 == 0 ? 0 : 0.8, topK: i % 4 == 1 ? 20 : 0,
                                       seed: UInt64(100 + i), stopAtEOS: i != 4)
            requests.append(SequenceRequest(prompt: ids, parameters: p))
        }
        // References: each alone, whole prompt at once.
        let alone = try requests.map { try Shared.alone($0.prompt, $0.parameters) }

        // Small steps force chunked prompts (the long one spans many steps) mixed with decoding.
        let scheduler = try Scheduler(bundle: bundle, maxSequences: 4, contextLength: 512, maxTokensPerStep: 16, maxQueue: 32)
        // A few start together, the rest join while those run (staggered), then a second wave.
        var tasks: [Task<Outcome, Never>] = []
        for (i, r) in requests.enumerated() {
            let (events, _) = try scheduler.submit(r)
            tasks.append(Task { await Self.collect(events) })
            if i % 3 == 1 { try await Task.sleep(nanoseconds: 30_000_000) }
        }
        var outcomes: [Outcome] = []
        for t in tasks { outcomes.append(await t.value) }
        for (i, o) in outcomes.enumerated() {
            XCTAssertEqual(o.result?.tokens, alone[i].tokens, "request \(i)")
            XCTAssertEqual(o.result?.text, alone[i].text, "request \(i)")
            XCTAssertEqual(o.result?.finishReason, alone[i].finishReason, "request \(i)")
            XCTAssertEqual(o.tokens, alone[i].tokens, "request \(i): token events")
            XCTAssertEqual(o.text, alone[i].text, "request \(i): text events")
        }
        let m = scheduler.metrics
        XCTAssertEqual(m.running, 0)
        XCTAssertEqual(m.queued, 0)
        XCTAssertEqual(m.reservedKVTokens, 0)
        XCTAssertEqual(m.submitted, requests.count)
        XCTAssertEqual(m.finishedStop + m.finishedLength, requests.count)
        XCTAssertEqual(m.promptTokens, requests.reduce(0) { $0 + $1.prompt.count })
        XCTAssertEqual(m.generatedTokens, alone.reduce(0) { $0 + $1.tokens.count })
        // No step exceeded the token budget, and some steps held several sequences.
        XCTAssertEqual(m.stepTokens.cumulativeCounts[Histogram.sizeBounds.firstIndex(of: 16)!], m.steps)
        XCTAssertGreaterThan(m.stepSequences.sum / Double(m.steps), 1.5)
        XCTAssertEqual(m.timeToFirstToken.count, requests.count)
        await scheduler.shutdown(cancelInFlight: false)
    }

    func testCancellationAndDisconnectFreeSlots() async throws {
        let bundle = Shared.bundle
        let scheduler = try Scheduler(bundle: bundle, maxSequences: 2, contextLength: 256, maxTokensPerStep: 32, maxQueue: 4)
        let ids = try bundle.tokenizer.encode("Once upon a time")
        let long = GenerateParameters(maxNewTokens: 200, stopAtEOS: false)
        // 1: cancelled through the handle after a few tokens.
        let (e1, cancel1) = try scheduler.submit(SequenceRequest(prompt: ids, parameters: long))
        // 2: its consumer goes away (stream terminated).
        let (e2, _) = try scheduler.submit(SequenceRequest(prompt: ids, parameters: long))
        // 3: waits in the queue, then is cancelled there.
        let (e3, cancel3) = try scheduler.submit(SequenceRequest(prompt: ids, parameters: long))
        XCTAssertEqual(scheduler.metrics.queued + scheduler.metrics.running, 3)
        cancel3()
        var r3: GenerationResult?
        for await e in e3 { if case let .finished(_, r, _) = e { r3 = r } }
        XCTAssertEqual(r3?.finishReason, .cancelled)

        // The consumer's task is cancelled mid-stream (as when a handler's task is cancelled).
        let consumer = Task {
            var n = 0
            for await e in e2 { if case .token = e { n += 1; if n == 3 { withUnsafeCurrentTask { $0?.cancel() } } } }
        }
        await consumer.value
        var n1 = 0
        var r1: GenerationResult?
        for await e in e1 {
            if case .token = e { n1 += 1; if n1 == 5 { cancel1() } }
            if case let .finished(_, r, _) = e { r1 = r }
        }
        XCTAssertEqual(r1?.finishReason, .cancelled)
        XCTAssertLessThan(r1?.tokens.count ?? 999, 200)
        // Both slots come free.
        for _ in 0..<400 where scheduler.metrics.running > 0 { try await Task.sleep(nanoseconds: 5_000_000) }
        let m = scheduler.metrics
        XCTAssertEqual(m.running, 0)
        XCTAssertEqual(m.reservedKVTokens, 0)
        XCTAssertEqual(m.cancelled, 3)

        // Queue limit: 2 running + 4 queued, the 7th is refused.
        var handles: [(AsyncStream<GenerationEvent>, @Sendable () -> Void)] = []
        for _ in 0..<6 { handles.append(try scheduler.submit(SequenceRequest(prompt: ids, parameters: long))) }
        XCTAssertThrowsError(try scheduler.submit(SequenceRequest(prompt: ids, parameters: long))) { e in
            guard case SchedulerError.queueFull = e else { return XCTFail("\(e)") }
        }
        // Bad requests are refused at once.
        XCTAssertThrowsError(try scheduler.submit(SequenceRequest(prompt: [], parameters: long)))
        XCTAssertThrowsError(try scheduler.submit(SequenceRequest(prompt: Array(repeating: 1, count: 300), parameters: long)))
        XCTAssertThrowsError(try scheduler.submit(SequenceRequest(prompt: [-1], parameters: long)))
        await scheduler.shutdown(cancelInFlight: true)
        for (events, _) in handles {
            var last: GenerationResult?
            for await e in events { if case let .finished(_, r, _) = e { last = r } }
            XCTAssertEqual(last?.finishReason, .cancelled)
        }
        XCTAssertThrowsError(try scheduler.submit(SequenceRequest(prompt: ids, parameters: long))) { e in
            XCTAssertEqual(e as? SchedulerError, .shuttingDown)
        }
    }

    func testGracefulShutdownFinishesInFlight() async throws {
        let bundle = Shared.bundle
        let scheduler = try Scheduler(bundle: bundle, maxSequences: 1, contextLength: 128, maxTokensPerStep: 16, maxQueue: 4)
        let ids = try bundle.tokenizer.encode("Hello")
        let p = GenerateParameters(maxNewTokens: 10, stopAtEOS: false)
        let a = try scheduler.submit(SequenceRequest(prompt: ids, parameters: p))
        let b = try scheduler.submit(SequenceRequest(prompt: ids, parameters: p))
        scheduler.beginShutdown(cancelInFlight: false)
        XCTAssertFalse(scheduler.isAccepting)
        let ra = await Self.collect(a.events), rb = await Self.collect(b.events)
        XCTAssertEqual(ra.result?.tokens.count, 10)
        XCTAssertEqual(rb.result?.tokens, ra.result?.tokens)
        await scheduler.shutdown(cancelInFlight: false)
    }
}
