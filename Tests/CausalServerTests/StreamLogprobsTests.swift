import CausalLM
import CausalServer
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// Streams carry each token's logprobs in the chunk that first shows its text (OpenAI and vLLM do so), not all at the
/// end: concatenated over the chunks they equal the non-streamed answer's, value for value.
final class StreamLogprobsTests: XCTestCase {
    var app: some ApplicationProtocol { buildApplication(service: Shared.service) }

    func chunks(_ r: TestResponse) throws -> [[String: Any]] {
        try r.sseData.dropLast().map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
    }

    func testChatStreamLogprobsPerChunk() async throws {
        try await app.test(.router) { client in
            let body: [String: Any] = ["model": Shared.modelID, "messages": [["role": "user", "content": "Name three colours."]],
                                       "temperature": 0, "max_tokens": 24, "logprobs": true, "top_logprobs": 2]
            let plain = try await client.post("/v1/chat/completions", json: body)
            XCTAssertEqual(plain.status, .ok, plain.text)
            let expected = object(firstChoice(try plain.json())["logprobs"])["content"] as? [[String: Any]] ?? []
            XCTAssertEqual(expected.count, 24)
            var streamBody = body
            streamBody["stream"] = true
            let r = try await client.post("/v1/chat/completions", json: streamBody)
            XCTAssertEqual(r.status, .ok)
            var got: [[String: Any]] = []
            var withLogprobs = 0
            for c in try self.chunks(r) {
                let choice = firstChoice(c)
                guard let content = object(choice["logprobs"])["content"] as? [[String: Any]] else { continue }
                if !content.isEmpty { withLogprobs += 1 }
                // A chunk's logprobs spell the text it carries (or text still held back, released later).
                got += content
            }
            XCTAssertGreaterThan(withLogprobs, 5, "logprobs should arrive with the text chunks, not only at the end")
            XCTAssertEqual(got.count, expected.count)
            for (i, (a, b)) in zip(got, expected).enumerated() {
                XCTAssertEqual(a["token"] as? String, b["token"] as? String, "token \(i)")
                XCTAssertEqual(a["logprob"] as? Double, b["logprob"] as? Double, "token \(i)")
                XCTAssertEqual((a["top_logprobs"] as? [[String: Any]])?.map { $0["logprob"] as? Double },
                               (b["top_logprobs"] as? [[String: Any]])?.map { $0["logprob"] as? Double }, "token \(i)")
            }
        }
    }

    func testCompletionStreamLogprobsAndTextOffsets() async throws {
        try await app.test(.router) { client in
            let body: [String: Any] = ["model": Shared.modelID, "prompt": "The three primary colours are", "temperature": 0,
                                       "max_tokens": 16, "logprobs": 1]
            let plain = try await client.post("/v1/completions", json: body)
            XCTAssertEqual(plain.status, .ok, plain.text)
            let lp = object(firstChoice(try plain.json())["logprobs"])
            var streamBody = body
            streamBody["stream"] = true
            let r = try await client.post("/v1/completions", json: streamBody)
            XCTAssertEqual(r.status, .ok)
            var tokens: [String] = [], values: [Double] = [], offsets: [Int] = []
            var withLogprobs = 0
            for c in try self.chunks(r) {
                let l = object(firstChoice(c)["logprobs"])
                guard let t = l["tokens"] as? [String] else { continue }
                if !t.isEmpty { withLogprobs += 1 }
                tokens += t
                values += l["token_logprobs"] as? [Double] ?? []
                offsets += l["text_offset"] as? [Int] ?? []
            }
            XCTAssertGreaterThan(withLogprobs, 3)
            XCTAssertEqual(tokens, lp["tokens"] as? [String])
            XCTAssertEqual(values, lp["token_logprobs"] as? [Double])
            // Offsets continue across chunks: the same as the whole answer's.
            XCTAssertEqual(offsets, lp["text_offset"] as? [Int])
        }
    }
}
