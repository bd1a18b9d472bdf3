import CausalLM
import CausalServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A plain TCP client on loopback: sends one HTTP request and then can simply close its socket, as a client that
/// gives up does.
final class RawClient {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else { Glibc.close(fd); throw POSIXError(.ECONNREFUSED) }
    }

    func post(_ path: String, json: [String: Any]) throws {
        let body = try JSONSerialization.data(withJSONObject: json)
        let head = "POST \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n"
        let bytes = [UInt8](head.utf8) + [UInt8](body)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw POSIXError(.EPIPE) }
            sent += n
        }
    }

    func close() { Glibc.close(fd) }
}

/// A client that leaves cancels its request: running (non-streaming and streaming) and queued, over a real socket.
final class DisconnectTests: XCTestCase {
    /// Polls `condition` every 10 ms for up to `seconds`; returns how long it took, or nil when it never held.
    func wait(_ seconds: Double, _ condition: () -> Bool) async throws -> Double? {
        let start = Date()
        while Date().timeIntervalSince(start) < seconds {
            if condition() { return Date().timeIntervalSince(start) }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        return condition() ? Date().timeIntervalSince(start) : nil
    }

    func testClientThatLeavesCancelsItsSequence() async throws {
        let config = ServerConfiguration(port: 0, maxSequences: 1, context: 512, maxTokensPerStep: 64, maxQueue: 8,
                                         logLevel: .warning)
        let service = try OpenAIService(bundle: Shared.bundle, configuration: config)
        let scheduler = service.scheduler
        let app = buildApplication(service: service, ownsScheduler: true)
        let model = service.modelID
        let long: [String: Any] = ["model": model, "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": true,
                                   "temperature": 0]
        try await app.test(.live) { client in
            let port = try XCTUnwrap(client.port)

            // A non-streaming request runs; a second one waits in the queue (one slot).
            let a = try RawClient(port: port)
            try a.post("/v1/completions", json: long)
            let running = try await wait(60) { scheduler.metrics.running == 1 && scheduler.metrics.generatedTokens >= 3 }
            XCTAssertNotNil(running, "the first request never started generating")
            let b = try RawClient(port: port)
            try b.post("/v1/chat/completions", json: ["model": model, "messages": [["role": "user", "content": "Hi"]],
                                                      "max_tokens": 400, "ignore_eos": true])
            let queued = try await wait(30) { scheduler.metrics.queued == 1 }
            XCTAssertNotNil(queued, "the second request was not queued")

            // The queued client leaves: its request leaves the queue at once, the running one goes on.
            b.close()
            let leftQueue = try await wait(5) { scheduler.metrics.queued == 0 }
            XCTAssertNotNil(leftQueue, "a queued request whose client left stayed queued")
            XCTAssertEqual(scheduler.metrics.cancelled, 1)
            XCTAssertEqual(scheduler.metrics.running, 1)

            // The running non-streaming client leaves: its sequence is cancelled within a step or two, not after
            // 400 tokens.
            let generatedAtClose = scheduler.metrics.generatedTokens
            a.close()
            let stopped = try await wait(5) { scheduler.metrics.running == 0 }
            XCTAssertNotNil(stopped, "the sequence of a non-streaming client that left kept running")
            let m = scheduler.metrics
            XCTAssertEqual(m.cancelled, 2)
            XCTAssertEqual(m.finishedLength, 0)
            XCTAssertLessThan(m.generatedTokens, 400)
            XCTAssertLessThanOrEqual(m.generatedTokens - generatedAtClose, 20, "generated \(m.generatedTokens - generatedAtClose) tokens after the client left")
            print("disconnect: queued request left the queue after \(String(format: "%.3f", leftQueue ?? -1)) s, running one stopped after \(String(format: "%.3f", stopped ?? -1)) s, \(m.generatedTokens - generatedAtClose) tokens after the close")

            // The same for a streaming client that leaves while its answer is being generated.
            let c = try RawClient(port: port)
            var streaming = long
            streaming["stream"] = true
            try c.post("/v1/completions", json: streaming)
            let started = try await wait(60) { scheduler.metrics.running == 1 && scheduler.metrics.generatedTokens > generatedAtClose + 3 }
            XCTAssertNotNil(started, "the streaming request never started")
            c.close()
            let streamStopped = try await wait(5) { scheduler.metrics.running == 0 }
            XCTAssertNotNil(streamStopped, "the sequence of a streaming client that left kept running")
            XCTAssertEqual(scheduler.metrics.cancelled, 3)

            // /metrics counts the two non-streaming requests as 499 (client closed request); the server goes on
            // serving, also several requests on one kept-alive connection.
            let counted = try await wait(5) {
                service.metrics.requestCounts["/v1/completions"]?[499] == 1 && service.metrics.requestCounts["/v1/chat/completions"]?[499] == 1
            }
            XCTAssertNotNil(counted, "\(service.metrics.requestCounts)")
            for _ in 0..<2 {
                let r = try await client.post("/v1/completions", json: ["model": model, "prompt": "Hello", "max_tokens": 3, "temperature": 0])
                XCTAssertEqual(r.status, .ok, r.text)
                XCTAssertEqual(object(try r.json()["usage"])["completion_tokens"] as? Int, 3)
            }
            let text = try await client.execute(uri: "/metrics", method: .get).text
            XCTAssertTrue(text.contains(#"causal_requests_total{endpoint="/v1/completions",status="499"} 1"#), text)
            XCTAssertTrue(text.contains("causal_running_sequences 0"), text)
        }
        XCTAssertEqual(scheduler.metrics.cancelled, 3)
    }
}
